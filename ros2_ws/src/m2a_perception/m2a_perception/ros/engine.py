"""Building the node's `Segmenter` from engine settings, warm-up and release.

Every failure becomes an `EngineError` with one sentence that names the setting or file at
fault, so `configure` can log it once and stay unconfigured. Random weights are impossible:
the only model source is a checkpoint that `load_checkpoint` verified.

Allowed dependencies: torch, numpy, the core (`pipeline`, `weights`, `postprocess`),
`m2a_perception.ros.params`.
"""

from __future__ import annotations

import gc
import importlib
from pathlib import Path

import numpy as np
import torch

from m2a_perception.config import ModelConfig
from m2a_perception.pipeline import Segmenter
from m2a_perception.postprocess.config import PostprocessConfig
from m2a_perception.ros.params import EngineSettings
from m2a_perception.weights import CheckpointError, load_checkpoint, read_checkpoint

# Where the TensorRT issue puts its loader (see m2a_perception.deploy); imported lazily.
TENSORRT_MODULE = 'm2a_perception.deploy.tensorrt_backend'


class EngineError(RuntimeError):
    """The engine cannot be built; the message says why and what to change."""


def build_segmenter(
    engine: EngineSettings, postprocess: PostprocessConfig
) -> tuple[Segmenter, ModelConfig]:
    """Load the checkpoint into the configured backend.

    Returns:
        The segmenter and the model config stored in the checkpoint.

    Raises:
        EngineError: for an empty, missing or invalid checkpoint, an unavailable device or
            backend.
    """
    if not engine.checkpoint:
        raise EngineError(
            'model.checkpoint is empty: set it to an m2a checkpoint (.safetensors); the node '
            'never runs random weights'
        )
    device = _device(engine.device)
    try:
        if engine.backend == 'torch':
            model, config = load_checkpoint(engine.checkpoint, device)
            segmenter = Segmenter.from_model(model, config, device, postprocess, engine.precision)
            return segmenter, config
        return _build_tensorrt(engine, device, postprocess)
    except CheckpointError as error:
        raise EngineError(f'invalid checkpoint: {error}') from error
    except (OSError, ValueError) as error:
        raise EngineError(f'cannot load {engine.checkpoint}: {error}') from error


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise EngineError(f'model.device is {name} but CUDA is not available on this machine')
    if device.type == 'cuda' and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise EngineError(f'model.device is {name} but only {count} CUDA device(s) exist')
    return device


def _build_tensorrt(
    engine: EngineSettings, device: torch.device, postprocess: PostprocessConfig
) -> tuple[Segmenter, ModelConfig]:
    # The engine file holds no pre-processing settings; the checkpoint it was built from does.
    if not engine.engine_path:
        raise EngineError('model.backend is tensorrt but model.engine_path is empty')
    if not Path(engine.engine_path).is_file():
        raise EngineError(f'TensorRT engine not found: {engine.engine_path}')
    config = read_checkpoint(engine.checkpoint).config
    try:
        module = importlib.import_module(TENSORRT_MODULE)
        backend = module.TensorRTBackend(engine.engine_path, device=device)
    except Exception as error:  # TensorRT import failures are not ImportErrors only
        raise EngineError(f'TensorRT backend unavailable: {error}') from error
    return Segmenter(backend, config.preprocess, postprocess), config


def warm_up(segmenter: Segmenter, config: ModelConfig, iterations: int) -> None:
    """Run `iterations` inferences on a blank frame of the model's working size."""
    short = config.preprocess.short_side or 512
    frame = np.zeros((short, min(2 * short, config.preprocess.max_size), 3), dtype=np.uint8)
    for _ in range(iterations):
        segmenter(frame)
    if segmenter.device.type == 'cuda':
        torch.cuda.synchronize(segmenter.device)


def release(device: torch.device | None) -> None:
    """Return cached GPU memory after the segmenter was dropped."""
    gc.collect()
    if device is not None and device.type == 'cuda':
        torch.cuda.empty_cache()
