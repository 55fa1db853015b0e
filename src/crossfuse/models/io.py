"""Model directories: config.json + model.safetensors + processors.json.

A model directory is data, never code or a pointer elsewhere. Loading one never imports a module
named in it, never reads a path or goes online because of it (weights sources are training-time
options, see ``Encoder.source_params``), and checks every size it asks for against the weights
file's header before allocating: the architecture is first built on PyTorch's meta device, where
tensors have shapes but no storage, and compared with the header. Whatever is wrong is reported as
a CrossfuseError naming the file, never as a traceback.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from crossfuse.atomic import atomic_directory, read_json
from crossfuse.encoders import ENCODERS, rebuild_problems
from crossfuse.errors import CrossfuseError
from crossfuse.fusion import FUSIONS
from crossfuse.layers.private import replacement_problems
from crossfuse.models.fusion_model import FusionModel
from crossfuse.models.imagine import IMAGINERS
from crossfuse.models.retrieval_model import RetrievalModel

CONFIG_FILE, WEIGHTS_FILE, PROCESSORS_FILE = "config.json", "model.safetensors", "processors.json"


def save_model(path: str | Path, model: nn.Module, processors: Mapping[str, Any], meta: Dict[str, Any]) -> Path:
    """Write config.json + model.safetensors + processors.json into a fresh directory, atomically.

    The files go to a temporary sibling directory that is renamed into place at the end, so a
    killed save leaves either the previous model or none, never a half-written one.
    """
    from safetensors.torch import save_file

    config = {"format": "crossfuse-model/1", **meta, "architecture": model.architecture()}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(path) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / PROCESSORS_FILE).write_text(json.dumps({m: p.state() for m, p in processors.items()}))
    return Path(path)


def load_model(path: str | Path, map_location: str = "cpu", modalities: Optional[Sequence[str]] = None):
    """Rebuild (model, processors, meta) from a model directory; never unpickles.

    ``modalities`` (retrieval models only): build and load just these towers, reading only their
    weights; searching captions with an image then never builds the text encoder.
    """
    from safetensors import safe_open

    from crossfuse.encryption import is_encrypted, load_key, read_decrypted

    path = Path(path)
    plain = None  # an encrypted directory's files, decrypted in memory only
    if is_encrypted(path):
        plain = read_decrypted(path, (CONFIG_FILE, WEIGHTS_FILE, PROCESSORS_FILE), load_key(what=f"the model {path}"))
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, PROCESSORS_FILE) if plain is None and not (path / f).is_file()]
    if missing:
        raise CrossfuseError(f"{path} is not a crossfuse model directory (missing {', '.join(missing)})")
    config_file = path / CONFIG_FILE
    meta = read_json(config_file) if plain is None else _json(plain[CONFIG_FILE], config_file)
    arch = meta.get("architecture") if isinstance(meta, dict) else None
    if not isinstance(arch, dict) or not isinstance(arch.get("encoders"), dict) or not arch["encoders"]:
        raise CrossfuseError(f"{config_file}: no 'architecture' with encoders; not a crossfuse model config")
    arch, keep = _select_towers(arch, modalities, path)
    problems = architecture_problems(arch)
    if problems:
        raise CrossfuseError(f"{config_file} cannot be loaded:\n" + "\n".join(f"  - {p}" for p in problems))
    build = _builder(arch)
    try:
        if plain is None:
            with safe_open(str(path / WEIGHTS_FILE), framework="pt", device="cpu") as f:
                stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if keep(k)}
        else:
            stored = {k: v for k, v in _header_shapes(plain[WEIGHTS_FILE]).items() if keep(k)}
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise CrossfuseError(f"{path / WEIGHTS_FILE} is not a readable safetensors file: {exc}") from exc
    _check_shapes(build, stored, keep, config_file, path / WEIGHTS_FILE)
    model = _call(build, config_file)
    if plain is None:
        with safe_open(str(path / WEIGHTS_FILE), framework="pt", device=map_location) as f:
            model.load_state_dict({k: f.get_tensor(k) for k in stored})
    else:
        from safetensors.torch import load as load_bytes

        tensors = load_bytes(plain[WEIGHTS_FILE])
        model.load_state_dict({k: tensors[k].to(map_location) for k in stored})
    model.eval()
    states = None if plain is None else _json(plain[PROCESSORS_FILE], path / PROCESSORS_FILE)
    processors = load_processors(path / PROCESSORS_FILE, model, states)
    return model, processors, meta


def _json(data: bytes, file: Path) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CrossfuseError(f"{file} cannot be read as JSON: {exc}") from exc


def _header_shapes(data: bytes) -> Dict[str, tuple]:
    """Tensor name -> shape from a safetensors file's header (8-byte length, then JSON)."""
    n = int.from_bytes(data[:8], "little")
    if not 0 < n <= len(data) - 8:
        raise ValueError("header length out of range")
    header = json.loads(data[8:8 + n])
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def architecture_problems(arch: Dict[str, Any]) -> List[str]:
    """Unknown component names and parameters, and weights sources, in an architecture dict."""
    if arch.get("kind") == "ensemble":
        return ensemble_problems(arch)
    problems: List[str] = []
    for m, e in arch["encoders"].items():
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not isinstance(e.get("kwargs"), dict):
            problems.append(f"encoders.{m}: must be {{name, kwargs}}")
        elif e["name"] not in ENCODERS:
            problems.append(f"encoders.{m}: {ENCODERS.unknown_message(e['name'])}")
        else:
            problems += [f"encoders.{m}: {p}" for p in ENCODERS.check_kwargs(e["name"], e["kwargs"])]
            problems += [f"encoders.{m} ({e['name']}): {p}" for p in rebuild_problems(ENCODERS.get(e["name"]),
                                                                                       e["kwargs"])]
    if arch.get("kind") == "retrieval":
        if not isinstance(arch.get("retrieval"), dict):
            problems.append("retrieval: missing or not a mapping")
        return problems
    fusion, head = arch.get("fusion"), arch.get("head")
    if not isinstance(fusion, dict) or not isinstance(fusion.get("kwargs"), dict) or fusion.get("name") not in FUSIONS:
        problems.append(f"fusion: {FUSIONS.unknown_message((fusion or {}).get('name')) if isinstance(fusion, dict) else 'missing'}")
    else:
        problems += [f"fusion: {p}" for p in FUSIONS.check_kwargs(fusion["name"], fusion["kwargs"])]
    if not isinstance(head, dict) or not isinstance(head.get("kwargs"), dict):
        problems.append("head: missing or not a mapping")
    aux = arch.get("aux_outputs")
    if aux is not None and (isinstance(aux, bool) or not isinstance(aux, int) or not 1 <= aux <= MAX_OUTPUTS):
        problems.append(f"aux_outputs: must be an integer in [1, {MAX_OUTPUTS:,}]. Got {aux!r}.")
    if arch.get("trust") is not None:
        problems += [f"trust: {p}" for p in trust_problems(arch["trust"], set(arch["encoders"]))]
    if arch.get("imagine") is not None:
        problems += [f"imagine: {p}" for p in imagine_problems(arch["imagine"])]
    if arch.get("private") is not None:
        private = arch["private"]
        problems += [f"private.replaced: {p}" for p in replacement_problems(
            private.get("replaced") if isinstance(private, dict) else None)]
    return problems


