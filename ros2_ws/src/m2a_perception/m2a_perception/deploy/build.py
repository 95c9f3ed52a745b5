"""Engine provisioning: a gated, cached engine from a model, or a prebuilt one checked first.

`provision_engine` computes the cache key, reuses a valid cached engine or builds one
(torch-tensorrt, TensorRT's ONNX parser, or the onnxruntime reference route), runs the accuracy
gate against eager FP32, and saves the engine with its JSON sidecar. `open_prebuilt_engine`
uses an engine file only if its sidecar records exactly the key recomputed here for the given
checkpoint and machine. The command line is `m2a_perception.cli.build_engine` (m2a-build-engine);
the runtime loader (`m2a_perception.runtime.loader`) calls these functions for every engine file.

Engine kinds:
    tensorrt       torch-tensorrt dynamo compile of the uint8 inference graph (.ep)
    tensorrt-onnx  TensorRT OnnxParser + builder (.plan); the Orin route (no torch-tensorrt)
    onnxruntime    CPU reference route (FP32 ONNX in onnxruntime): exercises the cache, the
                   sidecar and the gate on machines without a GPU (CI)

Allowed dependencies: torch, numpy, Pillow, the core, `deploy`; TensorRT lazily. Never `cli`.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from m2a_perception.config import ModelConfig
from m2a_perception.deploy.cache import (
    BUILD_IF_MISSING,
    EngineCache,
    EngineCacheError,
    EngineKey,
    EnginePaths,
    StateCallback,
    make_engine_key,
    probe_toolchain,
    read_sidecar,
    sha256_file,
    sidecar_key,
)
from m2a_perception.deploy.gate import (
    GateResult,
    GateThresholds,
    run_gate,
    synthetic_gate_images,
)
from m2a_perception.deploy.precision import (
    RECIPES,
    PrecisionRecipe,
    build_inference_graph,
    export_graph_onnx,
    get_recipe,
)
from m2a_perception.deploy.tensorrt_backend import (
    ONNX_TENSORRT_SETTINGS,
    TORCH_TENSORRT_SETTINGS,
    BackendUnavailableError,
    OnnxTensorRTBackend,
    TensorRTBackend,
    build_onnx_engine,
    check_available,
    compile_torch_tensorrt,
    onnx_has_low_precision,
)
from m2a_perception.inference import TorchBackend
from m2a_perception.model import SIZE_DIVISIBILITY, Mask2Anomaly
from m2a_perception.weights.checkpoint import load_checkpoint

LOGGER = logging.getLogger(__name__)

DEFAULT_GATE_IMAGES = 8
CACHE_ENV = 'M2A_ENGINE_CACHE'


def default_cache_dir() -> Path:
    """`$M2A_ENGINE_CACHE`, else `~/.cache/m2a/engines`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / '.cache' / 'm2a' / 'engines')


@dataclass(frozen=True)
class BuildRequest:
    """Everything an engine kind needs to build one engine.

    Attributes:
        model: the eval-mode FP32 network (on `device`).
        config: its model config (normalisation, name).
        recipe: the precision recipe.
        input_shape: static (1, 3, H, W) engine input.
        valid_size: (h, w) of the image inside the padded input.
        device: the build / target device.
        work_dir: folder for timing caches and intermediate ONNX files.
        onnx_path: a given ONNX file (tensorrt-onnx), else None (exported from the model).
    """

    model: Mask2Anomaly
    config: ModelConfig
    recipe: PrecisionRecipe
    input_shape: tuple[int, int, int, int]
    valid_size: tuple[int, int]
    device: torch.device
    work_dir: Path
    onnx_path: Path | None = None

    def graph(self, device: torch.device | None = None) -> torch.nn.Module:
        model = self.model if device is None else copy.deepcopy(self.model).to(device)
        return build_inference_graph(
            model,
            self.recipe,
            self.config.preprocess.pixel_mean,
            self.config.preprocess.pixel_std,
            self.valid_size,
        )


