"""Engine: training loop, evaluation, prediction and the end-to-end pipeline."""
from crossfuse.engine.pipeline import RunResult, read_and_evaluate, read_and_predict, resolve_config, train
from crossfuse.engine.predictor import Predictor
from crossfuse.engine.retrieval import RetrievalRun, Retriever, index_manifest, search_index, train_retrieval
from crossfuse.engine.task import TaskSpec
from crossfuse.engine.trainer import Trainer

__all__ = ["index_manifest", "Predictor", "read_and_evaluate", "read_and_predict", "resolve_config", "RetrievalRun",
           "Retriever", "RunResult", "search_index", "TaskSpec", "train", "train_retrieval", "Trainer"]
