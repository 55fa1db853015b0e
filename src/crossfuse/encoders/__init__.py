"""Encoders, one per modality, in the ENCODERS registry."""
from crossfuse.encoders import audio, image, presets, tabular, text  # noqa: F401  (registers the encoders)
from crossfuse.encoders.base import ENCODERS, Encoder, is_frozen, parameter_blocks, rebuild_problems

__all__ = ["ENCODERS", "Encoder", "is_frozen", "parameter_blocks", "rebuild_problems"]
