"""Build processors and a FusionModel from a Config; check registry names and parameters first."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import pandas as pd
import torch

from crossfuse.config.schema import Config, ModalityConfig
from crossfuse.data.processors import PROCESSORS, Processor
from crossfuse.encoders import ENCODERS, Encoder
from crossfuse.errors import ConfigError
from crossfuse.fusion import FUSIONS
from crossfuse.heads import Head
from crossfuse.models.fusion_model import FusionModel
from crossfuse.models.retrieval_model import RetrievalModel


def component_problems(cfg: Config) -> List[str]:
    """Unknown encoder/fusion names, wrong parameter names, encoders of the wrong modality."""
    problems: List[str] = []
    for name, m in cfg.modalities.items():
        if m is None or m.encoder is None:
            continue
        if m.encoder.name not in ENCODERS:
            problems.append(f"modalities.{name}.encoder: {ENCODERS.unknown_message(m.encoder.name)}")
            continue
        cls = ENCODERS.get(m.encoder.name)
        if cls.modality != m.kind:
            problems.append(f"modalities.{name}.encoder: '{m.encoder.name}' encodes {cls.modality}, "
                            f"but modality '{name}' is {m.kind}")
        problems += [f"modalities.{name}.encoder: {p}" for p in ENCODERS.check_kwargs(m.encoder.name, m.encoder.params)]
    if cfg.fusion is not None:
        if cfg.fusion.name not in FUSIONS:
            problems.append(f"fusion: {FUSIONS.unknown_message(cfg.fusion.name)}")
        else:
            params = {k: v for k, v in cfg.fusion.params.items()}
            problems += [f"fusion: {p}" for p in FUSIONS.check_kwargs(cfg.fusion.name, params)]
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
    if getattr(FUSIONS.get(cfg.fusion.name), "decision_level", False):  # fusion emits the outputs itself
        fusion = FUSIONS.build(cfg.fusion.name, input_dims=input_dims, n_outputs=out_dim, **cfg.fusion.params)
        return FusionModel(encoders, fusion, Head(fusion.output_dim, None, hidden=[], dropout=0.0))
    fusion = FUSIONS.build(cfg.fusion.name, input_dims=input_dims, **cfg.fusion.params)
    head = Head(fusion.output_dim, out_dim, hidden=cfg.head.hidden, dropout=cfg.head.dropout)
    return FusionModel(encoders, fusion, head)


def build_retrieval_model(cfg: Config, processors: Dict[str, Processor], train_df: pd.DataFrame,
                          base_dir: Path) -> RetrievalModel:
    """Encoders (see build_encoders), each with a projection into the shared space."""
    r = cfg.retrieval
    return RetrievalModel(build_encoders(cfg, processors, train_df, base_dir), embed_dim=r.embed_dim, hidden=r.hidden,
                          dropout=r.dropout, temperature=r.temperature, learn_temperature=r.learn_temperature,
                          loss=r.loss)


def param_counts(model: torch.nn.Module) -> Tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


__all__ = ["ConfigError", "build_encoders", "build_model", "build_retrieval_model", "component_problems", "make_processors", "param_counts"]
