"""Multi-head attention with an explicit, export-friendly masking path.

Parameters are laid out exactly like `torch.nn.MultiheadAttention` (`in_proj_weight`,
`in_proj_bias`, `out_proj`) so official checkpoints load unchanged, but the computation is written
out: masked logits get a large *finite* negative value and the softmax runs in float32. Together
with the row guard in `unblock_full_rows` no row is ever fully masked, so no NaN can arise in FP32,
FP16 or TensorRT (shared/reference/tensorrt.md §2.3).

Allowed dependencies: torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Added to blocked attention logits; exp() of it underflows to exactly 0 in float32.
MASKED_LOGIT = -1.0e4


def unblock_full_rows(blocked: torch.Tensor) -> torch.Tensor:
    """Let rows that block every key attend everywhere instead (Mask2Former's guard).

    The official code finds such rows with `torch.where` (a data-dependent shape); this is the
    static equivalent: AND with the negated row-wise all-reduce.

    Args:
        blocked: (..., Q, K) bool, True = key hidden from the query.
    Returns:
        Same shape and dtype; no row is all True.
    """
    return blocked & ~blocked.all(dim=-1, keepdim=True)


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention with `nn.MultiheadAttention`'s parameter names."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f'embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})'
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        blocked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scaled dot-product attention over all heads.

        Args:
            query: (B, Q, E). key, value: (B, K, E).
            blocked: optional (B, heads, Q, K) bool, True = hidden. Rows must not be all True.

        Returns:
            (B, Q, E).
        """
        batch, num_queries, _ = query.shape
        num_keys = key.shape[1]
        head_dim = self.embed_dim // self.num_heads
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q).view(batch, num_queries, self.num_heads, head_dim)
        k = F.linear(key, w_k, b_k).view(batch, num_keys, self.num_heads, head_dim)
        v = F.linear(value, w_v, b_v).view(batch, num_keys, self.num_heads, head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, ., D)
        logits = torch.matmul(q * (1.0 / math.sqrt(head_dim)), k.transpose(-2, -1))
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # softmax is an FP32 island (float64 stays float64)
        if blocked is not None:
            logits = logits.masked_fill(blocked, MASKED_LOGIT)
        weights = logits.softmax(dim=-1).to(v.dtype)
        output = torch.matmul(weights, v).transpose(1, 2).reshape(batch, num_queries, -1)
        return self.out_proj(output)
