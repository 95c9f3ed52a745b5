"""Backends for evaluation: a checkpoint (eager torch) or an exported engine, chosen by suffix.

- `--checkpoint model.safetensors`: `TorchBackend` (fp32, or fp16 autocast on CUDA);
- `--engine model.onnx`: `OnnxRuntimeBackend` (CUDA provider when `--device cuda` and installed);
- `--engine model.ep|.engine|.plan|.trt`: `m2a_perception.deploy.tensorrt_backend` backends,
  imported on demand; a clear `BackendUnavailableError` if TensorRT or that module is missing.

An engine holds no pre-processing settings and no class count, so `--engine` needs the model
config too: from `--checkpoint` (the file the engine was exported from; only its metadata and
config are used) or `--model-config NAME|YAML`.

Engines have one static input shape. `StaticShapeBackend` zero-pads smaller pre-processed frames
at the bottom/right up to it (as detectron2 pads a batch) and crops the mask logits back; a
frame larger than the engine is an error that names both sizes.

Allowed dependencies: torch, onnxruntime / TensorRT (lazily), m2a_perception.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from m2a_perception.config import ModelConfig, load_model_config
from m2a_perception.inference import TorchBackend
from m2a_perception.model import SIZE_DIVISIBILITY
from m2a_perception.weights import load_checkpoint, read_checkpoint

LOGGER = logging.getLogger(__name__)

TENSORRT_MODULE = 'm2a_perception.deploy.tensorrt_backend'
ENGINE_KINDS = {
    '.onnx': 'onnxruntime',
    '.ep': 'tensorrt',  # torch-tensorrt program from `m2a-build-engine --backend tensorrt`
    '.engine': 'tensorrt-onnx',  # serialized TensorRT plans (the ONNX-parser route)
    '.plan': 'tensorrt-onnx',
    '.trt': 'tensorrt-onnx',
}
# Output stride of the mask logits relative to the network input.
MASK_STRIDE = 4

Logits = tuple[torch.Tensor, torch.Tensor]


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says why and what to use instead."""


@dataclass
class LoadedBackend:
    """A ready backend and what the report says about it.

    Attributes:
        backend: callable (B, 3, H, W) normalised images -> (class_logits, mask_logits).
        config: the model config (pre-processing, number of classes).
        kind: 'torch', 'onnxruntime' or 'tensorrt'.
        path: the checkpoint or engine file run.
        method_name: default row label of the tables.
    """

    backend: object
    config: ModelConfig
    kind: str
    path: Path
    method_name: str

    def describe(self) -> dict[str, object]:
        """JSON-ready description for the report."""
        return {
            'kind': self.kind,
            'path': str(self.path),
            'name': getattr(self.backend, 'name', self.kind),
            'model_config': self.config.name,
            'num_classes': self.config.num_classes,
            'preprocess': {
                'short_side': self.config.preprocess.short_side,
                'max_size': self.config.preprocess.max_size,
            },
        }


class StaticShapeBackend:
    """Runs a fixed-shape engine on smaller inputs by zero padding (bottom/right) and cropping.

    Args:
        backend: the engine backend; must accept exactly `input_shape`.
        input_shape: (B, 3, H, W) the engine was built for.
    """

    def __init__(self, backend: object, input_shape: tuple[int, int, int, int]) -> None:
        self.backend = backend
        self.input_shape = tuple(int(v) for v in input_shape)
        self.name = getattr(backend, 'name', 'engine')
        self.device = getattr(backend, 'device', torch.device('cpu'))
        self._warned = False

    def __call__(self, images: torch.Tensor) -> Logits:
        batch, channels, height, width = images.shape
        engine_batch, engine_channels, engine_height, engine_width = self.input_shape
        if (batch, channels) != (engine_batch, engine_channels):
            raise ValueError(
                f'the engine takes batches of {engine_batch} x {engine_channels} channels, got '
                f'{batch} x {channels}'
            )
        if (height, width) == (engine_height, engine_width):
            return self.backend(images)  # type: ignore[operator]
        if height > engine_height or width > engine_width:
            raise ValueError(
                f'a pre-processed frame is {height}x{width} but the engine was built for '
                f'{engine_height}x{engine_width}; export it at least as large as the largest '
                'frame after resizing (see the model config preprocess.short_side / max_size)'
            )
        if not self._warned:
            LOGGER.info(
                'padding %dx%d frames to the engine shape %dx%d (zero padding, cropped after)',
                height,
                width,
                engine_height,
                engine_width,
            )
            self._warned = True
        padded = F.pad(images, (0, engine_width - width, 0, engine_height - height))
        class_logits, mask_logits = self.backend(padded)  # type: ignore[operator]
        return class_logits, mask_logits[..., : height // MASK_STRIDE, : width // MASK_STRIDE]


def engine_kind(path: Path) -> str:
    """'onnxruntime' or 'tensorrt' from the file suffix.

    Raises:
        ValueError: for any other suffix.
    """
    kind = ENGINE_KINDS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f'cannot tell the backend of {path.name!r} from its suffix; use one of '
            f'{", ".join(sorted(ENGINE_KINDS))} (or --checkpoint for eager torch)'
        )
    return kind


