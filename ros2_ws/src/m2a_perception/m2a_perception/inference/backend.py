"""The backend protocol shared by the node, the replay tool, evaluation and benchmarks."""

from __future__ import annotations

from typing import Protocol

import torch

PRECISIONS = ('fp32', 'fp16', 'bf16')
"""Compute precisions a backend can be asked for (the fp16 recipe: `deploy.precision`)."""


class Backend(Protocol):
    """Runs Mask2Anomaly on a batch of pre-processed images.

    `__call__` takes (B, 3, H, W) float32 normalised, padded images (any device; the backend moves
    them) and returns `class_logits` (B, Q, K+1) and `mask_logits` (B, Q, H/4, W/4) as float32
    tensors on `device`, ready for post-processing there.
    """

    name: str
    device: torch.device

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