class EngineKind:
    """One way of building and loading engines (see the module docstring)."""

    name = ''
    suffix = ''
    input_dtype = 'uint8'
    precisions: tuple[str, ...] = tuple(RECIPES)

    def check_available(self, device: torch.device) -> None:
        check_available(self.name, device)

    def settings(self, request: BuildRequest) -> dict[str, Any]:
        raise NotImplementedError

    def build(self, request: BuildRequest, engine_path: Path) -> dict[str, Any]:
        raise NotImplementedError

    def load(
        self, engine_path: Path, device: torch.device, sidecar: Mapping[str, Any] | None
    ) -> Any:
        raise NotImplementedError


class TorchTensorRTKind(EngineKind):
    name = 'tensorrt'
    suffix = '.ep'

    def settings(self, request: BuildRequest) -> dict[str, Any]:
        return {'frontend': 'torch_tensorrt.dynamo', **TORCH_TENSORRT_SETTINGS}

    def build(self, request: BuildRequest, engine_path: Path) -> dict[str, Any]:
        settings = dict(TORCH_TENSORRT_SETTINGS)
        timing = request.work_dir / f'timing-{_device_tag(request.device)}.cache'
        return compile_torch_tensorrt(
            request.graph(), request.input_shape, engine_path, request.device, settings, timing
        )

    def load(
        self, engine_path: Path, device: torch.device, sidecar: Mapping[str, Any] | None
    ) -> Any:
        return TensorRTBackend(engine_path, device, sidecar=sidecar)


class OnnxTensorRTKind(EngineKind):
    name = 'tensorrt-onnx'
    suffix = '.plan'

    def settings(self, request: BuildRequest) -> dict[str, Any]:
        settings: dict[str, Any] = {'frontend': 'tensorrt.OnnxParser', **ONNX_TENSORRT_SETTINGS}
        if request.onnx_path is not None:
            settings['onnx_sha256'] = sha256_file(request.onnx_path)
            settings['onnx_source'] = 'given'
        else:
            settings['onnx_source'] = 'inference_graph'
        return settings

    def build(self, request: BuildRequest, engine_path: Path) -> dict[str, Any]:
        onnx_path = request.onnx_path
        info: dict[str, Any] = {}
        if onnx_path is None:
            onnx_path = request.work_dir / (engine_path.stem + '.onnx')
            start = time.perf_counter()
            export_graph_onnx(request.graph(torch.device('cpu')), onnx_path, request.input_shape)
            info['onnx_export_seconds'] = time.perf_counter() - start
            info['onnx_file'] = str(onnx_path)
        timing = request.work_dir / f'timing-{_device_tag(request.device)}.cache'
        with torch.cuda.device(request.device):
            info.update(build_onnx_engine(onnx_path, engine_path, ONNX_TENSORRT_SETTINGS, timing))
        return info

    def load(
        self, engine_path: Path, device: torch.device, sidecar: Mapping[str, Any] | None
    ) -> Any:
        return OnnxTensorRTBackend(engine_path, device, sidecar=sidecar)


class OnnxRuntimeKind(EngineKind):
    """FP32 ONNX (the `m2a-export` graph, normalised float input) run by onnxruntime on CPU."""

    name = 'onnxruntime'
    suffix = '.onnx'
    input_dtype = 'float32'
    precisions = ('fp32',)

    def check_available(self, device: torch.device) -> None:
        try:
            import onnxruntime  # noqa: F401
        except Exception as error:
            raise BackendUnavailableError(f'onnxruntime cannot be imported ({error})') from error

    def settings(self, request: BuildRequest) -> dict[str, Any]:
        from m2a_perception.export import DEFAULT_OPSET

        return {'frontend': 'torch.onnx.export(dynamo)', 'opset': DEFAULT_OPSET}

    def build(self, request: BuildRequest, engine_path: Path) -> dict[str, Any]:
        from m2a_perception.export import export_onnx

        model = copy.deepcopy(request.model).cpu()
        export_onnx(model, engine_path, request.input_shape[2:], request.input_shape[0])
        return {'frontend': 'torch.onnx.export(dynamo)'}

    def load(
        self, engine_path: Path, device: torch.device, sidecar: Mapping[str, Any] | None
    ) -> Any:
        from m2a_perception.inference.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(engine_path)


