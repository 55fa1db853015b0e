"""Fusion methods in the FUSIONS registry."""
from crossfuse.fusion import basic, zoo  # noqa: F401  (registers the methods)
from crossfuse.fusion.base import FUSIONS, Fusion

__all__ = ["FUSIONS", "Fusion"]