def _static_shape(backend: object) -> tuple[int, int, int, int] | None:
    shape = getattr(backend, 'input_shape', None)
    if shape is None or len(shape) != 4 or not all(isinstance(v, int) for v in shape):
        return None
    return tuple(shape)  # type: ignore[return-value]


def _onnx_backend(path: Path, device: torch.device) -> object:
    try:
        import onnxruntime
    except ImportError as error:
        raise BackendUnavailableError(
            f'onnxruntime is not installed ({error}); install it or evaluate with --checkpoint'
        ) from error
    from m2a_perception.inference.onnxruntime_backend import OnnxRuntimeBackend

    providers = ['CPUExecutionProvider']
    if device.type == 'cuda':
        if 'CUDAExecutionProvider' in onnxruntime.get_available_providers():
            providers.insert(0, 'CUDAExecutionProvider')
        else:
            LOGGER.warning('onnxruntime has no CUDA provider here; running the ONNX file on CPU')
    return OnnxRuntimeBackend(path, providers)


def _tensorrt_backend(path: Path, device: torch.device, kind: str) -> object:
    if device.type != 'cuda':
        raise BackendUnavailableError(
            f'{path.name} is a TensorRT engine, which needs --device cuda (got {device})'
        )
    try:
        module = importlib.import_module(TENSORRT_MODULE)
    except ImportError as error:
        raise BackendUnavailableError(
            f'the TensorRT backend is not available in this installation ({error}); evaluate '
            'the ONNX file with onnxruntime (--engine model.onnx) or the checkpoint instead'
        ) from error
    try:
        backend_class = (
            module.TensorRTBackend if kind == 'tensorrt' else module.OnnxTensorRTBackend
        )
        return backend_class(path, device=device)
    except Exception as error:  # TensorRT reports a bad engine in many exception types
        raise BackendUnavailableError(f'cannot load TensorRT engine {path}: {error}') from error


def load_backend(
    *,
    checkpoint: Path | None,
    engine: Path | None,
    model_config: str | None,
    device: torch.device,
    precision: str = 'fp32',
) -> LoadedBackend:
    """Build the backend named on the command line.

    Args:
        checkpoint: m2a safetensors checkpoint; run eagerly unless `engine` is given, in which
            case only its model config is used.
        engine: exported model (.onnx / .engine / .plan / .trt).
        model_config: model config name or YAML path (for `engine` without `checkpoint`).
        device: where to run.
        precision: torch backend precision ('fp32' or 'fp16').

    Raises:
        ValueError: inconsistent arguments or unknown engine suffix.
        FileNotFoundError: missing engine or config.
        CheckpointError: invalid checkpoint.
        BackendUnavailableError: the engine's runtime is missing.
    """
    if engine is None:
        if checkpoint is None:
            raise ValueError('pass --checkpoint CKPT or --engine ENGINE')
        if model_config is not None:
            raise ValueError('--model-config only applies to --engine (a checkpoint has its own)')
        model, config = load_checkpoint(checkpoint, device)
        backend = TorchBackend(model, device, precision)
        return LoadedBackend(backend, config, 'torch', checkpoint, checkpoint.stem)

    kind = engine_kind(engine)
    if not engine.is_file():
        raise FileNotFoundError(f'engine file not found: {engine}')
    if checkpoint is not None and model_config is not None:
        raise ValueError('give the engine config by --checkpoint or --model-config, not both')
    if checkpoint is not None:
        config = read_checkpoint(checkpoint).config
    elif model_config is not None:
        config = load_model_config(model_config)
    else:
        raise ValueError(
            'an engine holds no pre-processing settings or class count: pass --model-config '
            'NAME|YAML or the --checkpoint it was exported from'
        )
    if precision != 'fp32':
        raise ValueError('--precision applies to the torch backend; engines fix their precision')
    backend = (
        _onnx_backend(engine, device)
        if kind == 'onnxruntime'
        else _tensorrt_backend(engine, device, kind)
    )
    shape = _static_shape(backend)
    if shape is not None:
        if shape[2] % SIZE_DIVISIBILITY or shape[3] % SIZE_DIVISIBILITY:
            raise ValueError(f'{engine.name}: input {shape} is not a multiple of 32')
        backend = StaticShapeBackend(backend, shape)
    return LoadedBackend(backend, config, kind, engine, engine.stem)