ENGINE_KINDS: dict[str, EngineKind] = {
    kind.name: kind for kind in (TorchTensorRTKind(), OnnxTensorRTKind(), OnnxRuntimeKind())
}


def get_engine_kind(name: str) -> EngineKind:
    if name not in ENGINE_KINDS:
        raise ValueError(f'unknown engine backend {name!r}; choose from {sorted(ENGINE_KINDS)}')
    return ENGINE_KINDS[name]


def _device_tag(device: torch.device) -> str:
    toolchain = probe_toolchain(device)
    return f'{toolchain.compute_capability}-trt{toolchain.tensorrt.split()[0]}'


@dataclass
class Provisioned:
    """A ready engine.

    Attributes:
        backend: the loaded engine backend (callable like every `Backend`).
        key: its cache key.
        paths: engine and sidecar files.
        sidecar: sidecar contents (gate result under 'gate').
        built: True if this call built it, False if it was loaded from the cache.
        seconds: wall time of the provisioning.
    """

    backend: Any
    key: EngineKey
    paths: EnginePaths
    sidecar: dict[str, Any]
    built: bool
    seconds: float

    @property
    def gate(self) -> GateResult:
        return GateResult.from_dict(self.sidecar['gate'])


def engine_key_for(
    kind: EngineKind, request: BuildRequest, weights_sha256: str, builder: Mapping[str, Any]
) -> EngineKey:
    preprocess = request.config.preprocess
    return make_engine_key(
        backend=kind.name,
        model_name=request.config.name,
        weights_sha256=weights_sha256,
        input_shape=request.input_shape,
        input_dtype=kind.input_dtype,
        valid_size=request.valid_size,
        pixel_mean=preprocess.pixel_mean,
        pixel_std=preprocess.pixel_std,
        precision=request.recipe.id,
        # The weights hash covers a checkpoint's config, but an in-memory model (m2a-bench,
        # random weights) can differ from another only in its deformable sampler.
        builder={**builder, 'model_deform_sampling': request.config.pixel_decoder.deform_sampling},
        toolchain=probe_toolchain(request.device),
    )


