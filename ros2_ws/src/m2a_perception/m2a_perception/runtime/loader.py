"""The one backend loader: a `BackendSpec` in, a ready backend and its model config out.

Every consumer loads its model here: the ROS node, the rosbag replay, `m2a-eval`, `m2a-bench`,
`m2a-infer` and `m2a-doctor`. Every failure is a `BackendError` whose message is one sentence
naming the setting or file at fault. Random weights are impossible: the model always comes from
a checkpoint that `load_checkpoint` verified (an engine's weights hash is checked against it).

Kinds:
    torch          eager PyTorch, FP32 or FP16/BF16 autocast (CUDA);
    torch-compile  `torch.compile` (inductor) of the eager model; the accelerated path on an RTX
                   machine without torch-tensorrt;
    onnxruntime    an FP32 `.onnx` engine written by `m2a-build-engine --backend onnxruntime`
                   (CPU, or CUDA where onnxruntime has its provider);
    tensorrt       a torch-tensorrt `.ep` engine;
    tensorrt-onnx  a TensorRT `.plan` built by TensorRT's ONNX parser (the Orin route).

Engine files (the last three kinds) are opened only through their JSON sidecar: the engine key
recomputed here from the checkpoint (weights hash), the requested precision and input shape, the
installed tool versions and the GPU must equal the recorded one, and the recorded accuracy gate
must have passed unless `allow_gate_failed` is set. A mismatch is refused naming the field
(`weights_sha256`, `input_shape`, `precision`, `toolchain.torch`, `toolchain.gpu_name`, ...).
An engine is either a given file (`engine_path`, the node's `model.engine_path`) or the one
named by its key in a cache folder (`engine_cache`: what `m2a-build-engine` writes, used by
`m2a-bench`); the sidecar check is the same. Under `engine_policy='build_if_missing'` a missing
or stale engine is built, gated and saved first (minutes on a GPU; `on_state` reports
'building'); under `load_only` it is an error.

TensorRT and torch-tensorrt are imported only when a TensorRT kind is loaded, inside
`m2a_perception.deploy.tensorrt_backend`; their absence is a `BackendError` naming the package.

Allowed dependencies: torch, numpy, the core (`pipeline`, `weights`, `inference`, `deploy`).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2a_perception.config import ModelConfig
from m2a_perception.inference import Backend, StaticShapeBackend, TorchBackend
from m2a_perception.inference.backend import PRECISIONS
from m2a_perception.pipeline import Segmenter
from m2a_perception.postprocess.config import PostprocessConfig, check_instance_head
from m2a_perception.preprocess import mean_colour, padded_size
from m2a_perception.weights import CheckpointError, load_checkpoint, read_checkpoint

KINDS = ('torch', 'torch-compile', 'onnxruntime', 'tensorrt', 'tensorrt-onnx')
# Kinds that run an engine file (with its sidecar) rather than the checkpoint's eager model.
ENGINE_KINDS = ('onnxruntime', 'tensorrt', 'tensorrt-onnx')
ENGINE_SUFFIXES = {'onnxruntime': '.onnx', 'tensorrt': '.ep', 'tensorrt-onnx': '.plan'}
LOAD_ONLY = 'load_only'
BUILD_IF_MISSING = 'build_if_missing'
ENGINE_POLICIES = (LOAD_ONLY, BUILD_IF_MISSING)

StateCallback = Callable[[str, str], None]


class BackendError(RuntimeError):
    """The backend cannot be loaded; the message names the setting or file and what to change."""


@dataclass(frozen=True)
class BackendSpec:
    """What to load.

    Attributes:
        kind: one of `KINDS`.
        checkpoint: m2a safetensors checkpoint (weights and model config); required by every
            kind (engines are checked against its weights hash).
        engine_path: the engine file of an engine kind (its sidecar is `<engine_path>.json`).
        device: 'cpu', 'cuda' or 'cuda:<index>'.
        precision: 'fp32', 'fp16' or 'bf16' (autocast for torch kinds; the precision recipe
            of TensorRT engines; onnxruntime engines are fp32).
        engine_policy: 'load_only' or 'build_if_missing'.
        allow_gate_failed: accept an engine whose accuracy gate failed (explicit override).
        engine_size: (H, W) padded engine input when an engine has to be built, and the shape
            an existing engine must have; None takes the sidecar's, or for a build
            (short_side, 2 * short_side) of the model config, padded.
        engine_cache: instead of `engine_path`, a folder of engines named by their key (what
            `m2a-build-engine --engine-cache` writes): the engine whose key this checkpoint,
            precision, size, tool versions and GPU give is used (or built there).
    """

    kind: str = 'torch'
    checkpoint: str = ''
    engine_path: str = ''
    device: str = 'cpu'
    precision: str = 'fp32'
    engine_policy: str = LOAD_ONLY
    allow_gate_failed: bool = False
    engine_size: tuple[int, int] | None = None
    # Last, so that positional specs written before it existed keep their meaning.
    engine_cache: str = ''

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BackendError(f'backend kind must be one of {KINDS}, got {self.kind!r}')
        if self.precision not in PRECISIONS:
            raise BackendError(f'precision must be one of {PRECISIONS}, got {self.precision!r}')
        if self.engine_policy not in ENGINE_POLICIES:
            raise BackendError(
                f'engine policy must be one of {ENGINE_POLICIES}, got {self.engine_policy!r}'
            )

    @property
    def is_engine(self) -> bool:
        return self.kind in ENGINE_KINDS


@dataclass
class LoadedBackend:
    """A ready backend and what reports say about it.

    Attributes:
        backend: callable (B, 3, H, W) network input -> `NetworkOutput`; engines
            of one static shape are wrapped in `StaticShapeBackend` (smaller frames padded).
        config: the checkpoint's model config (pre-processing, classes).
        spec: what was loaded.
        sidecar: the engine's sidecar (engine kinds), else None.
        built: True when this call built the engine.
        engine_file: the engine file used (engine kinds), else ''.
    """

    backend: Backend
    config: ModelConfig
    spec: BackendSpec
    sidecar: dict[str, Any] | None = None
    built: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    engine_file: str = ''

    @property
    def name(self) -> str:
        return str(getattr(self.backend, 'name', self.spec.kind))

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for reports."""
        gate = (self.sidecar or {}).get('gate') or {}
        return {
            'kind': self.spec.kind,
            'name': self.name,
            'path': self.engine_file or self.spec.checkpoint,
            'checkpoint': self.spec.checkpoint,
            'engine': self.engine_file or None,
            'device': self.spec.device,
            'precision': self.spec.precision,
            'model_config': self.config.name,
            'num_classes': self.config.num_classes,
            'gate_passed': gate.get('passed') if gate else None,
            'built': self.built,
        }


