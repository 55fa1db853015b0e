"""crossfuse: cross-modal fusion of images, text, audio and tabular data, from manifest to trained model."""
__version__ = "0.1.0"

from crossfuse.config import Config, load_config  # noqa: E402
from crossfuse.encoders import ENCODERS  # noqa: E402
from crossfuse.fusion import FUSIONS  # noqa: E402


def __getattr__(name):  # the estimators pull in the whole engine; import them on first use
    if name in ("FusionClassifier", "FusionRegressor"):
        from crossfuse import estimator

        return getattr(estimator, name)
    if name in ("Predictor", "Retriever", "train", "train_retrieval"):
        from crossfuse import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'crossfuse' has no attribute {name!r}")


__all__ = ["__version__", "Config", "ENCODERS", "FusionClassifier", "FusionRegressor", "FUSIONS", "load_config",
           "Predictor", "Retriever", "train", "train_retrieval"]
