"""Small neural-network blocks shared by encoders, fusion methods and heads."""
from crossfuse.layers.contrastive import gather_rows, info_nce, sigmoid_loss, world_size
from crossfuse.layers.conv import ConvStack
from crossfuse.layers.masking import masked_mean, masked_softmax
from crossfuse.layers.mlp import MLP

__all__ = ["ConvStack", "MLP", "gather_rows", "info_nce", "masked_mean", "masked_softmax", "sigmoid_loss", "world_size"]
