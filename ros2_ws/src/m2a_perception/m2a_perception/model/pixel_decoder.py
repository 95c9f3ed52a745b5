"""MSDeformAttn pixel decoder (Mask2Former `MSDeformAttnPixelDecoder`).

A 6-layer deformable-attention encoder over res3..res5, then one FPN step onto res2, giving the
per-pixel `mask_features` at 1/4 resolution and the three multi-scale features the transformer
decoder attends to. Parameter names match the official checkpoints
(`sem_seg_head.pixel_decoder.*`). The whole module runs in float32, as the official code does
under AMP.

Allowed dependencies: torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m2a_perception.config import PixelDecoderConfig
from m2a_perception.model.ms_deform_attn import MSDeformAttn, SpatialShapes
from m2a_perception.model.position_encoding import sine_position_encoding


class DeformableEncoderLayer(nn.Module):
    """Post-norm deformable self-attention and ReLU FFN."""

    def __init__(
        self, d_model: int, ffn_dim: int, num_levels: int, num_heads: int, num_points: int
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, num_levels, num_heads, num_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: SpatialShapes,
    ) -> torch.Tensor:
        """src, pos: (B, N, C); reference_points: (B, N, levels, 2). Returns (B, N, C)."""
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DeformableEncoder(nn.Module):
    """Stack of deformable encoder layers plus the learned per-level embedding."""

    def __init__(self, config: PixelDecoderConfig, num_levels: int) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(num_levels, config.conv_dim))
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            DeformableEncoderLayer(
                config.conv_dim,
                config.encoder_ffn_dim,
                num_levels,
                config.encoder_heads,
                config.encoder_points,
            )
            for _ in range(config.encoder_layers)
        )
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for layer in self.encoder.layers:
            layer.self_attn._reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]) -> torch.Tensor:
        """srcs: [(B, C, H_l, W_l)]; pos_embeds: [(C, H_l, W_l)]. Returns (B, sum H_l·W_l, C)."""
        spatial_shapes: SpatialShapes = [(int(s.shape[-2]), int(s.shape[-1])) for s in srcs]
        src_flatten = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], dim=1)
        pos_flatten = torch.cat(
            [
                (p.flatten(1).transpose(0, 1) + self.level_embed[level])[None]
                for level, p in enumerate(pos_embeds)
            ],
            dim=1,
        )
        reference_points = encoder_reference_points(spatial_shapes, src_flatten)
        reference_points = reference_points[None, :, None, :].expand(
            src_flatten.shape[0], -1, len(spatial_shapes), 2
        )
        output = src_flatten
        for layer in self.encoder.layers:
            output = layer(output, pos_flatten, reference_points, spatial_shapes)
        return output


def encoder_reference_points(spatial_shapes: SpatialShapes, like: torch.Tensor) -> torch.Tensor:
    """Pixel centres ((j + 0.5)/W_l, (i + 0.5)/H_l) of every level, concatenated: (N, 2) as (x, y).

    No padding mask is used, so every valid ratio is 1 and the same point serves all levels.
    """
    points = []
    for height, width in spatial_shapes:
        ys = (torch.arange(height, device=like.device, dtype=like.dtype) + 0.5) / height
        xs = (torch.arange(width, device=like.device, dtype=like.dtype) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing='ij')
        points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1))
    return torch.cat(points, dim=0)


class ConvGroupNorm(nn.Conv2d):
    """Bias-free convolution with GroupNorm stored as `<conv>.norm` (detectron2 `Conv2d`)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, num_groups: int
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.norm = nn.GroupNorm(num_groups, out_channels)
        nn.init.kaiming_uniform_(self.weight, a=1)  # detectron2 c2_xavier_fill

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder: (res2..res5 features) -> (mask_features, [1/32, 1/16, 1/8 features])."""

    # Levels handled by the deformable encoder, coarsest first (official order: res5, res4, res3).
    transformer_in_features = ('res5', 'res4', 'res3')

    def __init__(self, config: PixelDecoderConfig, in_channels: dict[str, int]) -> None:
        super().__init__()
        conv_dim = config.conv_dim
        self.input_proj = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels[name], conv_dim, kernel_size=1),
                nn.GroupNorm(config.num_groups, conv_dim),
            )
            for name in self.transformer_in_features
        )
        for projection in self.input_proj:
            nn.init.xavier_uniform_(projection[0].weight, gain=1)
            nn.init.constant_(projection[0].bias, 0)
        self.transformer = DeformableEncoder(config, num_levels=len(self.transformer_in_features))
        self.num_pos_feats = conv_dim // 2
        self.mask_features = nn.Conv2d(conv_dim, config.mask_dim, kernel_size=1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.constant_(self.mask_features.bias, 0)
        # One FPN level (common stride 4): lateral 1×1 on res2, then a 3×3 output conv with ReLU.
        self.adapter_1 = ConvGroupNorm(in_channels['res2'], conv_dim, 1, config.num_groups)
        self.layer_1 = ConvGroupNorm(conv_dim, conv_dim, 3, config.num_groups)

    def forward(
        self, features: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Args: features `res2`..`res5`, (B, C_k, H/s_k, W/s_k).

        Returns:
            mask_features: (B, mask_dim, H/4, W/4).
            multi_scale_features: [(B, conv_dim, H/32, W/32), (.., H/16, ..), (.., H/8, ..)].
        """
        # The official pixel decoder runs in float32 even under AMP: feed it its own dtype.
        dtype = self.mask_features.weight.dtype
        srcs, pos_embeds = [], []
        for projection, name in zip(self.input_proj, self.transformer_in_features, strict=True):
            src = projection(features[name].to(dtype))
            srcs.append(src)
            pos_embeds.append(
                sine_position_encoding(
                    src.shape[-2],
                    src.shape[-1],
                    self.num_pos_feats,
                    device=src.device,
                    dtype=dtype,
                )
            )
        memory = self.transformer(srcs, pos_embeds)
        batch = memory.shape[0]
        outputs = []
        start = 0
        for src in srcs:
            height, width = src.shape[-2:]
            level = memory[:, start : start + height * width]
            outputs.append(level.transpose(1, 2).reshape(batch, -1, height, width))
            start += height * width
        lateral = self.adapter_1(features['res2'].to(dtype))
        fine = lateral + F.interpolate(
            outputs[-1], size=lateral.shape[-2:], mode='bilinear', align_corners=False
        )
        fine = F.relu(self.layer_1(fine))
        return self.mask_features(fine), outputs
