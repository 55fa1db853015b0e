"""Presets: named bundles of config values (``preset: fast | medium | best``), as AutoGluon users
know them. A preset fills only the keys a config leaves out: every key the config sets, and every
override, wins; a config's own ``fusion`` replaces the preset's whole. The values are plain data,
so ``crossfuse train`` of a run's saved config.yaml (which keeps ``preset``) trains the same model.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List

PRESETS: Dict[str, Dict[str, Any]] = {
    # half the epoch budget and a short patience: a first look
    "fast": {"train": {"epochs": 10, "early_stopping": {"patience": 3}}},
    # the defaults, named: one fusion (concat) trained for 20 epochs
    "medium": {},
    # every fusion method for a short budget, the best three trained in full and combined by greedy
    # selection on the validation rows (output_dir/ensemble), with a longer budget
    "best": {"fusion": {"name": "auto", "ensemble": 3}, "train": {"epochs": 30}},
}
WHOLE = ("fusion", "encoder")  # components: a config's own replaces the preset's, never merged into it


def preset_problems(name: Any) -> List[str]:
    if name is None or name in PRESETS:
        return []
    return [f"preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)} (or leave it out)"]


def with_preset(data: Dict[str, Any]) -> Dict[str, Any]:
    """``data`` with its preset's values filled in where it sets none (unchanged without a preset)."""
    name = data.get("preset")
    if name not in PRESETS:
        return data
    return _fill(copy.deepcopy(PRESETS[name]), data)


def _fill(preset: Dict[str, Any], data: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(preset)
    for key, value in data.items():
        if key not in WHOLE and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _fill(out[key], value)
        else:
            out[key] = value
    return out
