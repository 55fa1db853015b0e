"""Models: FusionModel, building from config, saving and loading."""
from crossfuse.models.factory import (build_encoders, build_model, build_retrieval_model, component_problems,
                                      make_processors, param_counts)
from crossfuse.models.fusion_model import FusionModel, load_model, save_model
from crossfuse.models.retrieval_model import RetrievalModel, RetrievalOutput, pair_loss

__all__ = ["build_encoders", "build_retrieval_model", "FusionModel", "RetrievalModel", "RetrievalOutput", "pair_loss", "build_model", "component_problems", "load_model", "make_processors",
           "param_counts", "save_model"]
