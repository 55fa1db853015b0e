"""`crossfuse compare`: each run keeps its metrics and history; extraction is timed apart from training."""
from __future__ import annotations

import json
from pathlib import Path

from crossfuse.compare import comparison_table, run_comparison
from crossfuse.config import parse_config

from conftest import make_items, tiny_config


def test_compare_keeps_each_runs_metrics_and_times_extraction_apart(tmp_path, monkeypatch):
    from crossfuse.engine import extract as extract_module

    extracted = []
    real = extract_module._extract
    monkeypatch.setattr(extract_module, "_extract", lambda enc, proc, m, rows, *a, **k: (
        extracted.append(len(rows)), real(enc, proc, m, rows, *a, **k)))
    manifest = make_items(tmp_path / "d", n=36)
    raw = tiny_config(manifest, tmp_path / "run", epochs=1)
    raw["modalities"]["image"]["encoder"] = {"name": "resnet18", "trainable": False}  # frozen: extracted, cached
    raw["modalities"]["image"]["processor"] = {"size": 32}
    raw["cache"] = {"dir": str(tmp_path / "cache")}
    rows = run_comparison(parse_config(raw), tmp_path / "cmp", fusions=["concat"], seeds=[0, 1], singles=False)
    for seed in (0, 1):
        run = tmp_path / "cmp" / "concat_fusion" / f"seed{seed}"
        assert json.loads((run / "metrics.json").read_text())["accuracy"] == rows[0]["runs"][seed]["accuracy"]
        assert len(json.loads((run / "history.json").read_text())) == 1
        assert not (run / "model").exists()  # models only with save_runs
    first, second = rows[0]["runs"]
    assert first["extract_seconds"] > 0 and second["extract_seconds"] > 0  # timed apart from training
    # a frozen random-init backbone differs by seed, so each seed's features are extracted anew
    assert extracted == [36, 36]
    assert first["train_seconds"] < first["seconds"]
    table = comparison_table(rows)
    assert "| epochs | extract seconds | train seconds |" in table.splitlines()[0]


def test_compare_ensemble_adds_the_greedy_ensemble_of_each_seeds_fusion_models(tmp_path):
    from crossfuse.engine import Predictor

    manifest = make_items(tmp_path / "d", n=48)
    raw = tiny_config(manifest, tmp_path / "run", epochs=2)
    rows = run_comparison(parse_config(raw), tmp_path / "cmp", fusions=["concat", "gated"], seeds=[0, 1],
                          singles=True, ensemble=True)
    names = [r["model"] for r in rows]
    ens = rows[names.index("greedy ensemble of 2 fusion methods")]
    assert [r["seed"] for r in ens["runs"]] == [0, 1]
    for run in ens["runs"]:
        assert 0.3 <= run["accuracy"] <= 1.0 and run["val_accuracy"] is not None
        assert abs(sum(run["weights"].values()) - 1.0) < 1e-9
        assert all("image" not in Path(d).parts[-3] for d in run["weights"])  # single-modality runs are not members
    model = Predictor.load(tmp_path / "cmp" / "ensemble" / "seed0").model
    assert type(model).__name__ == "EnsembleModel" and len(model.members) == 2
    assert "greedy ensemble of 2 fusion methods" in comparison_table(rows)