def engine_kind(path: str | os.PathLike[str]) -> str:
    """The engine kind of an engine file from its suffix ('.onnx', '.ep', '.plan').

    Raises:
        ValueError: for any other suffix.
    """
    suffix = Path(path).suffix.lower()
    for kind, kind_suffix in ENGINE_SUFFIXES.items():
        if suffix == kind_suffix:
            return kind
    raise ValueError(
        f'cannot tell the backend of {Path(path).name!r} from its suffix; use an engine from '
        f'm2a-build-engine ({", ".join(sorted(ENGINE_SUFFIXES.values()))})'
    )


def resolve_device(name: str) -> torch.device:
    """`name` as a torch device that exists here, or BackendError."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise BackendError(f'model.device {name!r} is not a device name ({error})') from error
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise BackendError(f'model.device is {name} but CUDA is not available on this machine')
    if device.type == 'cuda' and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise BackendError(f'model.device is {name} but only {count} CUDA device(s) exist')
    return device


def load_backend(spec: BackendSpec, on_state: StateCallback | None = None) -> LoadedBackend:
    """Load `spec` (see the module docstring).

    Args:
        spec: what to load.
        on_state: engine progress `(state, detail)`: checking, loading, building, gating,
            saving, ready, failed (see `deploy.cache`).

    Raises:
        BackendError: one sentence naming the setting or file at fault.
    """
    if not spec.checkpoint:
        raise BackendError(
            'model.checkpoint is empty: set it to an m2a checkpoint (.safetensors); the node '
            'never runs random weights'
        )
    device = resolve_device(spec.device)
    try:
        if spec.kind in ('torch', 'torch-compile'):
            model, config = load_checkpoint(spec.checkpoint, device)
            return LoadedBackend(
                torch_backend(model, spec.kind, device, spec.precision), config, spec
            )
        return _load_engine(spec, device, on_state)
    except CheckpointError as error:
        raise BackendError(f'invalid checkpoint: {error}') from error
    except (OSError, ValueError) as error:
        raise BackendError(f'cannot load {spec.checkpoint}: {error}') from error


def torch_backend(
    model: torch.nn.Module, kind: str, device: torch.device, precision: str
) -> TorchBackend:
    """The eager (`torch`) or inductor-compiled (`torch-compile`) backend of an in-memory model.

    Raises:
        BackendError: a precision the device cannot run.
    """
    if precision != 'fp32' and device.type != 'cuda':
        raise BackendError(
            f'model.precision {precision} needs a CUDA model.device; use fp32 on cpu'
        )
    try:
        return TorchBackend(model, device, precision, compile=kind == 'torch-compile')
    except ValueError as error:
        raise BackendError(str(error)) from error


def _engine_size(spec: BackendSpec, config: ModelConfig) -> tuple[int, int]:

    if spec.engine_size is not None:
        return spec.engine_size
    short = config.preprocess.short_side or 512
    width = min(2 * short, config.preprocess.max_size)
    return padded_size(short, width, config.preprocess.size_divisibility)


def _load_engine(
    spec: BackendSpec, device: torch.device, on_state: StateCallback | None
) -> LoadedBackend:
    # Deployment code is imported here: torch-only consumers never pay for it, and TensorRT
    # itself is imported even later, inside the TensorRT backends.
    from m2a_perception.deploy.build import get_engine_kind, provision_from_checkpoint
    from m2a_perception.deploy.cache import EngineCacheError, EngineRejectedError
    from m2a_perception.deploy.gate import GateFailedError
    from m2a_perception.deploy.tensorrt_backend import BackendUnavailableError, EngineBuildError

    if not spec.engine_path and not spec.engine_cache:
        raise BackendError(f'model.backend is {spec.kind} but model.engine_path is empty')
    size: tuple[int, int] | None = spec.engine_size
    valid: tuple[int, int] | None = None
    overrides: dict[str, Any] = {}
    engine_path: Path | None = None
    if spec.engine_path:
        engine_path = Path(spec.engine_path)
        size, valid, overrides = _check_engine_file(spec, engine_path)
    config = read_checkpoint(spec.checkpoint).config
    where = str(engine_path) if engine_path else f'the {spec.kind} engine in {spec.engine_cache}'
    precision = 'fp32' if spec.kind == 'onnxruntime' else spec.precision
    try:
        get_engine_kind(spec.kind).check_available(device)
    except BackendUnavailableError as error:
        raise BackendError(f'model.backend {spec.kind} cannot run here: {error}') from error
    try:
        provisioned = provision_from_checkpoint(
            spec.checkpoint,
            backend=spec.kind,
            precision=precision,
            size=size or _engine_size(spec, config),
            valid_size=valid,
            device=device,
            cache_dir=engine_path.parent if engine_path else spec.engine_cache,
            policy=spec.engine_policy,
            on_state=on_state,
            engine_path=engine_path,
            builder_overrides=overrides or None,
            allow_gate_failure=spec.allow_gate_failed,
        )
    except EngineRejectedError as error:
        raise BackendError(
            f'{error}; set model.allow_gate_failed true to use it anyway'
        ) from error
    except GateFailedError as error:
        raise BackendError(
            f'the new engine failed its accuracy gate ({error}); set model.allow_gate_failed '
            'true to keep it anyway'
        ) from error
    except EngineCacheError as error:
        raise BackendError(f'engine {where} refused: {error}') from error
    except BackendUnavailableError as error:
        raise BackendError(f'model.backend {spec.kind} cannot run here: {error}') from error
    except EngineBuildError as error:
        raise BackendError(f'building {where} failed: {error}') from error
    gate = provisioned.sidecar.get('gate') or {}
    if not gate.get('passed') and not spec.allow_gate_failed:
        failures = '; '.join(gate.get('failures') or ['no gate result recorded'])
        raise BackendError(
            f'{provisioned.paths.engine.name} did not pass its accuracy gate ({failures}); set '
            'model.allow_gate_failed true to use it anyway'
        )
    backend = provisioned.backend
    shape = getattr(backend, 'input_shape', None)
    if shape is not None and len(shape) == 4:
        fill = mean_colour(config.preprocess.pixel_mean)
        backend = StaticShapeBackend(backend, tuple(int(v) for v in shape), fill)
    return LoadedBackend(
        backend,
        config,
        spec,
        provisioned.sidecar,
        provisioned.built,
        engine_file=str(provisioned.paths.engine),
    )


def _check_engine_file(
    spec: BackendSpec, engine_path: Path
) -> tuple[tuple[int, int] | None, tuple[int, int] | None, dict[str, Any]]:
    """Checks of a given engine file before provisioning: (size, valid size, builder overrides).

    The file must have the kind's suffix and, under load_only, exist with its sidecar; the
    sidecar's kind must be the spec's, and its shape is taken when the spec has none.
    """
    from m2a_perception.deploy.cache import (
        EngineCacheError,
        EnginePaths,
        read_sidecar,
        sidecar_key,
    )

    size = spec.engine_size
    paths = EnginePaths.for_engine(engine_path)
    if (
        not paths.sidecar.is_file()
        and not engine_path.is_file()
        and spec.engine_policy == LOAD_ONLY
    ):
        label = 'onnxruntime' if spec.kind == 'onnxruntime' else 'TensorRT'
        raise BackendError(
            f'{label} engine not found: {engine_path} (model.engine_policy is load_only); build '
            f'it with m2a-build-engine --backend {spec.kind} --checkpoint {spec.checkpoint}, or '
            'set model.engine_policy build_if_missing'
        )
    suffix = ENGINE_SUFFIXES[spec.kind]
    if engine_path.suffix != suffix:
        raise BackendError(
            f'model.engine_path {engine_path.name} is not a {spec.kind} engine (expected a '
            f'{suffix} file from m2a-build-engine --backend {spec.kind})'
        )
    valid: tuple[int, int] | None = None
    overrides: dict[str, Any] = {}
    if paths.sidecar.is_file():
        try:
            recorded = sidecar_key(read_sidecar(paths.sidecar), paths.sidecar)
        except EngineCacheError as error:
            raise BackendError(f'{paths.sidecar} is unusable: {error}') from error
        if recorded.backend != spec.kind:
            raise BackendError(
                f'{engine_path.name} is a {recorded.backend} engine but model.backend is '
                f'{spec.kind}'
            )
        if size is None:
            size = tuple(recorded.input_shape[2:])  # type: ignore[assignment]
            valid = tuple(recorded.valid_size)  # type: ignore[assignment]
        # A given ONNX file is not needed to use or check the engine: its recorded hash counts.
        overrides = {k: v for k, v in recorded.builder.items() if k.startswith('onnx_')}
    elif engine_path.is_file() and spec.engine_policy == LOAD_ONLY:
        raise BackendError(
            f'{paths.sidecar} not found: {engine_path} cannot be checked against the checkpoint '
            'and GPU, so it is not used; build it with m2a-build-engine'
        )
    return size, valid, overrides


def require_instance_head(loaded: LoadedBackend, postprocess: PostprocessConfig) -> None:
    """Refuse post-processing that needs the instance head (`mining_split: centroid_head`)
    when the loaded checkpoint's model has none; every consumer calls this before a frame.

    Raises:
        BackendError: one sentence naming the checkpoint and the fix.
    """
    try:
        check_instance_head(postprocess, loaded.config.instance_head.enabled)
    except ValueError as error:
        raise BackendError(f'{loaded.spec.checkpoint}: {error}') from None


def build_segmenter(
    spec: BackendSpec,
    postprocess: PostprocessConfig,
    on_state: StateCallback | None = None,
) -> tuple[Segmenter, ModelConfig]:
    """`load_backend` wrapped in the `Segmenter` every consumer runs.

    Raises:
        BackendError: see `load_backend`; or the post-processing needs the instance head
            (`mining_split: centroid_head`) and the checkpoint's model has none.
    """
    loaded = load_backend(spec, on_state)
    require_instance_head(loaded, postprocess)
    segmenter = Segmenter(loaded.backend, loaded.config.preprocess, postprocess)
    return segmenter, loaded.config


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


def spec_from_mapping(values: Mapping[str, Any]) -> BackendSpec:
    """A spec from 'model.*' parameter values (node parameters, replay YAML)."""
    size_text = str(values.get('model.engine_size', '') or '')
    return BackendSpec(
        kind=str(values.get('model.backend', 'torch')),
        checkpoint=os.fspath(values.get('model.checkpoint', '')),
        engine_path=os.fspath(values.get('model.engine_path', '')),
        device=str(values.get('model.device', 'cpu')),
        precision=str(values.get('model.precision', 'fp32')),
        engine_policy=str(values.get('model.engine_policy', LOAD_ONLY)),
        allow_gate_failed=bool(values.get('model.allow_gate_failed', False)),
        engine_size=parse_engine_size(size_text) if size_text else None,
    )


def parse_engine_size(text: str) -> tuple[int, int]:
    """'512x1024' -> (512, 1024); BackendError otherwise."""
    try:
        height, width = (int(part) for part in text.lower().split('x'))
    except ValueError:
        raise BackendError(f'model.engine_size must look like 512x1024, got {text!r}') from None
    if height <= 0 or width <= 0 or height % 32 or width % 32:
        raise BackendError(f'model.engine_size {text} must be positive multiples of 32')
    return height, width
