"""Small neural-network blocks shared by encoders, fusion methods and heads."""
from crossfuse.layers.conv import ConvStack
from crossfuse.layers.masking import masked_mean, masked_softmax
from crossfuse.layers.mlp import MLP

__all__ = ["ConvStack", "MLP", "masked_mean", "masked_softmax"]
