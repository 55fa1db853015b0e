"""Convolution stacks shared by the image and spectrogram CNNs."""
from __future__ import annotations

from typing import Sequence

from torch import nn


class ConvStack(nn.Sequential):
    """Per width in ``channels``: ``convs`` x [Conv3x3 -> BatchNorm -> ReLU], then MaxPool2;
    reports ``output_dim``."""

    def __init__(self, in_channels: int, channels: Sequence[int], convs: int = 1):
        layers: list = []
        c_in = in_channels
        for c in channels:
            for _ in range(convs):
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
                c_in = c
            layers.append(nn.MaxPool2d(2))
        super().__init__(*layers)
        self.output_dim = c_in
