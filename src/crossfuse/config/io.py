"""Load configs from YAML, apply ``key.sub=value`` overrides, check values before any work."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Iterable, List

import yaml

from crossfuse.config.presets import preset_problems, with_preset
from crossfuse.config.schema import PII_ENTITIES, Config, from_dict
from crossfuse.errors import ConfigError


def load_yaml(path: str | Path) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    manifest = (data.get("data") or {}).get("manifest")
    if isinstance(manifest, str) and not Path(manifest).is_absolute():
        # relative manifest paths are relative to the config file, like includes in most tools
        candidate = (path.parent / manifest)
        if candidate.exists() or not Path(manifest).exists():
            data.setdefault("data", {})["manifest"] = str(candidate)
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    keeps the last silently, so a second `lr:` would quietly win)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"key '{key}' appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def apply_overrides(data: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` applied (value parsed as YAML)."""
    data = copy.deepcopy(data)
    problems: List[str] = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"Override '{item}' must look like key.sub=value")
            continue
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if part in ("encoder", "fusion") and isinstance(node.get(part), str):
                node[part] = {"name": node[part]}  # `encoder: gru` is shorthand for `encoder: {name: gru}`
            if not isinstance(node.get(part), dict):
                node[part] = {} if node.get(part) is None else node[part]
            if not isinstance(node[part], dict):
                problems.append(f"Override '{item}': '{part}' is not a mapping")
                break
            node = node[part]
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems)
    return data


def parse_config(data: Dict[str, Any]) -> Config:
    """Convert a dict to a Config and check every value; raises ConfigError listing all problems."""
    problems: List[str] = preset_problems(data.get("preset"))
    cfg = from_dict(Config, with_preset(data), "", problems)
    if cfg is not None:
        try:
            problems += check_values(cfg)
        except (AttributeError, TypeError):
            pass  # a section had the wrong type; that problem is already listed
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    return parse_config(apply_overrides(load_yaml(path), overrides))


def check_values(cfg: Config) -> List[str]:
    """Range and consistency checks that types alone cannot express."""
    p: List[str] = []
    t = cfg.train
    for name, m in (cfg.modalities or {}).items():
        if m is None:
            continue
        if not m.columns:
            p.append(f"'modalities.{name}.columns' must name at least one column")
    checks = [
        (lambda: t.epochs >= 1, f"'train.epochs' must be an int >= 1. Got {t.epochs}."),
        (lambda: t.batch_size >= 1, f"'train.batch_size' must be an int >= 1. Got {t.batch_size}."),
        (lambda: t.num_nodes is None or t.num_nodes >= 1,
         f"'train.num_nodes' must be an int >= 1 or null (from the launcher). Got {t.num_nodes}."),
        (lambda: t.lr > 0, f"'train.lr' must be > 0. Got {t.lr}."),
        (lambda: t.weight_decay >= 0, f"'train.weight_decay' must be >= 0. Got {t.weight_decay}."),
        (lambda: 0 <= t.momentum < 1, f"'train.momentum' must be in [0, 1). Got {t.momentum}."),
        (lambda: t.warmup_epochs >= 0, f"'train.warmup_epochs' must be >= 0. Got {t.warmup_epochs}."),
        (lambda: t.grad_clip is None or t.grad_clip > 0, f"'train.grad_clip' must be > 0 or null. Got {t.grad_clip}."),
        (lambda: t.num_workers >= 0, f"'train.num_workers' must be >= 0. Got {t.num_workers}."),
        (lambda: t.threads is None or t.threads >= 1, f"'train.threads' must be >= 1 or null. Got {t.threads}."),
        (lambda: t.early_stopping.patience >= 1, f"'train.early_stopping.patience' must be >= 1. Got {t.early_stopping.patience}."),
        (lambda: t.early_stopping.min_epochs is None or t.early_stopping.min_epochs >= 0, f"'train.early_stopping.min_epochs' must be >= 0 or null. Got {t.early_stopping.min_epochs}."),
        (lambda: 0 <= t.label_smoothing < 1, f"'train.label_smoothing' must be in [0, 1). Got {t.label_smoothing}."),
        (lambda: t.ema is None or 0 < t.ema < 1, f"'train.ema' must be in (0, 1) or null. Got {t.ema}."),
        (lambda: t.balance.aux_weight >= 0, f"'train.balance.aux_weight' must be >= 0. Got {t.balance.aux_weight}."),
        (lambda: t.balance.ogm_alpha is None or t.balance.ogm_alpha > 0,
         f"'train.balance.ogm_alpha' must be > 0 or null. Got {t.balance.ogm_alpha}."),
        (lambda: t.balance.ogm_alpha is None or t.balance.aux_weight > 0 or t.balance.blend,
         "'train.balance.ogm_alpha' needs the auxiliary heads that score each modality: set "
         "'train.balance.aux_weight' > 0 (e.g. 0.5) or 'train.balance.blend: true'."),
        (lambda: isinstance(t.balance.blend_every, int) and t.balance.blend_every >= 1,
         f"'train.balance.blend_every' must be an int >= 1. Got {t.balance.blend_every!r}."),
        (lambda: 0 <= cfg.head.dropout < 1, f"'head.dropout' must be in [0, 1). Got {cfg.head.dropout}."),
        (lambda: all(1 <= h <= 16384 for h in cfg.head.hidden),
         f"'head.hidden' sizes must be in [1, 16384]. Got {cfg.head.hidden}."),
        (lambda: 0 <= cfg.data.split.val_size < 1, f"'data.split.val_size' must be in [0, 1). Got {cfg.data.split.val_size}."),
        (lambda: 0 <= cfg.data.split.test_size < 1, f"'data.split.test_size' must be in [0, 1). Got {cfg.data.split.test_size}."),
        (lambda: cfg.data.split.val_size + cfg.data.split.test_size < 1, "'data.split.val_size' + 'data.split.test_size' must be < 1."),
        (lambda: 0 < cfg.trust.alpha < 1, f"'trust.alpha' must be in (0, 1). Got {cfg.trust.alpha}."),
        (lambda: cfg.trust.max_removed >= 1, f"'trust.max_removed' must be >= 1. Got {cfg.trust.max_removed}."),
    ]
    p += [msg for ok, msg in checks if not _safe(ok)]
    rates = t.modality_dropout if isinstance(t.modality_dropout, dict) else {"": t.modality_dropout}
    for key, rate in (rates or {}).items():
        if not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            where = f"train.modality_dropout.{key}" if key else "train.modality_dropout"
            p.append(f"'{where}' must be in [0, 1). Got {rate!r}.")
        elif key and key not in cfg.modalities and cfg.modalities:
            p.append(_no_modality(cfg, f"train.modality_dropout.{key}", key))
    for key, factor in t.balance.modality_lr.items():
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0:
            p.append(f"'train.balance.modality_lr.{key}' must be a number > 0. Got {factor!r}.")
        elif cfg.modalities and key not in cfg.modalities:
            p.append(_no_modality(cfg, f"train.balance.modality_lr.{key}", key))
    p += privacy_problems(cfg) + anonymize_problems(cfg)
    precisions = {"auto", "32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true"}
    if t.precision not in precisions:
        p.append(f"'train.precision' must be one of {', '.join(sorted(precisions))}. Got {t.precision!r}.")
    return p


