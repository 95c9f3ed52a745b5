"""Eager PyTorch backend (CPU or CUDA; FP32, or FP16/BF16 autocast), optionally compiled."""

from __future__ import annotations

import torch

from m2a_perception.inference.backend import PRECISIONS
from m2a_perception.model import Mask2Anomaly
from m2a_perception.types import InstanceNetworkOutput, NetworkOutput, instance_embedding_of

_AUTOCAST_DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}


class TorchBackend:
    """The model in eval mode under `torch.inference_mode`.

    `fp16`/`bf16` run the backbone and transformer decoder under CUDA autocast; the pixel
    decoder and the attention softmax stay float32 by construction. Outputs are always float32.
    `compile=True` wraps the model in `torch.compile` (inductor): the first call of each input
    shape compiles (tens of seconds), later calls run the generated kernels.
    """

    input_dtype = torch.float32

    def __init__(
        self,
        model: Mask2Anomaly,
        device: torch.device | str = 'cpu',
        precision: str = 'fp32',
        *,
        compile: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        self.device = torch.device(device)
        if precision != 'fp32' and self.device.type != 'cuda':
            raise ValueError(f'{precision} needs a CUDA device; use fp32 on CPU')
        self.precision = precision
        base = 'torch-compile' if compile else 'torch'
        self.name = f'{base}-{precision}' if precision != 'fp32' else base
        self.model = model.to(self.device).eval()
        # Autotuning pays on a GPU (Triton GEMM choices); on the CPU it spends minutes timing
        # tiny matrix products for no gain, so the CPU uses inductor's default mode.
        mode = 'max-autotune-no-cudagraphs' if self.device.type == 'cuda' else 'default'
        self._run = torch.compile(self.model, mode=mode) if compile else self.model

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> NetworkOutput | InstanceNetworkOutput:
        images = images.to(self.device, non_blocking=True)
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        with torch.autocast(device_type=self.device.type, dtype=dtype, enabled=dtype is not None):
            outputs = self._run(images)
        embedding = instance_embedding_of(outputs)
        if embedding is not None:
            return InstanceNetworkOutput(
                outputs.class_logits.float(), outputs.mask_logits.float(), embedding.float()
            )
        return NetworkOutput(outputs.class_logits.float(), outputs.mask_logits.float())
