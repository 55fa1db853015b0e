"""Build processors and a FusionModel from a Config; check registry names and parameters first."""
from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pandas as pd
import torch

from crossfuse.config.schema import Config, ModalityConfig
from crossfuse.data.processors import PROCESSORS, Processor
from crossfuse.encoders import ENCODERS, Encoder
from crossfuse.errors import ConfigError
from crossfuse.fusion import FUSIONS
from crossfuse.heads import Head
from crossfuse.models.fusion_model import FusionModel
from crossfuse.models.imagine import IMAGINERS, Imagination, build_imagination
from crossfuse.models.retrieval_model import RetrievalModel


def component_problems(cfg: Config) -> List[str]:
    """Unknown encoder/fusion names, wrong parameter names, encoders of the wrong modality."""
    problems: List[str] = []
    for name, m in cfg.modalities.items():
        if m is None:
            continue
        if m.kind not in PROCESSORS:
            close = difflib.get_close_matches(str(m.kind), list(PROCESSORS), n=1)
            problems.append(f"'modalities.{name}.kind' must be one of {', '.join(PROCESSORS)}. Got {m.kind!r}."
                            + (f" Did you mean '{close[0]}'?" if close else ""))
            continue
        proc_cls = PROCESSORS[m.kind]
        if proc_cls.single_column and m.columns and len(m.columns) != 1:
            problems.append(f"'modalities.{name}.columns' must name exactly one column for a modality of kind "
                            f"{m.kind}")
        problems += [f"modalities.{name}.processor: {p}"
                     for p in proc_cls(m.columns or [], **m.processor).limit_problems()]
        if m.encoder is None:
            continue
        if m.encoder.name not in ENCODERS:
            problems.append(f"modalities.{name}.encoder: {ENCODERS.unknown_message(m.encoder.name)}")
            continue
        cls = ENCODERS.get(m.encoder.name)
        if cls.modality != m.kind:
            problems.append(f"modalities.{name}.encoder: '{m.encoder.name}' encodes {cls.modality}, "
                            f"but modality '{name}' is {m.kind}")
        problems += [f"modalities.{name}.encoder: {p}" for p in ENCODERS.check_kwargs(m.encoder.name, m.encoder.params)]
    if cfg.fusion is not None and cfg.fusion.name == "auto":
        problems += auto_fusion_problems(cfg.fusion.params)
    elif cfg.fusion is not None:
        if cfg.fusion.name not in FUSIONS:
            problems.append(f"fusion: {FUSIONS.unknown_message(cfg.fusion.name)}")
        else:
            params = {k: v for k, v in cfg.fusion.params.items()}
            problems += [f"fusion: {p}" for p in FUSIONS.check_kwargs(cfg.fusion.name, params)]
    problems += imagine_problems(cfg)
    return problems


def imagine_problems(cfg: Config) -> List[str]:
    """``missing.imagine`` needs a fusion model of two or more modalities and a vector-level fusion."""
    im = cfg.missing.imagine
    if im is None:
        return []
    problems = []
    if cfg.data.task == "retrieval":
        problems.append("missing.imagine: imagination fills absent modalities of fusion models; a retrieval "
                        "model embeds each modality on its own")
    if len([m for m in cfg.modalities.values() if m is not None]) == 1:
        problems.append("missing.imagine needs at least two modalities: a generator predicts one modality's "
                        "features from the others'")
    name = cfg.fusion.name if cfg.fusion is not None else None
    if name in FUSIONS and (FUSIONS.get(name).wants_sequences or cfg.fusion.params.get("sequences")):
        problems.append(f"missing.imagine: fusion '{name}' reads token sequences, which imagination does not "
                        "produce; use a vector-level fusion method")
    if im.kind not in IMAGINERS:
        problems.append(f"missing.imagine.kind: {IMAGINERS.unknown_message(im.kind)}")
    else:
        options = {k: getattr(im, k) for k in IMAGINERS.get(im.kind).config_keys}
        problems += [f"missing.imagine: {p}" for p in IMAGINERS.check_kwargs(im.kind, options)]
    return problems


def imagination_for(cfg: Config, input_dims: Dict[str, int]) -> Optional[Imagination]:
    """The config's ``missing.imagine`` generators, or None."""
    im = cfg.missing.imagine
    return None if im is None else build_imagination(im.kind, input_dims, dataclasses.asdict(im))


def auto_fusion_problems(params: Dict) -> List[str]:
    """``fusion: {name: auto, methods: [...], epochs: N, ensemble: K}``: the methods to try, their
    budget, and how many of the best to train in full and combine (0: only the best)."""
    problems = [f"fusion: auto takes 'methods', 'epochs' and 'ensemble'; not '{k}'" for k in params
                if k not in ("methods", "epochs", "ensemble")]
    methods = params.get("methods")
    if methods is not None:
        if not isinstance(methods, list) or len(methods) < 2:
            problems.append("fusion.methods: a list of at least two fusion methods")
        else:
            problems += [f"fusion.methods: {FUSIONS.unknown_message(m)}" for m in methods if m not in FUSIONS]
    epochs = params.get("epochs")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        problems.append(f"fusion.epochs: a positive integer. Got {epochs!r}.")
    k = params.get("ensemble", 0)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0 or k == 1:
        problems.append(f"fusion.ensemble: 0 (the best method alone) or the number of best methods to combine, "
                        f">= 2. Got {k!r}.")
    elif methods is not None and isinstance(methods, list) and k > len(methods):
        problems.append(f"fusion.ensemble: {k} members but only {len(methods)} methods to choose from")
    return problems


