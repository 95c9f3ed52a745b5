"""Sine position encoding of a feature map (DETR / Mask2Former style, normalised).

Allowed dependencies: torch.
"""

from __future__ import annotations

import math

import torch


def sine_position_encoding(
    height: int,
    width: int,
    num_pos_feats: int,
    *,
    temperature: float = 10000.0,
    scale: float = 2 * math.pi,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Return the (2·num_pos_feats, height, width) encoding `[pos_y, pos_x]`.

    Positions are the cumulative pixel counts 1..H and 1..W, normalised by the last one and scaled
    to (0, 2π]; each axis uses interleaved sin/cos pairs. No padding mask is used, so the encoding
    depends only on the (static) feature size and is shared by every image of a batch.
    """
    eps = 1e-6
    y_embed = torch.arange(1, height + 1, device=device, dtype=dtype)
    x_embed = torch.arange(1, width + 1, device=device, dtype=dtype)
    y_embed = y_embed / (y_embed[-1:] + eps) * scale
    x_embed = x_embed / (x_embed[-1:] + eps) * scale

    dim_t = torch.arange(num_pos_feats, device=device, dtype=dtype)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode='floor') / num_pos_feats)

    pos_x = x_embed[:, None] / dim_t  # (W, F)
    pos_y = y_embed[:, None] / dim_t  # (H, F)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos_x = pos_x[None, :, :].expand(height, width, num_pos_feats)
    pos_y = pos_y[:, None, :].expand(height, width, num_pos_feats)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)
