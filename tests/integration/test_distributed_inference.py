"""crossfuse predict, index and evaluate launched by torchrun with 2 processes: each process takes
its part of the rows, rank 0 writes one CSV / one index / one report, equal to a single process's;
bad data in one process's part fails every process with the same message, none left waiting."""
from __future__ import annotations

import json
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


def torchrun(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "crossfuse", "-q", *args],
                          capture_output=True, text=True, timeout=300, env=env)
    assert (proc.returncode == 0) == ok, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def numbers(tree, path=()):
    """Every number in a metrics tree, by its path (the model's and manifest's paths left out)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() if key not in ("model", "manifest")
                for k, v in numbers(sub, path + (key,)).items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in numbers(sub, path + (str(i),)).items()}
    return {path: tree} if isinstance(tree, (int, float)) and not isinstance(tree, bool) else {}


@pytest.mark.distributed
def test_evaluate_under_torchrun_equals_one_process(served, tmp_path):
    items, model = str(served["items"]), str(served["fusion"])
    assert main(["-q", "evaluate", model, items, "--robustness", "--out", str(tmp_path / "one")]) == 0
    torchrun("evaluate", model, items, "--robustness", "--out", str(tmp_path / "two"))
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert two["n"] == one["n"] == 48  # every row counted once
    assert one["robustness"]["corrupted"] and one["attribution"] and one["shift"]
    a, b = numbers(one), numbers(two)
    assert a.keys() == b.keys()
    # trust is a conformal rank among 25 held-out items: rounding noise of other batches can move an
    # item across one neighbour (as in the chunked predict test), never further
    trust = {k for k in a if k[-1] == "mean_trust"}
    assert len(trust) == 3 and all(abs(a[k] - b[k]) <= 1 / 25 + 1e-6 for k in trust)
    differ = [(k, a[k], b[k]) for k in a.keys() - trust if not np.isclose(a[k], b[k], rtol=1e-4, atol=1e-5)]
    assert not differ, differ
    assert (tmp_path / "two" / "robustness.png").is_file()


@pytest.mark.distributed
def test_retrieval_evaluate_under_torchrun_equals_one_process(served, tmp_path):
    model, pairs = str(served["retrieval"]), str(served["pairs"])
    assert main(["-q", "evaluate", model, pairs, "--out", str(tmp_path / "one")]) == 0
    torchrun("evaluate", model, pairs, "--out", str(tmp_path / "two"))
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    a, b = numbers(one), numbers(two)
    assert one["n"] == two["n"] > 0 and a.keys() == b.keys()
    assert all(np.isclose(a[k], b[k], atol=1e-5) for k in a)


@pytest.mark.distributed
def test_bad_rows_in_each_part_fail_with_every_process_problems(served, tmp_path):
    df = pd.read_csv(served["items"])
    df.loc[4, "image"] = "img/not-there.png"  # in the first process's part (rows 1-24)
    df["x"] = df["x"].astype(object)
    df.loc[40, "x"] = "seven"  # in the second's (rows 25-48)
    manifest = served["items"].with_name("bad-parts.csv")
    df.to_csv(manifest, index=False)
    for command in ("predict", "evaluate"):
        out = tmp_path / command
        proc = torchrun(command, str(served["fusion"]), str(manifest), "--out", str(out), ok=False)
        # each process checked only its own part; the error it raised names both parts' problems
        errors = [line for line in (proc.stdout + proc.stderr).split("error: ")[1:] if "data problem" in line]
        assert errors, proc.stderr[-3000:]
        for e in errors:
            assert "2 data problem(s)" in e and "row 5, column 'image'" in e and "row 41, column 'x'" in e, e
        assert not out.exists()


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


def test_ids_repeated_across_chunks_are_warned_about_with_their_rows(served, tmp_path, capsys):
    items = served["items"]
    df = pd.read_csv(items)
    df.loc[25, "id"] = df.loc[3, "id"]  # rows 4 and 26: chunks 1 and 3 at 10 rows a chunk
    manifest = items.with_name("repeated-ids.csv")
    df.to_csv(manifest, index=False)
    assert main(["-q", "predict", str(served["fusion"]), str(manifest), "--out", str(tmp_path / "p.csv"),
                 "--chunk-rows", "10"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "repeat an earlier row's id" in line]
    assert len(warned) == 1 and "1 rows" in warned[0]
    assert f"row 26, column 'id': duplicate id {str(df.loc[3, 'id'])!r} (first at row 4)" in warned[0]
    assert len(pd.read_csv(tmp_path / "p.csv")) == len(df)  # a warning: every row is still predicted
