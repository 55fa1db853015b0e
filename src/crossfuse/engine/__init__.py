"""Engine: the run skeleton and its tasks, the training loop, evaluation, prediction, retrieval."""
from crossfuse.engine.index_io import index_manifest, search_index
from crossfuse.engine.pipeline import FusionTask, read_and_evaluate, read_and_predict, resolve_config, train
from crossfuse.engine.predictor import Predictor
from crossfuse.engine.retrieval_task import RetrievalRun, RetrievalTask, train_retrieval
from crossfuse.engine.retriever import Retriever
from crossfuse.engine.run import TASKS, RunResult, RunTask, run_task, task_for
from crossfuse.engine.task import TaskSpec
from crossfuse.engine.trainer import Trainer

__all__ = ["FusionTask", "index_manifest", "Predictor", "read_and_evaluate", "read_and_predict", "resolve_config",
           "RetrievalRun", "RetrievalTask", "Retriever", "RunResult", "RunTask", "run_task", "search_index",
           "TASKS", "task_for", "TaskSpec", "train", "train_retrieval", "Trainer"]