def make_processors(modalities: Dict[str, ModalityConfig]) -> Dict[str, Processor]:
    return {name: PROCESSORS[m.kind](m.columns, **m.processor) for name, m in modalities.items()}


def build_encoders(cfg: Config, processors: Dict[str, Processor], train_df: pd.DataFrame,
                   base_dir: Path) -> Dict[str, Encoder]:
    """Fit processors on the training rows and build each modality's encoder with what they learned."""
    encoders = {}
    for name, m in cfg.modalities.items():
        cls = ENCODERS.get(m.encoder.name)
        proc = processors[name]
        proc.fit(train_df, base_dir, wants_tokenizer=not cls.provides_tokenizer)
        kwargs = dict(m.encoder.params)
        if not cls.provides_tokenizer:
            kwargs.update(proc.encoder_kwargs())
        encoders[name] = ENCODERS.build(m.encoder.name, **kwargs)
        proc.configure(encoders[name])
    return encoders


def build_model(cfg: Config, processors: Dict[str, Processor], train_df: pd.DataFrame, base_dir: Path,
                out_dim: int) -> FusionModel:
    """Encoders (see build_encoders), then the fusion method and the head."""
    encoders = build_encoders(cfg, processors, train_df, base_dir)
    input_dims = {name: e.output_dim for name, e in encoders.items()}
    balance = cfg.train.balance
    aux = out_dim if balance.aux_weight > 0 or balance.blend else None  # balanced training's per-modality heads
    if FUSIONS.get(cfg.fusion.name).decision_level:  # the fusion emits the outputs itself
        fusion = FUSIONS.build(cfg.fusion.name, input_dims=input_dims, n_outputs=out_dim, **cfg.fusion.params)
        return FusionModel(encoders, fusion, Head(fusion.output_dim, None, hidden=[], dropout=0.0), aux_outputs=aux,
                           imagination=imagination_for(cfg, input_dims))
    fusion = FUSIONS.build(cfg.fusion.name, input_dims=input_dims, **cfg.fusion.params)
    head = Head(fusion.output_dim, out_dim, hidden=cfg.head.hidden, dropout=cfg.head.dropout)
    return FusionModel(encoders, fusion, head, aux_outputs=aux, imagination=imagination_for(cfg, input_dims))


def build_retrieval_model(cfg: Config, processors: Dict[str, Processor], train_df: pd.DataFrame,
                          base_dir: Path) -> RetrievalModel:
    """Encoders (see build_encoders), each with a projection into the shared space."""
    r = cfg.retrieval
    encoders = build_encoders(cfg, processors, train_df, base_dir)
    bridge = None
    if r.bridge is not None:
        source, target, names = _bridge_ends(cfg, encoders)
        b = r.bridge
        bridge = {"source": source, "target": target, "n_classes": len(names), "dim": encoders[target].output_dim,
                  "weight": b.weight, "top": b.top, "temperature": b.temperature, "template": b.template}
    model = RetrievalModel(encoders, embed_dim=r.embed_dim, hidden=r.hidden, dropout=r.dropout,
                           temperature=r.temperature, learn_temperature=r.learn_temperature, loss=r.loss, bridge=bridge)
    if bridge is not None:
        texts = [r.bridge.template.format(name) for name in names]
        model.set_bridge_classes(embed_texts(encoders[target], processors[target], texts, base_dir))
    return model


def _bridge_ends(cfg: Config, encoders: Dict[str, Encoder]) -> Tuple[str, str, List[str]]:
    """The bridge's image modality (with a named-class classifier), its text modality, the class names."""
    from crossfuse.encoders import is_frozen

    b = cfg.retrieval.bridge
    named = [m for m, e in encoders.items() if e.class_names()]
    texts = [m for m, mc in cfg.modalities.items() if mc.kind == "text"]
    source = b.source or (named[0] if named else None)
    target = b.target or (texts[0] if texts else None)
    problems = []
    if source is None or source not in encoders or not encoders[source].class_names():
        problems.append(f"retrieval.bridge: the source modality needs an encoder with a pretrained classifier over "
                        f"named classes (efficientnet_lite0); got {source or 'none'}")
    if target is None or target not in texts:
        problems.append(f"retrieval.bridge: the target must be a text modality; got {target or 'none'}")
    elif not is_frozen(encoders[target]):
        problems.append(f"retrieval.bridge: the text encoder of '{target}' must be frozen (its embeddings of the "
                        "class names are computed once)")
    if not 0.0 <= b.weight < 1.0:
        problems.append(f"retrieval.bridge.weight must be in [0, 1); got {b.weight}")
    if problems:
        raise ConfigError(problems)
    return source, target, encoders[source].class_names()


@torch.no_grad()
def embed_texts(encoder: Encoder, processor: Processor, texts: List[str], base_dir: Path,
                batch_size: int = 64) -> torch.Tensor:
    """A text encoder's features of plain strings, through its processor (tokenizer)."""
    was = encoder.training
    encoder.eval()
    column = processor.columns[0]
    out = []
    for s in range(0, len(texts), batch_size):
        inputs, _ = processor.collate([processor.load({column: t}, base_dir, False) for t in texts[s:s + batch_size]])
        out.append(encoder(inputs).float())
    encoder.train(was)
    return torch.cat(out)


def param_counts(model: torch.nn.Module) -> Tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


__all__ = ["build_encoders", "build_model", "build_retrieval_model", "component_problems", "ConfigError",
           "make_processors", "param_counts"]
