"""Models: FusionModel, building from config, saving and loading."""
from crossfuse.models.factory import build_model, component_problems, make_processors, param_counts
from crossfuse.models.fusion_model import FusionModel, load_model, save_model

__all__ = ["FusionModel", "build_model", "component_problems", "load_model", "make_processors",
           "param_counts", "save_model"]
