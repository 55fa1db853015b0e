"""scikit-learn style estimators: ``FusionClassifier().fit(df).predict(df)``.

Conventions follow scikit-learn: ``__init__`` only stores its arguments, ``fit`` validates and
returns ``self``, learned state ends in ``_``, and using an unfitted estimator says so.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import pandas as pd

from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from crossfuse.config import parse_config
from crossfuse.config.schema import Config, DataConfig, HeadConfig, TrainConfig
from crossfuse.engine import Predictor, train
from crossfuse.errors import ConfigError, NotFittedError


_D, _T, _H = DataConfig(), TrainConfig(), HeadConfig()  # the defaults, from the config itself


class _FusionEstimator(BaseEstimator):
    """Shared by FusionClassifier and FusionRegressor: a scikit-learn estimator (``clone``,
    ``get_params``/``set_params``, ``cross_val_score``, ``GridSearchCV``) whose defaults are the
    config dataclasses' own."""

    _task: str = ""

    def __init__(self, modalities: Optional[Dict[str, Any]] = None, target: str = _D.target,
                 fusion: str = Config().fusion.name, fusion_params: Optional[Dict[str, Any]] = None,
                 head_hidden: Sequence[int] = tuple(_H.hidden), dropout: float = _H.dropout, epochs: int = _T.epochs,
                 batch_size: int = _T.batch_size, optimizer: str = _T.optimizer, lr: float = _T.lr,
                 weight_decay: float = _T.weight_decay, scheduler: str = _T.scheduler,
                 patience: int = _T.early_stopping.patience, val_size: float = _D.split.val_size,
                 on_bad_item: str = _D.on_bad_item, class_weights: str = _T.class_weights, sampler: str = _T.sampler,
                 num_workers: int = _T.num_workers, base_dir: Optional[str] = None, output_dir: Optional[str] = None,
                 random_state: int = _T.seed, progress: bool = False, train_options: Optional[Dict[str, Any]] = None):
        self.modalities = modalities
        self.target = target
        self.fusion = fusion
        self.fusion_params = fusion_params
        self.head_hidden = head_hidden
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.scheduler = scheduler
        self.patience = patience
        self.val_size = val_size
        self.on_bad_item = on_bad_item
        self.class_weights = class_weights
        self.sampler = sampler
        self.num_workers = num_workers
        self.base_dir = base_dir
        self.output_dir = output_dir
        self.random_state = random_state
        self.progress = progress
        self.train_options = train_options

    def _config(self):
        raw = {
            "modalities": self.modalities or {},
            # the frame comes from the calling program, not from a manifest file: its paths are trusted
            "data": {"target": self.target, "task": self._task, "on_bad_item": self.on_bad_item,
                     "allow_outside_paths": True,
                     "split": {"column": None, "val_size": self.val_size, "test_size": 0.0,
                               "seed": self.random_state}},
            "fusion": {"name": self.fusion, **(self.fusion_params or {})},
            "head": {"hidden": list(self.head_hidden), "dropout": self.dropout},
            "train": {"epochs": self.epochs, "batch_size": self.batch_size, "optimizer": self.optimizer,
                      "lr": self.lr, "weight_decay": self.weight_decay, "scheduler": self.scheduler,
                      "early_stopping": {"patience": self.patience}, "class_weights": self.class_weights,
                      "sampler": self.sampler, "num_workers": self.num_workers, "seed": self.random_state,
                      "progress": self.progress, **(self.train_options or {})},
            "output_dir": self.output_dir or "unused",
        }
        return parse_config(raw)

    def fit(self, X: pd.DataFrame, y: Optional[Sequence[Any]] = None) -> "_FusionEstimator":
        """Train on the rows of ``X``; the target is ``y`` or the ``target`` column of ``X``."""
        if not isinstance(X, pd.DataFrame):
            raise ConfigError(f"{type(self).__name__}.fit expects a pandas DataFrame. Got {type(X).__name__}.")
        df = X.reset_index(drop=True).copy()
        if y is not None:
            if len(y) != len(df):
                raise ConfigError(f"X has {len(df)} rows but y has {len(y)}")
            df[self.target] = np.asarray(y)
        cfg = self._config()
        base_dir = Path(self.base_dir or ".")
        if self.output_dir is None:
            with tempfile.TemporaryDirectory(prefix="crossfuse-") as tmp:
                cfg.output_dir = tmp
                result = train(cfg, df=df, base_dir=base_dir, save=False)
        else:
            result = train(cfg, df=df, base_dir=base_dir, save=True)
        self.predictor_ = result.predictor
        self.history_ = result.train.history
        self.validation_metrics_ = result.metrics
        self.n_features_in_ = df.shape[1] - 1  # scikit-learn's convention; the target column is not one
        if self._task == "classification":
            originals = {}
            for v in df[self.target].tolist():
                originals.setdefault(_label_str(v), v)
            self.classes_ = np.array([originals[l] for l in self.predictor_.task.labels])
        return self

    def _check_fitted(self) -> Predictor:
        if not hasattr(self, "predictor_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                                 "appropriate arguments before using this estimator.")
        return self.predictor_

    def _frame(self, X: pd.DataFrame) -> pd.DataFrame:
        p = self._check_fitted()
        return p.predict_frame(X.reset_index(drop=True), Path(self.base_dir or "."), on_bad_item=self.on_bad_item,
                               batch_size=self.batch_size, num_workers=self.num_workers)

    def save(self, path: str | Path) -> Path:
        """Write the model directory (config.json + model.safetensors + processors.json)."""
        return self._check_fitted().save(path)

    @classmethod
    def load(cls, path: str | Path, base_dir: Optional[str] = None) -> "_FusionEstimator":
        predictor = Predictor.load(path)
        predictor.allow_outside_paths = True  # frames passed to predict come from the calling program
        est = cls(target=predictor.target or _D.target, base_dir=base_dir)
        est.predictor_ = predictor
        if predictor.task.kind == "classification":
            est.classes_ = np.array([_restore(l) for l in predictor.task.labels])
        return est


class FusionClassifier(ClassifierMixin, _FusionEstimator):
    """Fuses the modalities of a DataFrame (image paths, text, numbers, categories) to predict a class."""

    _task = "classification"

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        out = self._frame(X)
        return out[[f"proba_{l}" for l in self.predictor_.task.labels]].to_numpy()

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(1)]

    def score(self, X: pd.DataFrame, y: Sequence[Any]) -> float:
        """Mean accuracy."""
        return float(np.mean([_label_str(a) == _label_str(b) for a, b in zip(self.predict(X), y)]))


class FusionRegressor(RegressorMixin, _FusionEstimator):
    """Fuses the modalities of a DataFrame to predict a number."""

    _task = "regression"

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self._frame(X)["prediction"].to_numpy()

    def score(self, X: pd.DataFrame, y: Sequence[Any]) -> float:
        """Coefficient of determination R^2."""
        from sklearn.metrics import r2_score

        return float(r2_score(np.asarray(y, dtype=float), self.predict(X)))


def _label_str(v: Any) -> str:
    from crossfuse.data import label_str

    return label_str(v)


def _restore(label: str) -> Any:
    """Labels saved as strings come back as ints when they look like ints."""
    try:
        return int(label)
    except ValueError:
        return label
