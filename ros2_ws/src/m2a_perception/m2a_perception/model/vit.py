"""DINOv2 vision transformer with a simple feature pyramid (ViTDet) for the pixel decoder.

The ViT follows DINOv2's layout and parameter names (`cls_token`, `pos_embed`,
`patch_embed.proj`, optional `register_tokens`, `blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,
norm2,mlp.fc1,mlp.fc2,ls2.gamma}`, `norm`), so official checkpoints load by prefixing
(weights/dinov2.py). Pre-norm blocks with LayerScale, GELU MLP, LayerNorm eps 1e-6.

Geometry (as DINOv2's own Mask2Former adapter, `eval/segmentation_m2f/.../vit_adapter.py`):
the ViT runs on the padded image at patch 14, giving an (H/14, W/14) token map, and the map is
resized bilinearly to the (H/16, W/16) grid the pixel decoder expects. The model configs pad
the input to a multiple of lcm(14, 32) = 224 (`preprocess.size_divisibility`), so H/14 and H/16
are both whole and the resize is exactly cell-centre aligned; for any other 32-divisible size
the image is zero-padded to a multiple of 14 here first (alignment then off by under a patch).

Positional embeddings are resized bicubically from the pretraining grid (37×37 for DINOv2's
518-pixel training), with DINOv2's `interpolate_offset` 0.1 scale-factor convention, as two
constant matrix products (`bicubic_matrix`): the same numbers as `F.interpolate(mode='bicubic')`
but no cubic Resize op, which TensorRT does not support.

Simple feature pyramid on the last block's (normed) map, ViTDet-style: 1/4 by two 2×2 transposed
convolutions (LayerNorm and GELU between; computed as einsums, `Upsample2x`), 1/8 by one, 1/16 as
is, 1/32 by 1×1 max pooling with stride 2. Channels: D/4, D/2, D, D; the pixel decoder projects
them as it projects res2..res5.

Allowed dependencies: torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from m2a_perception.config import BackboneConfig

PATCH_STRIDE = 16  # the stride of the "as is" level: res4 of the pixel decoder
_CUBIC_A = -0.75  # PyTorch's bicubic coefficient


def _cubic_weights(t: float) -> tuple[float, float, float, float]:
    """Keys' cubic convolution weights of the taps at -1, 0, 1, 2 for fractional offset t."""

    def near(x: float) -> float:  # |x| <= 1
        return ((_CUBIC_A + 2) * x - (_CUBIC_A + 3)) * x * x + 1

    def far(x: float) -> float:  # 1 < |x| < 2
        return ((_CUBIC_A * x - 5 * _CUBIC_A) * x + 8 * _CUBIC_A) * x - 4 * _CUBIC_A

    return far(t + 1), near(t), near(1 - t), far(2 - t)


def bicubic_matrix(source: int, target: int, scale: float) -> torch.Tensor:
    """(target, source) float32 matrix A with A @ v = 1-D bicubic resize of v.

    Matches `F.interpolate(..., mode='bicubic', align_corners=False, scale_factor=scale)` along
    one axis (source coordinate (i + 0.5) / scale − 0.5, taps clamped to the border).
    """
    matrix = torch.zeros(target, source, dtype=torch.float64)
    for i in range(target):
        position = (i + 0.5) / scale - 0.5
        floor = math.floor(position)
        for offset, weight in zip((-1, 0, 1, 2), _cubic_weights(position - floor), strict=True):
            matrix[i, min(max(floor + offset, 0), source - 1)] += weight
    return matrix.float()


