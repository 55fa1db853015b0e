"""crossfuse predict and index launched by torchrun with 2 processes: each process takes its part
of the rows, rank 0 writes one CSV / one index, equal row for row to a single process's."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from crossfuse.cli.main import main
from crossfuse.engine.distributed import launched_world, part_of
from crossfuse.index import VectorIndex
from test_ddp import free_port


def test_parts_cover_the_rows_in_order():
    for n, world in [(47, 2), (5, 4), (3, 4), (0, 2), (10, 1)]:
        parts = [part_of(n, r, world) for r in range(world)]
        assert [i for p in parts for i in range(n)[p]] == list(range(n))
        assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1
    assert launched_world({}) == 1 and launched_world({"WORLD_SIZE": "4"}) == 4
    assert launched_world({"SLURM_NTASKS": "3", "SLURM_PROCID": "1", "MASTER_ADDR": "h"}) == 3


def torchrun(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "crossfuse", "-q", *args],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.distributed
def test_predict_under_torchrun_equals_one_process_row_for_row(served, tmp_path):
    items = served["items"]
    odd = items.with_name("items47.csv")  # 47 rows: parts of 24 and 23
    pd.read_csv(items).iloc[:47].to_csv(odd, index=False)
    assert main(["-q", "predict", str(served["fusion"]), str(odd), "--out", str(tmp_path / "one.csv")]) == 0
    torchrun("predict", str(served["fusion"]), str(odd), "--out", str(tmp_path / "two.csv"))
    one, two = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "two.csv")
    assert len(two) == 47 and list(two.columns) == list(one.columns)
    assert two["row"].tolist() == list(range(1, 48)) and two["id"].tolist() == one["id"].tolist()
    assert two["prediction"].tolist() == one["prediction"].tolist()
    numbers = [c for c in one.columns if c.startswith(("proba_", "weight_"))]
    assert numbers and np.allclose(two[numbers].to_numpy(), one[numbers].to_numpy(), atol=1e-5)


@pytest.mark.distributed
def test_index_under_torchrun_equals_one_process(served, tmp_path):
    torchrun("index", str(served["retrieval"]), str(served["pairs"]), "--out", str(tmp_path / "two"))
    one, two = VectorIndex.load(served["indexes"]["pics"]), VectorIndex.load(tmp_path / "two")
    assert len(two) == len(one) > 0
    queries = np.random.default_rng(0).normal(size=(6, one.dim)).astype(np.float32)
    (s1, ids1), (s2, ids2) = one.search(queries, len(one)), two.search(queries, len(two))
    assert ids2 == ids1 and np.allclose(s2, s1, atol=1e-5)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_predict_reads_a_manifest_in_chunks_and_writes_what_one_pass_writes(served, tmp_path, suffix):
    items = served["items"]
    df = pd.read_csv(items).assign(unused=lambda d: d["caption"].str.upper())  # a column the model never reads
    manifest = items.with_name(f"chunks{suffix}")
    if suffix == ".parquet":
        df.to_parquet(manifest, row_group_size=7)
    else:
        df.to_csv(manifest, index=False)
    model = str(served["fusion"])
    assert main(["-q", "predict", model, str(manifest), "--out", str(tmp_path / "whole.csv")]) == 0
    assert main(["-q", "predict", model, str(manifest), "--out", str(tmp_path / "parts.csv"), "--chunk-rows", "10"]) == 0
    whole, parts = pd.read_csv(tmp_path / "whole.csv"), pd.read_csv(tmp_path / "parts.csv")
    assert len(parts) == len(df) and parts["row"].tolist() == list(range(1, len(df) + 1))
    trust = [c for c in whole.columns if c.startswith("trust_")]
    pd.testing.assert_frame_equal(parts.drop(columns=trust), whole.drop(columns=trust), atol=1e-5)
    # trust is a conformal rank among 25 held-out items: rounding noise of other batch sizes can move
    # an item across one neighbour, never further
    assert trust and (parts[trust] - whole[trust]).abs().to_numpy().max() <= 1 / 25 + 1e-6


def test_a_bad_row_in_a_later_chunk_leaves_no_csv(served, tmp_path, capsys):
    items = served["items"]
    df = pd.read_csv(items)
    df.loc[30, "image"] = "img/not-there.png"
    manifest = items.with_name("bad-late.csv")
    df.to_csv(manifest, index=False)
    out = tmp_path / "out.csv"
    assert main(["-q", "predict", str(served["fusion"]), str(manifest), "--out", str(out), "--chunk-rows", "10"]) != 0
    assert "not-there.png" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the CSV nor its temporary file
