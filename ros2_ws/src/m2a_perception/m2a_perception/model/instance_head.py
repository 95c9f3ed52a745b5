"""Class-agnostic centroid instance head (seed 004, "A Simple and Generalist Approach for
Panoptic Segmentation", Section 3.3.1; seeds-digest.md §6, R10).

Every pixel of the 1/4-resolution mask features regresses the spectral positional embedding of
its instance's centroid,

    y = concat(γ(u), γ(v)),  γ(p) = (sin 2^l πp, cos 2^l πp)_{l=0..L-1}   (Eq. 2-3),

with u (column) and v (row) of the centre of mass normalised to [-1, 1]; pixels of no instance
regress 0. The paper's decoder ends in a 1×1 projection of a shared feature map; here the shared
map is the pixel decoder's `mask_features`, and a few 3×3 convolutions first give the head room
of its own, since those features also feed the mask logits.

Allowed dependencies: torch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from m2a_perception.config import InstanceHeadConfig


def centroid_positional_embedding(coords: torch.Tensor, harmonics: int) -> torch.Tensor:
    """γ of Eq. 3 for every coordinate, interleaved per harmonic as (sin, cos).

    Args:
        coords: (..., C) coordinates in [-1, 1] (C = 1 for one axis, 2 for (u, v)).
        harmonics: L.

    Returns:
        (..., C·2L) float: for each coordinate in order, (sin π2^0 p, cos π2^0 p, ...,
        sin π2^{L-1} p, cos π2^{L-1} p). With coords (u, v) this is concat(γ(u), γ(v)).
    """
    scales = math.pi * 2.0 ** torch.arange(harmonics, dtype=coords.dtype, device=coords.device)
    angles = coords[..., None] * scales  # (..., C, L)
    pairs = torch.stack([angles.sin(), angles.cos()], dim=-1)  # (..., C, L, 2)
    return pairs.flatten(-3)


class CentroidInstanceHead(nn.Module):
    """(B, mask_dim, h, w) mask features -> (B, 4L, h, w) centroid embeddings.

    `reduce` (1×1 conv to `hidden_dim`) and `convs.N` (3×3 convs), each
    `{weight, bias, norm.weight, norm.bias}` with GroupNorm and ReLU, then the linear 1×1
    `projection` (no activation: the targets lie in [-1, 1], and 0 for no instance).
    """

    def __init__(self, config: InstanceHeadConfig, in_channels: int, num_groups: int) -> None:
        super().__init__()
        self.harmonics = config.harmonics
        hidden = config.hidden_dim
        self.reduce = _ConvBlock(in_channels, hidden, 1, num_groups)
        self.convs = nn.ModuleList(
            _ConvBlock(hidden, hidden, 3, num_groups) for _ in range(config.num_convs)
        )
        self.projection = nn.Conv2d(hidden, config.embedding_dim, kernel_size=1)
        for conv in (self.reduce, *self.convs):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)
        # Small, so that training starts near the "no instance" code 0 everywhere.
        nn.init.normal_(self.projection.weight, std=0.01)
        nn.init.zeros_(self.projection.bias)

    def forward(self, mask_features: torch.Tensor) -> torch.Tensor:
        """mask_features: (B, C, h, w) float. Returns (B, 4L, h, w) float32 embeddings."""
        features = self.reduce(mask_features)
        for conv in self.convs:
            features = conv(features)
        return self.projection(features).float()


class _ConvBlock(nn.Conv2d):
    """Convolution (1×1 or 3×3, same size), GroupNorm, ReLU (the pixel decoder's layout)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, num_groups: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=kernel, padding=kernel // 2)
        self.norm = nn.GroupNorm(num_groups, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(super().forward(x)))


def build_instance_head(
    config: InstanceHeadConfig, in_channels: int, num_groups: int
) -> CentroidInstanceHead | None:
    """The configured head, or None for `kind: none` (no module, no parameters)."""
    if not config.enabled:
        return None
    return CentroidInstanceHead(config, in_channels, num_groups)
