"""A trained model with its processors and target encoding: predict and evaluate on new rows."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from crossfuse.data import Collator, ManifestDataset, usable_rows
from crossfuse.data.anonymize import anonymize_inputs, model_settings
from crossfuse.engine.distributed import gather_rows, is_main, join, part_of, split_map, together
from crossfuse.engine.extract import cache_root, with_cache
from crossfuse.engine.inference import collect_outputs, default_device, softmax
from crossfuse.engine.missing import modality_shapley, robustness_outputs
from crossfuse.engine.report import write_report
from crossfuse.engine.task import TaskSpec
from crossfuse.engine.trust import shift_report, trust_columns
from crossfuse.metrics import calibration, plot_robustness
from crossfuse.models import FusionModel, load_model, save_model

log = logging.getLogger(__name__)


class Predictor:
    def __init__(self, model: FusionModel, processors: Mapping[str, Any], task: TaskSpec, meta: Dict[str, Any],
                 cache_root: Optional[Path] = None):
        self.model, self.processors, self.task, self.meta = model, dict(processors), task, meta
        self.cache_root = cache_root  # set: frozen encoders' outputs are read from (and added to) the cache
        # file paths of a manifest may leave its folder only when the caller says the manifest is
        # trusted (data.allow_outside_paths, --allow-outside-paths); a loaded model never says so
        self.allow_outside_paths = False
        self.anonymize = model_settings(meta, "the model")  # data.anonymize of its training, applied alike
        self.cache_encrypt = bool(((meta.get("config") or {}).get("cache") or {}).get("encrypt"))

    @classmethod
    def load(cls, path: str | Path) -> "Predictor":
        """Rebuild a saved model; it reads the embedding cache as its training config said."""
        model, processors, meta = load_model(path)
        root = cache_root((meta.get("config") or {}).get("cache") or {})
        if not getattr(model, "uses_cache", True):  # an ensemble: its members' encoders run on each item
            root = None
        return cls(model, processors, TaskSpec.from_dict(meta["task"]), meta, cache_root=root)

    def save(self, path: str | Path) -> Path:
        return save_model(path, self.model, self.processors, self.meta)

    @property
    def target(self) -> Optional[str]:
        return self.meta.get("target")

    def prepare(self, df: pd.DataFrame, base_dir: Path, file: str, with_target: bool, on_bad_item: str = "error",
                open_files: bool = True):
        """Check ``df`` against what the model expects; returns (rows to use, bad (row, modality) cells).

        With ``on_bad_item="missing"`` a modality whose columns are all absent is missing for
        every row (e.g. predicting for items that have no audio at all).
        """
        target = self.target if with_target else None
        df, _ = anonymize_inputs(df, self.anonymize, self.processors)
        absent = [m for m, p in self.processors.items() if not any(c in df.columns for c in p.columns)]
        if on_bad_item == "missing" and absent and len(absent) < len(self.processors):
            log.warning("Modalities with no column in %s are missing for every row: %s", file, ", ".join(absent))
            df = df.assign(**{c: np.nan for m in absent for c in self.processors[m].columns})
        return usable_rows(df, self.processors, file, base_dir, on_bad_item, target, self.task.kind,
                           labels=self.task.labels, open_files=open_files, allow_outside=self.allow_outside_paths)

    @property
    def device(self) -> torch.device:
        return default_device()

    def loader(self, df: pd.DataFrame, base_dir: Path, missing=(), with_target: bool = False,
               batch_size: int = 64, num_workers: int = 0, use_cache: bool = True) -> DataLoader:
        targets = self.task.encode(df[self.target]) if with_target else None
        sources = with_cache(self.model, self.processors, df, base_dir, self.cache_root if use_cache else None,
                             batch_size=batch_size, num_workers=num_workers, device=self.device, missing=missing,
                             progress=False, encrypt=self.cache_encrypt)
        ds = ManifestDataset(df, sources, base_dir, targets, train=False, missing=missing)
        return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                          collate_fn=Collator(sources, regression=self.task.kind == "regression"))

    def outputs(self, df: pd.DataFrame, base_dir: Path, missing=(), with_target: bool = False,
                batch_size: int = 64, num_workers: int = 0, progress: bool = False) -> Dict[str, np.ndarray]:
        loader = self.loader(df, base_dir, missing, with_target, batch_size, num_workers)
        self._place()
        return collect_outputs(self.model, loader, self.device, progress=progress)

    def _place(self) -> None:
        """The model on this predictor's device (moving walks every module: only when it is elsewhere)."""
        first = next(self.model.parameters(), None)
        if first is None or first.device != self.device:
            self.model.to(self.device)

    def predict_frame(self, df: pd.DataFrame, base_dir: Path, file: str = "<dataframe>", on_bad_item: str = "error",
                      batch_size: int = 64, num_workers: int = 0, progress: bool = False,
                      distributed: bool = False) -> pd.DataFrame:
        """One output row per usable input row: prediction, class probabilities, modality weights.
        ``distributed``: every process a launcher started calls this together; each checks and
        predicts its part of the rows (engine.distributed) and each returns the whole, in order."""
        def part(rows: slice) -> Dict[str, Any]:
            kept, missing = self.prepare(df.iloc[rows], base_dir, file, with_target=False, on_bad_item=on_bad_item)
            out = self.outputs(kept, base_dir, missing, batch_size=batch_size, num_workers=num_workers,
                               progress=progress and is_main())
            return {k: np.asarray(v) for k, v in self.result_columns(kept, out).items()}

        if not distributed:
            return pd.DataFrame(part(slice(0, len(df))))
        return pd.DataFrame(split_map(len(df), part))

    def result_frame(self, kept: pd.DataFrame, out: Dict[str, np.ndarray]) -> pd.DataFrame:
        """``outputs`` of ``kept``'s rows as predict writes them: row, id, prediction, class
        probabilities, each modality's weight, trust and whether the trust gate used it, and which
        absent modalities were imagined (missing.imagine)."""
        return pd.DataFrame(self.result_columns(kept, out))

    def result_columns(self, kept: pd.DataFrame, out: Dict[str, np.ndarray]) -> Dict[str, Any]:
        """``result_frame``'s columns as arrays (the server reads them without building a frame)."""
        cols: Dict[str, Any] = {"row": kept.index.to_numpy() + 1}
        id_col = self.meta.get("id_column")
        if id_col and id_col in kept.columns:
            cols[id_col] = kept[id_col].to_numpy()
        if self.task.kind == "classification":
            proba = softmax(out["logits"])
            cols["prediction"] = [self.task.labels[i] for i in proba.argmax(1)]
            for j, label in enumerate(self.task.labels):
                cols[f"proba_{label}"] = proba[:, j]
        else:
            cols["prediction"] = self.task.decode_values(out["logits"])
        if out["weights"] is not None:
            for j, m in enumerate(self.model.fusion.modalities):
                cols[f"weight_{m}"] = out["weights"][:, j]
        cols.update(trust_columns(out, self.model.fusion.modalities))
        if out.get("imagined") is not None:  # which absent modalities the model imagined for the row
            for j, m in enumerate(sorted(self.model.fusion.modalities)):
                cols[f"imagined_{m}"] = out["imagined"][:, j]
        return cols

    def evaluate_frame(self, df: pd.DataFrame, base_dir: Path, file: str = "<dataframe>",
                       on_bad_item: str = "error", batch_size: int = 64, num_workers: int = 0,
                       out_dir: Optional[Path] = None, progress: bool = False, title: str = "crossfuse evaluation",
                       history=None, monitor=None, extra=None, attribution: bool = True,
                       robustness: bool = False, check_files: bool = True, known_missing=(),
                       distributed: bool = False) -> Dict[str, Any]:
        """Metrics on labelled rows; with ``attribution`` each modality's Shapley contribution, with
        ``robustness`` the metric with each modality removed or corrupted at rising strength.
        ``distributed``: every process a launcher started calls this together; each checks and runs
        its part of the rows, the per-item outputs are gathered before any metric, every process
        returns the same metrics and rank 0 alone writes the report."""
        def check(rows: slice):
            return self.prepare(df.iloc[rows], base_dir, file, with_target=True, on_bad_item=on_bad_item,
                                open_files=check_files)

        if distributed:  # a process group of its own (training's final evaluation runs whole on each rank)
            gather = gather_rows
            kept, missing = together(lambda: check(part_of(len(df), *join())))
        else:
            gather = lambda value: value  # noqa: E731
            kept, missing = check(slice(0, len(df)))
        missing = set(missing) | set(known_missing)  # bad cells already found by the caller
        # corruptions need the raw inputs, so robustness runs the encoders instead of the cache
        loader = self.loader(kept, base_dir, missing, True, batch_size, num_workers, use_cache=not robustness)
        self.model.to(self.device)
        progress = progress and is_main()
        out = gather(collect_outputs(self.model, loader, self.device, progress=progress))
        metrics = self.task.metrics(out["logits"], out["targets"])
        temperature = self.temperature
        if self.task.kind == "classification" and temperature != 1.0 and len(out["targets"]):
            metrics["temperature"] = temperature
            metrics["ece_without_temperature"] = calibration(out["targets"], softmax(out["logits"] * temperature))["ece"]
        mods = list(self.model.fusion.modalities)
        if out["weights"] is not None:  # mean weight each modality got, over items that had it
            w, m = out["weights"], out["mask"]  # both in the fusion's (sorted) modality order
            metrics["mean_modality_weight"] = {mod: float(w[m[:, j], j].mean()) if m[:, j].any() else None
                                               for j, mod in enumerate(mods)}
        if out.get("imagined") is not None:  # items whose absent modality the model imagined
            metrics["imagined_items"] = {m: int(out["imagined"][:, j].sum()) for j, m in enumerate(sorted(mods))}
            if out["weights"] is not None:
                w, im = out["weights"], out["imagined"]
                metrics["mean_weight_when_imagined"] = {m: float(w[im[:, j], j].mean()) if im[:, j].any() else None
                                                        for j, m in enumerate(mods)}
        if attribution and len(mods) > 1 and len(mods) <= 8:
            shap = modality_shapley(self.model, loader, self.device, gather=gather)
            metrics["attribution"] = {"shapley_mean": shap["mean"], "shapley_share": shap["mean_abs_share"],
                                      "explains": "probability of the predicted class" if
                                      self.task.kind == "classification" else "standardised prediction"}
        name = "accuracy" if self.task.kind == "classification" else "rmse"
        shift = shift_report(self.model, loader, self.device, self.task.metrics, name, gather=gather) \
            if out["targets"] is not None and len(out["targets"]) else None
        if shift is not None:
            metrics["shift"] = shift
        write = out_dir is not None and is_main()
        if robustness:
            metrics["robustness"], curves = self._robustness(loader, gather)
            if write:
                Path(out_dir).mkdir(parents=True, exist_ok=True)
                r = metrics["robustness"]
                plot_robustness(curves, r["clean"], Path(out_dir) / "robustness.png", r["metric"], r["removed"])
        if write:
            write_report(Path(out_dir), metrics, self.task.labels, history=history, monitor=monitor, title=title,
                         extra=extra)
        return metrics

    @property
    def temperature(self) -> float:
        trust = getattr(self.model, "trust", None)
        return 1.0 if trust is None else float(trust.temperature)

    def _robustness(self, loader: DataLoader, gather=None):
        name = "accuracy" if self.task.kind == "classification" else "rmse"
        results = robustness_outputs(self.model, loader, self.device, self.processors, gather=gather)
        score = {k: self.task.metrics(v["logits"], v["targets"])[name] for k, v in results.items()}
        curves: Dict[str, list] = {}
        corrupted = []
        for k, v in results.items():
            if v["kind"] == "corrupted":
                curves.setdefault(f"{v['modality']}:{v['corruption']}", []).append((v["strength"], score[k]))
                corrupted.append({"modality": v["modality"], "corruption": v["corruption"],
                                  "strength": v["strength"], name: score[k]})
        report = {"metric": name, "clean": score["clean"],
                  "removed": {k.split(":", 1)[1]: v for k, v in score.items() if k.startswith("removed:")},
                  "only": {k.split(":", 1)[1]: v for k, v in score.items() if k.startswith("only:")},
                  "corrupted": corrupted}
        if any(k.startswith("removed_plain:") for k in score):  # the model imagines absent modalities
            report["imagined"] = True
            report["removed_without_imagination"] = {k.split(":", 1)[1]: v for k, v in score.items()
                                                     if k.startswith("removed_plain:")}
            report["only_without_imagination"] = {k.split(":", 1)[1]: v for k, v in score.items()
                                                  if k.startswith("only_plain:")}
        return report, curves
