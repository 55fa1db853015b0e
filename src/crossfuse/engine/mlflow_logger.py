"""``train.logger: mlflow``: each epoch's record and the run's config to an MLflow tracking store,
as a Lightning Fabric logger (Fabric ships none for MLflow).

The store is MLflow's own setting, ``MLFLOW_TRACKING_URI`` (a server, a database), else a SQLite
file beside the run (``OUTPUT_DIR/logs/mlflow/mlflow.db``: offline, nothing to start); the experiment is
``MLFLOW_EXPERIMENT_NAME``, else ``crossfuse``; the MLflow run is named after the output folder.
Look at it with ``mlflow ui --backend-store-uri sqlite:///OUTPUT_DIR/logs/mlflow/mlflow.db``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

from lightning_fabric.loggers import Logger

from crossfuse.errors import MissingDependencyError

MAX_PARAMS_PER_CALL = 100  # MLflow's limits for one log_batch call and one parameter's value
MAX_PARAM_CHARS = 6000


class MLflowLogger(Logger):
    def __init__(self, log_dir: Path, run_name: str):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise MissingDependencyError("train.logger: mlflow needs the 'mlflow' package: "
                                         "pip install 'crossfuse[mlflow]'") from None
        log_dir.mkdir(parents=True, exist_ok=True)
        self._dir = log_dir
        self.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(log_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "crossfuse"
        experiment = self.client.get_experiment_by_name(name)
        self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(self.experiment_id, run_name=run_name).info.run_id

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self.run_id

    @property
    def root_dir(self) -> str:
        return str(self._dir)

    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])

    def log_hyperparams(self, params: Dict[str, Any], *args: Any, **kwargs: Any) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[i:i + MAX_PARAMS_PER_CALL])

    def finalize(self, status: str) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if status == "success" else "FAILED")
