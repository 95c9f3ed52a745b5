"""Multi-scale deformable attention (Deformable DETR), in pure PyTorch on `grid_sample`.

The official code calls a custom CUDA kernel; its pure-PyTorch fallback (bilinear `grid_sample`,
zero padding, align_corners False, grid = 2·loc − 1) is numerically equivalent up to rounding and
is what torch.export, ONNX and TensorRT can consume. Spatial shapes are Python ints taken from the
(static) feature sizes, so the graph has no data-dependent shapes.

Allowed dependencies: torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SpatialShapes = list[tuple[int, int]]


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Sample each level at the given locations and take the attention-weighted sum.

    Args:
        value: (B, sum_l H_l·W_l, heads, head_dim), levels concatenated in `spatial_shapes` order.
        spatial_shapes: [(H_l, W_l)] per level.
        sampling_locations: (B, Q, heads, levels, points, 2), normalised (x, y) in [0, 1].
        attention_weights: (B, Q, heads, levels, points), softmax-normalised over levels·points.

    Returns:
        (B, Q, heads·head_dim).
    """
    batch, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    value_per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampled = []
    for level, (height, width) in enumerate(spatial_shapes):
        # (B, HW, heads, D) -> (B·heads, D, H, W)
        level_value = (
            value_per_level[level]
            .flatten(2)
            .transpose(1, 2)
            .reshape(batch * num_heads, head_dim, height, width)
        )
        # (B, Q, heads, P, 2) -> (B·heads, Q, P, 2)
        level_grid = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(
                level_value, level_grid, mode='bilinear', padding_mode='zeros', align_corners=False
            )
        )  # (B·heads, D, Q, P)
    # (B, Q, heads, L, P) -> (B·heads, 1, Q, L·P)
    weights = attention_weights.transpose(1, 2).reshape(
        batch * num_heads, 1, num_queries, num_levels * num_points
    )
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return output.view(batch, num_heads * head_dim, num_queries).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Deformable attention module; parameter names follow the official `MSDeformAttn`."""

    def __init__(self, d_model: int, num_levels: int, num_heads: int, num_points: int) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f'd_model ({d_model}) must be divisible by num_heads ({num_heads})')
        self.d_model = d_model
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(d_model, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(d_model, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Offsets start on a ring of directions, growing with the point index (Deformable DETR).
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (
            2.0 * math.pi / self.num_heads
        )
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        for point in range(self.num_points):
            grid[:, :, point, :] *= point + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        spatial_shapes: SpatialShapes,
    ) -> torch.Tensor:
        """Attend from every query to `num_points` sampled locations per head and level.

        Args:
            query: (B, Q, C), content plus position.
            reference_points: (B, Q, levels, 2), normalised (x, y).
            input_flatten: (B, sum_l H_l·W_l, C), the values.
            spatial_shapes: [(H_l, W_l)] per level.

        Returns:
            (B, Q, C).
        """
        batch, num_queries, _ = query.shape
        value = self.value_proj(input_flatten)
        value = value.view(batch, -1, self.num_heads, self.d_model // self.num_heads)
        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.num_heads, self.num_levels, self.num_points, 2
        )
        weights = self.attention_weights(query).view(
            batch, num_queries, self.num_heads, self.num_levels * self.num_points
        )
        weights = weights.softmax(-1).view(
            batch, num_queries, self.num_heads, self.num_levels, self.num_points
        )
        # Offsets are in pixels of each level: normalise by (W_l, H_l).
        normalizer = torch.tensor(
            [[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device
        )
        locations = (
            reference_points[:, :, None, :, None, :]
            + offsets / normalizer[None, None, None, :, None, :]
        )
        output = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
        return self.output_proj(output)