def layer_norm_2d(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm over the channels of (B, C, H, W)."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, H/p, W/p, D)."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (DINOv2 `attn.qkv`, `attn.proj`)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, d)
        scale = (dim // self.num_heads) ** -0.5
        weights = torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(out)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel residual scale `gamma` (DINOv2 initialises it to 1 for released models)."""

    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1 x)), then x + ls2(mlp(norm2 x))."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, ffn_dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT returning the normed patch-token map of the last block.

    Input (B, 3, H, W) with H, W multiples of the patch size; output (B, D, H/p, W/p).
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        dim = config.vit_embed_dim
        self.patch_size = config.vit_patch_size
        self.pretrain_grid = config.vit_pretrain_grid
        self.interpolate_offset = 0.1  # DINOv2 hub default (a backward-compatibility kludge)
        self.num_prefix_tokens = 1 + config.vit_num_register_tokens
        self.patch_embed = PatchEmbed(self.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.pretrain_grid**2 + 1, dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, config.vit_num_register_tokens, dim))
            if config.vit_num_register_tokens
            else None
        )
        self.blocks = nn.ModuleList(
            Block(dim, config.vit_num_heads, config.vit_ffn_dim) for _ in range(config.vit_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def patch_pos_embed(self, height: int, width: int) -> torch.Tensor:
        """(1, h·w, D) positional embeddings of an (h, w) patch grid (bicubic, DINOv2 offset)."""
        grid = self.pretrain_grid
        patches = self.pos_embed[:, 1:]
        if (height, width) == (grid, grid):
            return patches
        rows = bicubic_matrix(grid, height, (height + self.interpolate_offset) / grid)
        cols = bicubic_matrix(grid, width, (width + self.interpolate_offset) / grid)
        square = patches.reshape(grid, grid, -1)
        resized = torch.einsum(
            'hg,gkd,wk->hwd', rows.to(square.device), square, cols.to(square.device)
        )
        return resized.reshape(1, height * width, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)  # (B, h, w, D)
        batch, height, width, dim = tokens.shape
        tokens = tokens.reshape(batch, height * width, dim) + self.patch_pos_embed(height, width)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1)
        prefix = [cls]
        if self.register_tokens is not None:
            prefix.append(self.register_tokens.expand(batch, -1, -1))
        x = torch.cat([*prefix, tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        patches = self.norm(x)[:, self.num_prefix_tokens :]
        return patches.transpose(1, 2).reshape(batch, dim, height, width)


class Upsample2x(nn.ConvTranspose2d):
    """2×2 stride-2 transposed convolution computed as one einsum and a reshape.

    The kernel tiles the output without overlap, so each input pixel maps to its own 2×2 output
    block: y[b, o, 2i + p, 2j + q] = Σ_c x[b, c, i, j]·W[c, o, p, q] + bias[o]. Same parameters
    and state-dict keys as `nn.ConvTranspose2d(C, O, 2, stride=2)`, same values, but no
    ConvTranspose op in exported graphs (it has no row in deploy/tensorrt_onnx_ops.yaml).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(B, C, H, W) -> (B, O, 2H, 2W)."""
        batch, _, height, width = x.shape
        blocks = torch.einsum('bchw,copq->bohpwq', x, self.weight)
        out = blocks.reshape(batch, self.out_channels, 2 * height, 2 * width)
        return out + self.bias[None, :, None, None]


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple pyramid: one (B, D, H/16, W/16) map -> res2..res5 at strides 4..32."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up4_1 = Upsample2x(dim, dim // 2)
        self.up4_norm = nn.LayerNorm(dim // 2, eps=1e-6)
        self.up4_2 = Upsample2x(dim // 2, dim // 4)
        self.up8 = Upsample2x(dim, dim // 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        up4 = self.up4_2(F.gelu(layer_norm_2d(self.up4_1(x), self.up4_norm)))
        return {
            'res2': up4,
            'res3': self.up8(x),
            'res4': x,
            'res5': F.max_pool2d(x, kernel_size=1, stride=2),
        }


class ViTBackbone(nn.Module):
    """Frozen (optionally) DINOv2 ViT + simple feature pyramid, with ResNet's output contract.

    Input: (B, 3, H, W) float32, normalised RGB, H and W multiples of 32 (best: of 224).
    Output: dict `res2`..`res5` of (B, C_k, H/s_k, W/s_k), s = 4, 8, 16, 32, C = (D/4, D/2, D, D).
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        dim = config.vit_embed_dim
        self.vit = DinoVisionTransformer(config)
        self.pyramid = SimpleFeaturePyramid(dim)
        self.out_channels = {'res2': dim // 4, 'res3': dim // 2, 'res4': dim, 'res5': dim}
        if config.freeze_at > 0:
            for parameter in self.vit.parameters():
                parameter.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = int(x.shape[-2]), int(x.shape[-1])
        patch = self.vit.patch_size
        pad_h, pad_w = -height % patch, -width % patch
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        tokens = self.vit(x)  # (B, D, ceil(H/14), ceil(W/14))
        grid = (height // PATCH_STRIDE, width // PATCH_STRIDE)
        if tuple(tokens.shape[-2:]) != grid:
            tokens = F.interpolate(tokens, size=grid, mode='bilinear', align_corners=False)
        return self.pyramid(tokens)