def provision_engine(
    model: Mask2Anomaly,
    config: ModelConfig,
    *,
    weights_sha256: str,
    backend: str = 'tensorrt',
    precision: str = 'fp16',
    size: tuple[int, int] = (512, 1024),
    valid_size: tuple[int, int] | None = None,
    device: torch.device | str = 'cuda',
    cache_dir: str | os.PathLike[str] | None = None,
    policy: str = BUILD_IF_MISSING,
    onnx_path: str | os.PathLike[str] | None = None,
    gate_images: torch.Tensor | None = None,
    gate_labels: torch.Tensor | None = None,
    gate_thresholds: GateThresholds | None = None,
    allow_gate_failure: bool = False,
    on_state: StateCallback | None = None,
    engine_path: str | os.PathLike[str] | None = None,
    builder_overrides: Mapping[str, Any] | None = None,
) -> Provisioned:
    """Return a gated engine for `model` at `size`, from the cache or freshly built.

    Args:
        model: the eval-mode FP32 network; moved to `device` when an engine is built (it is
            also the gate's eager FP32 reference).
        config: its model config.
        weights_sha256: `sha256_file(checkpoint)` (or `sha256_state_dict` without a file).
        backend: 'tensorrt', 'tensorrt-onnx' or 'onnxruntime'.
        precision: 'fp16' or 'fp32'.
        size: static padded input size (H, W), multiples of 32.
        valid_size: (h, w) of the image inside the padding (default: `size`).
        device: the target device (a CUDA device for TensorRT).
        cache_dir: engine cache folder (default `default_cache_dir()`).
        policy: 'load_only', 'build_if_missing' or 'force_rebuild'.
        onnx_path: for 'tensorrt-onnx', an ONNX file to build from (e.g. from `m2a-export`);
            default: export the precision graph.
        gate_images: (N, 3, H, W) uint8 gate inputs (default: the fixed synthetic set).
        gate_labels: (N, h, w) anomaly labels for the AuPRC criterion (optional).
        gate_thresholds: gate criteria (default `GateThresholds()`).
        allow_gate_failure: keep an engine that fails the gate (recorded as overridden).
        on_state: progress callback `(state, detail)`: checking, loading, building, gating,
            saving, ready, failed.
        engine_path: a fixed engine file (its sidecar next to it) instead of a keyed name.
        builder_overrides: builder-setting fields to take as given (a prebuilt engine's ONNX
            hash); an engine that would need them cannot be rebuilt here.

    Raises:
        BackendUnavailableError: TensorRT / CUDA missing.
        EngineCacheError: `load_only` without a valid engine.
        GateFailedError: a new engine failed the gate without override.
        ValueError: bad sizes or unsupported backend/precision combinations.
    """
    kind = get_engine_kind(backend)
    recipe = get_recipe(precision)
    if recipe.name not in kind.precisions:
        raise ValueError(
            f'backend {backend} supports precisions {kind.precisions}, not {precision}'
        )
    device = torch.device(device)
    height, width = size
    if height % SIZE_DIVISIBILITY or width % SIZE_DIVISIBILITY:
        raise ValueError(f'engine size {height}x{width} must be a multiple of {SIZE_DIVISIBILITY}')
    valid = tuple(valid_size) if valid_size is not None else (height, width)
    if valid[0] > height or valid[1] > width:
        raise ValueError(f'valid size {valid} exceeds the engine size {size}')
    onnx_file = Path(onnx_path) if onnx_path is not None else None
    if onnx_file is not None:
        if kind.name != 'tensorrt-onnx':
            raise ValueError('--onnx applies to the tensorrt-onnx backend only')
        _check_onnx_precision(onnx_file, recipe)
    kind.check_available(device)
    if device.type == 'cuda' and device.index is None:  # engines are bound to one GPU
        device = torch.device('cuda', torch.cuda.current_device())
    cache = EngineCache(cache_dir or default_cache_dir(), on_state)
    # The model moves to the device only when an engine is built and gated: loading a cached
    # engine needs neither.
    request = BuildRequest(
        model=model.eval(),
        config=config,
        recipe=recipe,
        input_shape=(1, 3, height, width),
        valid_size=valid,  # type: ignore[arg-type]
        device=device,
        work_dir=cache.directory,
        onnx_path=onnx_file,
    )
    settings = kind.settings(request)
    rebuildable = True
    if builder_overrides:
        settings.update(builder_overrides)
        rebuildable = builder_overrides.get('onnx_source') != 'given' or onnx_file is not None
    key = engine_key_for(kind, request, weights_sha256, settings)

    def build(path: Path) -> dict[str, Any]:
        if not rebuildable:
            raise EngineCacheError(
                'this engine was built from a given ONNX file, which is needed to rebuild it: '
                'run m2a-build-engine --backend tensorrt-onnx --onnx FILE'
            )
        model.to(device)
        return kind.build(request, path)

    images = gate_images if gate_images is not None else synthetic_gate_images(size)
    if tuple(images.shape[-2:]) != (height, width) or images.dtype != torch.uint8:
        raise ValueError(
            f'gate images must be uint8 (N, 3, {height}, {width}), got {tuple(images.shape)} '
            f'{images.dtype}'
        )
    preprocess = config.preprocess

    def gate(candidate: Any) -> GateResult:
        return run_gate(
            TorchBackend(model, device, 'fp32'),
            candidate,
            images,
            preprocess.pixel_mean,
            preprocess.pixel_std,
            valid_size=valid,  # type: ignore[arg-type]
            labels=gate_labels,
            thresholds=gate_thresholds,
        )

    paths = EnginePaths.for_engine(engine_path) if engine_path is not None else None
    resolved = cache.resolve(
        key,
        policy,
        suffix=kind.suffix,
        build=build,
        load=lambda path: kind.load(path, device, None),
        gate=gate,
        allow_gate_failure=allow_gate_failure,
        paths=paths,
        build_hint=(
            f'Provision this machine offline: m2a-build-engine --backend {kind.name} '
            f'--precision {recipe.name} --size {height}x{width} --engine-cache {cache.directory}'
        ),
    )
    return Provisioned(
        resolved.engine, key, resolved.paths, resolved.sidecar, resolved.built, resolved.seconds
    )


