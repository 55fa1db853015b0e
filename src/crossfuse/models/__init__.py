"""Models: FusionModel, building from config, saving and loading."""
from crossfuse.models.factory import (build_encoders, build_model, build_retrieval_model, component_problems,
                                      make_processors, param_counts)
from crossfuse.models.fusion_model import FusionModel
from crossfuse.models.io import load_model, read_json, save_model
from crossfuse.models.retrieval_model import RetrievalModel, RetrievalOutput, pair_loss

__all__ = ["build_encoders", "build_model", "build_retrieval_model", "component_problems", "FusionModel", "load_model",
           "make_processors", "pair_loss", "param_counts", "read_json", "RetrievalModel", "RetrievalOutput", "save_model"]
