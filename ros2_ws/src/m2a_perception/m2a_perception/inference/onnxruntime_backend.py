"""onnxruntime backend for ONNX files written by `m2a-export` (CPU here, CUDA where installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from m2a_perception.types import InstanceNetworkOutput, NetworkOutput, network_output


class OnnxRuntimeBackend:
    """Runs an exported model with a static input shape through onnxruntime."""

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        import onnxruntime  # lazy: only this backend needs it

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f'ONNX model not found: {self.path}')
        self.session = onnxruntime.InferenceSession(
            str(self.path), providers=providers or ['CPUExecutionProvider']
        )
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = tuple(self.session.get_inputs()[0].shape)
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.name = 'onnxruntime'
        self.device = torch.device('cpu')

    def __call__(self, images: torch.Tensor) -> NetworkOutput | InstanceNetworkOutput:
        if tuple(images.shape) != self.input_shape:
            raise ValueError(
                f'{self.path.name} was exported for input {self.input_shape}, '
                f'got {tuple(images.shape)}'
            )
        feed = {self.input_name: np.ascontiguousarray(images.detach().cpu().numpy(), np.float32)}
        results = self.session.run(self.output_names, feed)
        return network_output(*(torch.from_numpy(result) for result in results))