def provision_from_checkpoint(checkpoint: str | os.PathLike[str], **kwargs: Any) -> Provisioned:
    """`provision_engine` for a checkpoint file (weights hashed from the file)."""
    device = kwargs.get('device', 'cuda')
    model, config = load_checkpoint(checkpoint, 'cpu')
    return provision_engine(
        model.to(device), config, weights_sha256=sha256_file(checkpoint), **kwargs
    )


def open_prebuilt_engine(
    engine_path: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    *,
    device: torch.device | str = 'cuda',
    policy: str = 'load_only',
    on_state: StateCallback | None = None,
    allow_gate_failure: bool = False,
) -> Provisioned:
    """Use the engine at `engine_path` only if it was built for this checkpoint and machine.

    The shape, backend and precision come from its sidecar; the weights hash, code version,
    builder settings, tool versions and GPU are recomputed here, so an engine built for other
    weights or another GPU is never used. With `build_if_missing`/`force_rebuild` a stale or
    corrupt engine is rebuilt in place.
    """
    paths = EnginePaths.for_engine(engine_path)
    if not paths.sidecar.is_file():
        if policy == 'load_only':
            raise EngineCacheError(
                f'{paths.sidecar} not found: {engine_path} cannot be checked against the '
                'checkpoint and GPU, so it is not used; build it with m2a-build-engine'
            )
        raise EngineCacheError(
            f'{paths.sidecar} not found: the engine shape and backend are unknown; build it with '
            'm2a-build-engine'
        )
    recorded = sidecar_key(read_sidecar(paths.sidecar), paths.sidecar)
    recipe = next((r for r in RECIPES.values() if recorded.precision.startswith(r.name)), None)
    if recipe is None:
        raise EngineCacheError(f'{engine_path}: unknown precision {recorded.precision!r}')
    # A given ONNX file is not needed to use or check the engine: trust its recorded hash.
    overrides = {k: v for k, v in recorded.builder.items() if k.startswith('onnx_')}
    return provision_from_checkpoint(
        checkpoint,
        backend=recorded.backend,
        precision=recipe.name,
        size=tuple(recorded.input_shape[2:]),
        valid_size=tuple(recorded.valid_size),
        device=device,
        cache_dir=paths.engine.parent,
        policy=policy,
        on_state=on_state,
        engine_path=paths.engine,
        builder_overrides=overrides,
        allow_gate_failure=allow_gate_failure,
    )


def _check_onnx_precision(path: Path, recipe: PrecisionRecipe) -> None:
    if not path.is_file():
        raise ValueError(f'ONNX file not found: {path}')
    if recipe.compute_dtype != torch.float32 and not onnx_has_low_precision(path):
        raise ValueError(
            f'{path} computes entirely in FP32 (e.g. an m2a-export file); a strongly typed '
            'TensorRT build keeps it FP32. Use --precision fp32 with it, or omit --onnx so that '
            'the FP16 precision graph is exported and built.'
        )