MAX_OUTPUTS = 100_000  # classes a saved model may have


def imagine_problems(im: Any) -> List[str]:
    """A saved imagination's kind and parameters (names and ranges)."""
    if not isinstance(im, dict) or not isinstance(im.get("kwargs"), dict):
        return ["must be {kind, kwargs}"]
    if im.get("kind") not in IMAGINERS:
        return [IMAGINERS.unknown_message(im.get("kind"))]
    cls = IMAGINERS.get(im["kind"])
    known = set(cls.config_keys) | {"momentum"}
    problems = [f"unknown parameter '{k}' of {im['kind']}" for k in im["kwargs"] if k not in known]
    sample = im["kwargs"].get("sample", False)
    if not isinstance(sample, bool):
        problems.append(f"sample: must be true or false. Got {sample!r}.")
    return problems + IMAGINERS.check_kwargs(im["kind"], im["kwargs"])


def ensemble_problems(arch: Dict[str, Any]) -> List[str]:
    """An ensemble's method, sizes and weights, then each member's architecture."""
    from crossfuse.models.ensemble import MAX_MEMBERS, METHODS

    members, weights = arch.get("members"), arch.get("weights")
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
        return [f"members: must be a list of 1 to {MAX_MEMBERS} architectures"]
    problems = [] if arch.get("method") in METHODS else [f"method: must be one of {', '.join(METHODS)}"]
    if not isinstance(weights, list) or len(weights) != len(members) or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights):
        problems.append(f"weights: must be {len(members)} numbers >= 0")
    out = arch.get("out_dim")
    if isinstance(out, bool) or not isinstance(out, int) or not 1 <= out <= MAX_OUTPUTS:
        problems.append(f"out_dim: must be an integer in [1, {MAX_OUTPUTS:,}]. Got {out!r}.")
    if not isinstance(arch.get("regression"), bool):
        problems.append("regression: must be true or false")
    for i, m in enumerate(members):
        if not isinstance(m, dict) or m.get("kind") is not None or not isinstance(m.get("encoders"), dict) \
                or not m["encoders"]:
            problems.append(f"members[{i}]: not a fusion model architecture")
            continue
        problems += [f"members[{i}].{p}" for p in architecture_problems(m)]
    if not problems and arch.get("encoders") != members[0]["encoders"]:
        problems.append("encoders: must be the first member's")
    return problems
TRUST_LIMITS = {"dim": 65536, "rank": 4096, "centers": 100_000, "reference": 10_000_000}


