"""Eager PyTorch backend (CPU or CUDA, float32 or float16 autocast)."""

from __future__ import annotations

import torch

from m2a_perception.inference.backend import PRECISIONS
from m2a_perception.model import Mask2Anomaly


class TorchBackend:
    """Eager model in eval mode under `torch.inference_mode`.

    `fp16` runs the backbone and transformer decoder under CUDA autocast; the pixel decoder and
    the attention softmax stay float32 by construction. Outputs are always float32.
    """

    def __init__(
        self, model: Mask2Anomaly, device: torch.device | str = 'cpu', precision: str = 'fp32'
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        self.device = torch.device(device)
        if precision == 'fp16' and self.device.type != 'cuda':
            raise ValueError('fp16 needs a CUDA device; use fp32 on CPU')
        self.precision = precision
        self.name = f'torch-{precision}' if precision != 'fp32' else 'torch'
        self.model = model.to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        with torch.autocast(
            device_type=self.device.type, dtype=torch.float16, enabled=self.precision == 'fp16'
        ):
            class_logits, mask_logits = self.model(images)
        return class_logits.float(), mask_logits.float()
