"""Two nodes x one process on loopback (torchrun's static rendezvous, gloo): train.num_nodes comes
from the launcher's environment, both nodes end with identical weights, a run that lost a node
resumes to the weights of one never interrupted, and frozen-encoder extraction is split between
the processes (a shared cache) or done per node (a cache each)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_items, tiny_config
from crossfuse.engine.placement import resolve_num_nodes
from test_ddp import free_port


def test_num_nodes_is_read_from_the_launcher():
    assert resolve_num_nodes(None, {}) == 1
    assert resolve_num_nodes(None, {"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}) == 2
    assert resolve_num_nodes(None, {"SLURM_NNODES": "3", "SLURM_NTASKS": "12"}) == 3
    assert resolve_num_nodes(2, {"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8"}) == 2  # the config wins


@pytest.mark.distributed
def test_two_nodes_one_process_each_end_with_identical_weights(tmp_path):
    manifest = make_items(tmp_path / "data", n=48)
    raw = tiny_config(manifest, tmp_path / "run", epochs=2, accelerator="cpu", devices=1, strategy="ddp")
    raw["head"]["dropout"] = 0.2  # nodes draw different dropout masks and data; only the all-reduce syncs them
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    worker = str(Path(__file__).with_name("ddp_worker.py"))
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={r}",
                               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", worker,
                               json.dumps(raw), str(tmp_path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outputs = [p.communicate(timeout=420)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    w0, w1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 2


@pytest.mark.distributed
def test_two_nodes_at_batch_b_end_as_one_process_at_batch_2b(tmp_path):
    """Rank r's k-th batch is the r-th stride of the k-th global batch of one (seed, epoch) order and
    DDP averages the ranks' mean gradients, so 2 x B is the step of 1 x 2B wherever nothing is
    computed per process: no BatchNorm (it normalises each process's batch) and no dropout (each
    process draws its own masks). Equal up to float summation order."""
    manifest = make_items(tmp_path / "data", n=48)  # 24 training items: 3 steps of 8 per epoch

    def config(run, batch_size):
        raw = tiny_config(manifest, tmp_path / run, epochs=3, accelerator="cpu", devices=1, strategy="ddp",
                          batch_size=batch_size)
        del raw["modalities"]["image"]  # small_cnn has BatchNorm
        return raw

    for name, nodes, batch in (("two", 2, 4), ("one", 1, 8)):
        (tmp_path / name).mkdir()
        launch(config(f"run-{name}", batch), tmp_path / name, nodes=nodes, per_node=1)
    one = load_file(str(tmp_path / "one" / "rank0.safetensors"))
    two = load_file(str(tmp_path / "two" / "rank0.safetensors"))
    assert one.keys() == two.keys()
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5, rtol=1e-4), (k, (one[k] - two[k]).abs().max())
    history = {n: json.loads((tmp_path / f"run-{n}" / "history.json").read_text()) for n in ("one", "two")}
    assert [h["train_loss"] for h in history["two"]] == pytest.approx([h["train_loss"] for h in history["one"]],
                                                                       rel=1e-4)
    assert history["one"][0]["train_loss"] != pytest.approx(history["one"][-1]["train_loss"], rel=1e-3)  # it trained


def shard_keys(namespace_dir: Path) -> dict:
    """content key -> the writer process ids (a shard's name starts with its writer's pid)."""
    writers: dict = {}
    for keys in namespace_dir.glob("*.keys.json"):
        for key in json.loads(keys.read_text()):
            writers.setdefault(key, []).append(keys.name.split("-")[0])
    return writers


def frozen_run(tmp_path, cache_dir=None) -> dict:
    manifest = make_items(tmp_path / "data", n=40)
    raw = tiny_config(manifest, tmp_path / "run", epochs=1, accelerator="cpu", devices=1, strategy="ddp")
    raw["modalities"]["image"] = {"kind": "image", "columns": ["image"], "processor": {"size": 32},
                                  "encoder": {"name": "resnet18", "trainable": False}}
    if cache_dir is not None:
        raw["cache"] = {"dir": str(cache_dir)}
    return raw


def launch(raw, tmp_path, nodes: int, per_node: int, env_per_node=None, expect=None):
    raw["train"]["devices"] = per_node
    port = free_port()
    worker = str(Path(__file__).with_name("ddp_worker.py"))
    procs = []
    for r in range(nodes):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1]),
               **((env_per_node or {}).get(r, {}))}
        procs.append(subprocess.Popen([sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}",
                                       f"--node_rank={r}", f"--nproc_per_node={per_node}", "--master_addr=127.0.0.1",
                                       f"--master_port={port}", worker, json.dumps(raw), str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=420)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert (codes == [0] * nodes) if expect is None else expect(codes), "\n".join(o[-3000:] for o in outputs)


@pytest.mark.distributed
def test_a_run_that_lost_a_node_resumes_and_ends_as_one_never_interrupted(tmp_path):
    manifest = make_items(tmp_path / "data", n=48)

    def config(run):
        raw = tiny_config(manifest, tmp_path / run, epochs=4, accelerator="cpu", devices=1, strategy="ddp")
        raw["head"]["dropout"] = 0.2
        return raw

    whole = tmp_path / "whole"
    whole.mkdir()
    launch(config("run-whole"), whole, nodes=2, per_node=1)
    cut = tmp_path / "cut"
    cut.mkdir()
    # node 1's process dies after epoch 2; node 0's fails at its next collective call
    launch(config("run-cut"), cut, nodes=2, per_node=1, env_per_node={0: {"CF_TEST_DIE": "1:2"},
                                                                      1: {"CF_TEST_DIE": "1:2"}},
           expect=lambda codes: all(c != 0 for c in codes))
    assert not (cut / "rank0.safetensors").exists()
    assert not (tmp_path / "run-cut" / "history.json").exists()  # the run never finished
    assert (tmp_path / "run-cut" / "checkpoint.safetensors").is_file()
    # resumed from epoch 2, the process that died there never meets epoch 2 again (from scratch, it would)
    launch(config("run-cut"), cut, nodes=2, per_node=1,
           env_per_node={r: {"CF_TEST_RESUME": "1", "CF_TEST_DIE": "1:2"} for r in (0, 1)})
    expected = load_file(str(whole / "rank0.safetensors"))
    for r in (0, 1):
        got = load_file(str(cut / f"rank{r}.safetensors"))
        assert got.keys() == expected.keys()
        for k in expected:
            assert torch.equal(got[k], expected[k]), (r, k)
    assert len(json.loads((tmp_path / "run-cut" / "history.json").read_text())) == 4


@pytest.mark.distributed
def test_two_ranks_on_a_shared_cache_extract_every_item_exactly_once_between_them(tmp_path):
    raw = frozen_run(tmp_path, tmp_path / "cache")
    launch(raw, tmp_path, nodes=1, per_node=2)
    (namespace,) = [p for p in (tmp_path / "cache").iterdir() if p.name.startswith("resnet18")]
    writers = shard_keys(namespace)
    assert len(writers) == 40  # every item (each image is distinct)
    assert all(len(w) == 1 for w in writers.values())  # extracted once in the cluster
    assert len({w[0] for w in writers.values()}) == 2  # and both processes did their part
    assert not list((tmp_path / "cache").glob(".cluster-*"))  # the shared-filesystem marker is gone


@pytest.mark.distributed
def test_nodes_without_a_shared_cache_each_fill_their_own(tmp_path):
    raw = frozen_run(tmp_path)  # cache.dir unset: CROSSFUSE_CACHE, a different folder per node
    caches = {r: {"CROSSFUSE_CACHE": str(tmp_path / f"cache{r}")} for r in (0, 1)}
    launch(raw, tmp_path, nodes=2, per_node=1, env_per_node=caches)
    for r in (0, 1):
        (namespace,) = [p for p in (tmp_path / f"cache{r}").iterdir() if p.name.startswith("resnet18")]
        writers = shard_keys(namespace)
        assert len(writers) == 40 and all(len(w) == 1 for w in writers.values())


@pytest.mark.distributed
def test_fabric_run_launches_crossfuse_train(tmp_path):
    import yaml

    manifest = make_items(tmp_path / "data", n=32)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(manifest, tmp_path / "run", epochs=1, accelerator="cpu")))
    script = tmp_path / "crossfuse_main.py"  # as docs/distributed.md writes it
    script.write_text("import sys\nfrom crossfuse.cli.main import main\nsys.exit(main())\n")
    fabric = Path(sys.executable).with_name("fabric")
    proc = subprocess.run([str(fabric), "run", "--accelerator=cpu", "--devices=2", "--strategy=ddp",
                           f"--main-port={free_port()}", str(script), "-q", "train", str(cfg), "train.strategy=ddp",
                           "train.devices=2"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 1