def trust_problems(trust: Any, modalities: set) -> List[str]:
    """Types and sizes of a saved model's trust statistics, checked before they are allocated."""
    if not isinstance(trust, dict) or not isinstance(trust.get("modalities"), dict):
        return ["must be a mapping with 'modalities'"]
    problems = []
    alpha = trust.get("alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        problems.append(f"'alpha' must be a number in (0, 1). Got {alpha!r}.")
    if not isinstance(trust.get("gate"), bool):
        problems.append(f"'gate' must be true or false. Got {trust.get('gate')!r}.")
    removed = trust.get("max_removed")
    if isinstance(removed, bool) or not isinstance(removed, int) or not 1 <= removed <= 1024:
        problems.append(f"'max_removed' must be an integer in [1, 1024]. Got {removed!r}.")
    if set(trust["modalities"]) != modalities:
        problems.append(f"'modalities' must name the model's modalities ({', '.join(sorted(modalities))})")
    for m, sizes in trust["modalities"].items():
        if sizes is None:
            continue
        if not isinstance(sizes, dict) or set(sizes) != set(TRUST_LIMITS):
            problems.append(f"{m}: must give {', '.join(TRUST_LIMITS)}")
            continue
        for key, top in TRUST_LIMITS.items():
            v = sizes[key]
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top:
                problems.append(f"{m}.{key} must be an integer in [1, {top:,}]. Got {v!r}.")
    return problems


def _select_towers(arch: Dict[str, Any], modalities: Optional[Sequence[str]], path: Path):
    """The architecture limited to ``modalities`` (retrieval), and which weight keys to read."""
    if arch.get("kind") != "retrieval" or modalities is None:
        return arch, lambda key: True
    unknown = set(modalities) - set(arch["encoders"])
    if unknown:
        raise CrossfuseError(f"{path} has no modality {', '.join(sorted(unknown))}; it has "
                             f"{', '.join(arch['encoders'])}")
    arch = {**arch, "encoders": {m: e for m, e in arch["encoders"].items() if m in modalities}}
    towers = tuple(f"{part}.{m}." for part in ("encoders", "projections") for m in arch["encoders"])
    return arch, lambda key: key.startswith(towers) or not key.startswith(("encoders.", "projections."))


def _builder(arch: Dict[str, Any]) -> Callable[[], nn.Module]:
    from crossfuse.models.ensemble import EnsembleModel

    cls = {"retrieval": RetrievalModel, "ensemble": EnsembleModel}.get(arch.get("kind"), FusionModel)
    return lambda: cls.from_architecture(arch)


def _call(build: Callable[[], nn.Module], config_file: Path) -> nn.Module:
    try:
        return build()
    except CrossfuseError as exc:
        raise CrossfuseError(f"{config_file} cannot be loaded: {exc}") from exc
    except Exception as exc:  # a crafted value (a negative size, a wrong type) breaks a constructor
        raise CrossfuseError(f"{config_file} describes a model that cannot be built: "
                             f"{type(exc).__name__}: {exc}") from exc


def _check_shapes(build, stored: Dict[str, tuple], keep, config_file: Path, weights_file: Path) -> None:
    """Build on the meta device (shapes, no storage) and compare with the weights file's header."""
    with torch.device("meta"):
        skeleton = _call(build, config_file)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items() if keep(k)}
    problems = [f"'{k}' is {stored[k]} in {weights_file.name} but {expected[k]} in {config_file.name}"
                for k in expected if k in stored and stored[k] != expected[k]]
    problems += [f"'{k}' is missing from {weights_file.name}" for k in expected if k not in stored]
    problems += [f"'{k}' in {weights_file.name} is not part of the model" for k in stored if k not in expected]
    if problems:
        shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
        raise CrossfuseError(f"{config_file.parent}: the weights do not match the architecture:\n"
                             + "\n".join(f"  - {p}" for p in shown))


def load_processors(file: Path, model: nn.Module, states: Any = None) -> Dict[str, Any]:
    """The processors of ``model``'s modalities from processors.json, each checked against its
    encoder (vocabulary and feature counts) and against the processors' own limits."""
    from crossfuse.data.processors import PROCESSORS, processor_from_state

    states = read_json(file) if states is None else states
    encoders = getattr(model, "encoders", {})
    if not isinstance(states, dict) or not set(encoders) <= set(states):
        raise CrossfuseError(f"{file}: expected a processor for each of {', '.join(encoders)}")
    processors, problems = {}, []
    for m in encoders:
        state = states[m]
        if not isinstance(state, dict) or state.get("kind") not in PROCESSORS or not isinstance(
                state.get("params"), dict) or not isinstance(state.get("columns"), list):
            problems.append(f"{m}: not a processor state (kind, columns, params)")
            continue
        try:
            proc = processor_from_state(state)
        except Exception as exc:  # a malformed tokenizer or statistics table
            problems.append(f"{m}: {type(exc).__name__}: {exc}")
            continue
        problems += [f"{m}: {p}" for p in proc.state_problems(encoders[m])]
        processors[m] = proc
    if problems:
        raise CrossfuseError(f"{file} cannot be loaded:\n" + "\n".join(f"  - {p}" for p in problems))
    return processors