def privacy_problems(cfg: Config) -> List[str]:
    """``train.privacy``: its values, and what DP-SGD's guarantee cannot coexist with."""
    t, dp = cfg.train, cfg.train.privacy
    if dp is None:
        return []
    p = []
    if (dp.target_epsilon is None) == (dp.noise_multiplier is None):
        p.append("'train.privacy' needs exactly one of 'target_epsilon' (e.g. 3.0) and 'noise_multiplier' (e.g. 1.0).")
    for key in ("target_epsilon", "noise_multiplier", "max_grad_norm"):
        v = getattr(dp, key)
        if v is not None and not v > 0:
            p.append(f"'train.privacy.{key}' must be > 0. Got {v}.")
    if dp.delta is not None and not 0 < dp.delta < 1:
        p.append(f"'train.privacy.delta' must be in (0, 1) or null (1/N). Got {dp.delta}.")
    why = "DP-SGD's accountant assumes every item is drawn with the same probability (Poisson sampling)"
    if t.class_weights != "none":
        p.append(f"'train.class_weights: {t.class_weights}' cannot be used with 'train.privacy': {why}, and "
                 "weighting items by their class changes each item's share of the gradient. Set it to none.")
    if t.sampler != "random":
        p.append(f"'train.sampler: {t.sampler}' cannot be used with 'train.privacy': {why}. Set it to random.")
    if t.balance.ogm_alpha is not None:
        p.append("'train.balance.ogm_alpha' cannot be used with 'train.privacy': gradient modulation rescales "
                 "gradients from the batch's own scores after DP-SGD has clipped and noised them. Set it to null.")
    if t.balance.blend:
        p.append("'train.balance.blend' cannot be used with 'train.privacy': its loss weights are computed from "
                 "the training items' losses outside the private mechanism. Set it to false (aux_weight is fine).")
    if str(t.devices) not in ("1", "auto") or t.strategy not in ("auto", "single_device") or (t.num_nodes or 1) > 1:
        p.append("'train.privacy' trains in one process: Opacus accounts for data parallelism only when the model "
                 "is wrapped for DP before it is distributed, which crossfuse does not do. Set train.devices: 1.")
    if cfg.missing.imagine is not None and cfg.missing.imagine.kind == "gan":
        p.append("'missing.imagine.kind: gan' cannot be used with 'train.privacy': the GAN's steps alternate, so "
                 "on the generator's steps the discriminator gets no gradient, which DP-SGD's optimizer cannot "
                 "step. Use kind mlp or cvae.")
    if cfg.data.task == "retrieval":
        p.append("'train.privacy' is for classification and regression: a contrastive loss couples every item of "
                 "a batch with the others, so per-item gradients (what DP-SGD clips) do not exist.")
    return p


def anonymize_problems(cfg: Config) -> List[str]:
    a = cfg.data.anonymize
    if a is None:
        return []
    p = []
    unknown = [e for e in (a.entities or []) if e not in PII_ENTITIES]
    if unknown:
        p.append(f"'data.anonymize.entities': unknown {', '.join(map(repr, unknown))}; known: {', '.join(PII_ENTITIES)}.")
    if a.entities is not None and not a.entities:
        p.append("'data.anonymize.entities' is empty: name at least one, or null for the default list.")
    if not 0 <= a.score_threshold <= 1:
        p.append(f"'data.anonymize.score_threshold' must be in [0, 1]. Got {a.score_threshold}.")
    return p


def _no_modality(cfg: Config, where: str, key: str) -> str:
    return f"'{where}': no modality '{key}'; modalities are {', '.join(cfg.modalities)}"


def _safe(ok: Any) -> bool:
    try:
        return bool(ok())
    except Exception:
        return False


def save_yaml(cfg: Config, path: str | Path) -> None:
    from crossfuse.atomic import atomic_write

    atomic_write(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
