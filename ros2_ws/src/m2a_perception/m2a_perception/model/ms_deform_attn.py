"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch, with two samplers.

The official code calls a custom CUDA kernel; its pure-PyTorch fallback
`ms_deform_attn_core_pytorch` (facebookresearch/Mask2Former and the Mask2Anomaly fork,
`mask2former/modeling/pixel_decoder/ops/functions/ms_deform_attn_func.py`, lines 82-107: per level
one bilinear `F.grid_sample`, zero padding, align_corners False, grid = 2·loc − 1, then the
attention-weighted sum) is numerically equivalent up to rounding and is what torch.export, ONNX
and TensorRT can consume. Spatial shapes are Python ints taken from the (static) feature sizes,
so the graph has no data-dependent shapes.

`deform_sampling` picks how each level is sampled:

- `grid_sample` (default, the official fallback): `F.grid_sample`, exported as ONNX GridSample.
- `gather`: the same bilinear sampling written with index arithmetic and one `index_select`
  (ONNX Gather) per level, so the exported graph has no GridSample. TensorRT 10.14 and later
  miscompile GridSample inside FP16 engines (pytorch/TensorRT#4074, NVIDIA/TensorRT#4813), so
  every TensorRT export uses this form (`deploy.precision`). It repeats the float operations of
  PyTorch's CPU `grid_sample` kernel (`aten/src/ATen/native/cpu/GridSamplerKernel.cpp`:
  `ix = (g + 1)·W/2 − 0.5`, corner weights from `floor`, out-of-range corners read as 0, the
  four products accumulated north-west, north-east, south-west, south-east by multiply-adds), so
  in eager mode on the CPU it gives the same bits as `grid_sample` (tests/model/
  test_deform_sampling.py). Other kernels (CUDA, onnxruntime, TensorRT) round their own way; the
  two forms then differ by float rounding only. The switch changes no parameter: checkpoints
  load either way.

Allowed dependencies: torch, `config` (the sampler names).
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from m2a_perception.config import GATHER, GRID_SAMPLE, check_deform_sampling

SpatialShapes = list[tuple[int, int]]
ModuleT = TypeVar('ModuleT', bound=nn.Module)


def bilinear_sample_gather(value: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """`F.grid_sample(value, grid, 'bilinear', 'zeros', align_corners=False)` without GridSample.

    Args:
        value: (N, D, H, W) feature map.
        grid: (N, Q, P, 2) sampling points, normalised (x, y) in [-1, 1] (pixel centres at
            (2i + 1)/size − 1, as align_corners False defines them).

    Returns:
        (N, D, Q, P), bilinear samples; points outside the map blend in zeros.
    """
    batch, channels, height, width = value.shape
    _, num_queries, num_points, _ = grid.shape
    # Source coordinates as the CPU kernel computes them: (g + 1)·size/2 − 0.5 in one
    # multiply-add.
    half = grid.new_full((), -0.5)
    x = torch.addcmul(half, grid[..., 0] + 1, grid.new_full((), width / 2))
    y = torch.addcmul(half, grid[..., 1] + 1, grid.new_full((), height / 2))
    x_west = x.floor()
    y_north = y.floor()
    east_weight = x - x_west  # distance to the west column = weight of the east column
    west_weight = 1 - east_weight
    south_weight = y - y_north
    north_weight = 1 - south_weight
    x_east = x_west + 1
    y_south = y_north + 1
    # Corners in grid_sample's summation order: north-west, north-east, south-west, south-east.
    corner_x = torch.stack([x_west, x_east, x_west, x_east])  # (4, N, Q, P)
    corner_y = torch.stack([y_north, y_north, y_south, y_south])
    corner_weight = torch.stack(
        [
            north_weight * west_weight,
            north_weight * east_weight,
            south_weight * west_weight,
            south_weight * east_weight,
        ]
    )
    # Zero padding: a corner outside the map contributes nothing. Its index is clamped into the
    # map so that the gather stays in bounds; its weight is zeroed instead.
    inside = (corner_x > -1) & (corner_x < width) & (corner_y > -1) & (corner_y < height)
    corner_weight = corner_weight * inside.to(corner_weight.dtype)
    column = corner_x.clamp(0, width - 1).to(torch.int32)
    row = corner_y.clamp(0, height - 1).to(torch.int32)
    # Flat index into (N·H·W, D): sample n reads its own map. H·W·N stays far below 2^31.
    map_offset = torch.arange(batch, dtype=torch.int32, device=value.device) * (height * width)
    flat_index = map_offset.view(1, batch, 1, 1) + row * width + column  # (4, N, Q, P)
    flat_value = value.flatten(2).transpose(1, 2).reshape(batch * height * width, channels)
    corners = flat_value.index_select(0, flat_index.flatten()).view(
        4, batch, num_queries, num_points, channels
    )
    weights = corner_weight.unsqueeze(-1)
    # Accumulated like the kernel's `nw·v + ne·v + sw·v + se·v`, which the CPU build contracts
    # into fused multiply-adds; addcmul does the same, so the sum rounds identically.
    sampled = corners[0] * weights[0]  # (N, Q, P, D)
    for corner in range(1, 4):
        sampled = torch.addcmul(sampled, corners[corner], weights[corner])
    # Contiguous like grid_sample's output: a permuted (channels-last-looking) tensor would make
    # the caller's stack and weighted sum reduce in another order and round differently.
    return sampled.permute(0, 3, 1, 2).contiguous()


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    deform_sampling: str = GRID_SAMPLE,
) -> torch.Tensor:
    """Sample each level at the given locations and take the attention-weighted sum.

    Args:
        value: (B, sum_l H_l·W_l, heads, head_dim), levels concatenated in `spatial_shapes` order.
        spatial_shapes: [(H_l, W_l)] per level.
        sampling_locations: (B, Q, heads, levels, points, 2), normalised (x, y) in [0, 1].
        attention_weights: (B, Q, heads, levels, points), softmax-normalised over levels·points.
        deform_sampling: 'grid_sample' (official) or 'gather' (no GridSample op, same values).

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
        if deform_sampling == GATHER:
            sampled.append(bilinear_sample_gather(level_value, level_grid))
        else:
            sampled.append(
                F.grid_sample(
                    level_value,
                    level_grid,
                    mode='bilinear',
                    padding_mode='zeros',
                    align_corners=False,
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

    def __init__(
        self,
        d_model: int,
        num_levels: int,
        num_heads: int,
        num_points: int,
        deform_sampling: str = GRID_SAMPLE,
    ) -> None:
        super().__init__()
        # How levels are sampled (module docstring); not a parameter, so not in the state dict.
        self.deform_sampling = check_deform_sampling(deform_sampling)
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
        output = multi_scale_deformable_attention(
            value, spatial_shapes, locations, weights, self.deform_sampling
        )
        return self.output_proj(output)


def set_deform_sampling(module: ModuleT, deform_sampling: str) -> ModuleT:
    """Switch every `MSDeformAttn` inside `module` to `deform_sampling`; returns `module`.

    Changes no parameter or buffer, so it applies to a model loaded from any checkpoint.
    """
    check_deform_sampling(deform_sampling)
    for submodule in module.modules():
        if isinstance(submodule, MSDeformAttn):
            submodule.deform_sampling = deform_sampling
    return module


def deform_samplings_in(module: nn.Module) -> set[str]:
    """The samplers used by the `MSDeformAttn` modules inside `module`."""
    return {m.deform_sampling for m in module.modules() if isinstance(m, MSDeformAttn)}
