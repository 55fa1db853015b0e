"""Convolution stacks shared by the image and spectrogram CNNs."""
from __future__ import annotations

from typing import Sequence

from torch import nn


class ConvStack(nn.Sequential):
    """[Conv3x3 -> BatchNorm -> ReLU -> MaxPool2] per width in ``channels``; reports ``output_dim``."""

    def __init__(self, in_channels: int, channels: Sequence[int]):
        layers: list = []
        c_in = in_channels
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c
        super().__init__(*layers)
        self.output_dim = c_in
