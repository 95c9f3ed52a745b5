"""TensorRT backends: torch-tensorrt (`tensorrt`) and TensorRT's ONNX parser (`tensorrt-onnx`).

Both compile the uint8 `InferenceGraph` (normalisation inside, precision written into the graph,
see `deploy.precision`) at one static input shape, and both build strongly typed, so the graph's
dtypes are what runs on torch-tensorrt 2.8 / TensorRT 10.3 (JetPack 6) and on 2.13 / TensorRT 11.
TensorRT and torch-tensorrt are imported only inside the functions below, catching `Exception`
(a broken TensorRT install raises more than ImportError; environment.md §6).

- `tensorrt`: strict `torch.export` of the graph on the GPU, `torch_tensorrt.dynamo.compile`,
  saved as an ExportedProgram (`.ep`) with `torch_tensorrt.save`; loading needs torch-tensorrt.
- `tensorrt-onnx`: the ONNX file (ours, or one written by `m2a-export`) is parsed by TensorRT's
  `OnnxParser` and built with the Python builder API into a plan (`.plan`), run through the
  TensorRT runtime on torch's current CUDA stream. No torch-tensorrt needed (the Orin route).

`GraphBackend` (CPU-capable) runs any uint8 graph module as a `Backend`; the engine backends
derive from it. Every backend here accepts either uint8 images (the graph's own input) or the
normalised float images the rest of the pipeline passes (converted back to uint8 exactly: they
came from uint8 frames).

Allowed dependencies: torch, numpy, the core; tensorrt and torch_tensorrt lazily.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from m2a_perception.deploy.cache import (
    EngineCorruptError,
    EnginePaths,
    atomic_write_file,
    read_sidecar,
    sidecar_key,
)
from m2a_perception.types import (
    InstanceNetworkOutput,
    NetworkOutput,
    instance_embedding_of,
    network_output,
)

LOGGER = logging.getLogger(__name__)

# Compile settings of the `tensorrt` backend. Precision is not here: it is in the graph, and the
# engine is strongly typed. Names not accepted by the installed torch-tensorrt are dropped and
# recorded (see `torch_tensorrt_compile_kwargs`).
TORCH_TENSORRT_SETTINGS: dict[str, Any] = {
    'use_explicit_typing': True,  # 2.8-2.12: strong typing; 2.13+: always on, parameter gone
    'disable_tf32': True,  # the FP32 islands must really be FP32
    'optimization_level': 3,
    'min_block_size': 5,
    'require_full_compilation': False,
    'truncate_double': True,
    'immutable_weights': True,
    'cache_built_engines': False,  # our cache, not torch-tensorrt's (no GPU/version in its key)
    'reuse_cached_engines': False,
    'attn_bias_is_causal': False,  # >= 2.11 default would make square attention biases causal
    'hardware_compatible': False,
    'version_compatible': False,
}
# Settings of the `tensorrt-onnx` backend.
ONNX_TENSORRT_SETTINGS: dict[str, Any] = {
    'strongly_typed': True,
    'disable_tf32': True,
    'optimization_level': 3,
    'workspace_bytes': 0,  # 0 = TensorRT's default (all device memory)
}


class BackendUnavailableError(RuntimeError):
    """TensorRT, torch-tensorrt or CUDA is missing; the message says what to install."""


class EngineBuildError(RuntimeError):
    """TensorRT could not build an engine; the message carries the builder's errors."""


# --- imports ----------------------------------------------------------------------------------


def _unavailable(name: str, purpose: str, error: Exception) -> BackendUnavailableError:
    return BackendUnavailableError(
        f'{purpose} needs the Python module {name!r}, which cannot be imported here '
        f'({type(error).__name__}: {error}). Install the torch / torch-tensorrt / TensorRT '
        'triple matching this machine (x86: pip install torch-tensorrt==<torch version>; '
        'Jetson Orin: JetPack 6.2 TensorRT plus torch-tensorrt 2.8 from the jetson-ai-lab '
        'index) - see docs/benchmarks/README.md.'
    )


def import_tensorrt() -> ModuleType:
    """`import tensorrt`, or BackendUnavailableError with an install hint."""
    try:
        import tensorrt
    except Exception as error:  # e.g. "Could not find libnvinfer.so.11" raises Exception
        raise _unavailable('tensorrt', 'the TensorRT backends', error) from error
    return tensorrt


def import_torch_tensorrt() -> ModuleType:
    """`import torch_tensorrt`, or BackendUnavailableError with an install hint."""
    try:
        import torch_tensorrt
    except Exception as error:  # a broken TensorRT install raises more than ImportError
        raise _unavailable(
            'torch_tensorrt', 'the tensorrt (torch-tensorrt) backend', error
        ) from error
    return torch_tensorrt


def require_cuda(device: torch.device | str) -> torch.device:
    """`device` as a CUDA device with an index, or BackendUnavailableError."""
    device = torch.device(device)
    if device.type != 'cuda':
        raise BackendUnavailableError(f'TensorRT engines run on CUDA devices, got {device}')
    if not torch.cuda.is_available():
        raise BackendUnavailableError('TensorRT engines need CUDA, which is not available here')
    if device.index is None:  # engines are bound to one GPU: make it explicit
        device = torch.device('cuda', torch.cuda.current_device())
    return device


def check_available(backend: str, device: torch.device | str) -> None:
    """Raise BackendUnavailableError unless `backend` can build and run here."""
    require_cuda(device)
    if backend == 'tensorrt':
        import_torch_tensorrt()
    import_tensorrt()


# --- input adaptation -------------------------------------------------------------------------


class GraphBackend:
    """A uint8 inference graph (eager `InferenceGraph`, exported or compiled module) as a backend.

    Args:
        module: callable (B, 3, H, W) uint8 -> `NetworkOutput` (or the same pair as a tuple: an
            exported program's module or a compiled module).
        device: where the module runs.
        input_shape: the static (B, 3, H, W) input shape.
        pixel_mean, pixel_std: the graph's normalisation, used to turn normalised float input
            back into uint8.
        name: backend name for reports.
    """

    input_dtype = torch.uint8

    def __init__(
        self,
        module: Any,
        device: torch.device | str,
        input_shape: tuple[int, int, int, int],
        pixel_mean: tuple[float, float, float],
        pixel_std: tuple[float, float, float],
        name: str = 'graph',
    ) -> None:
        self.module = module
        self.device = torch.device(device)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.name = name
        self._mean = torch.tensor(pixel_mean, dtype=torch.float32, device=self.device)
        self._std = torch.tensor(pixel_std, dtype=torch.float32, device=self.device)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images on the device, from uint8 or normalised float32 (B, 3, H, W) input."""
        if tuple(images.shape) != self.input_shape:
            raise ValueError(
                f'{self.name} was built for input {self.input_shape}, got {tuple(images.shape)}'
            )
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            return images.contiguous()
        # Exact for images produced by normalize_and_pad from uint8 frames; the padding (0 after
        # normalisation) becomes the mean colour, which the graph zeroes again when it knows the
        # valid size.
        restored = images.float() * self._std.view(1, 3, 1, 1) + self._mean.view(1, 3, 1, 1)
        return restored.round_().clamp_(0, 255).to(torch.uint8).contiguous()

    def run(self, images: torch.Tensor) -> NetworkOutput | InstanceNetworkOutput:
        return network_output(*self.module(images))

    def __call__(self, images: torch.Tensor) -> NetworkOutput | InstanceNetworkOutput:
        with torch.inference_mode():
            outputs = self.run(self.prepare(images))
        embedding = instance_embedding_of(outputs)
        if embedding is not None:
            return InstanceNetworkOutput(
                outputs.class_logits.float(), outputs.mask_logits.float(), embedding.float()
            )
        return NetworkOutput(outputs.class_logits.float(), outputs.mask_logits.float())


def _engine_metadata(
    engine_path: Path, sidecar: Mapping[str, Any] | None
) -> tuple[dict[str, Any], tuple[int, int, int, int], tuple[float, ...], tuple[float, ...]]:
    """Sidecar, input shape and normalisation of an engine file."""
    paths = EnginePaths.for_engine(engine_path)
    if sidecar is None:
        if not paths.sidecar.is_file():
            raise EngineCorruptError(
                f'{engine_path} has no sidecar {paths.sidecar.name}: its weights, shape and '
                'toolchain are unknown, so it is not used. Build engines with m2a-build-engine.'
            )
        sidecar = read_sidecar(paths.sidecar)
    key = sidecar_key(sidecar, paths.sidecar)
    mean, std = key.normalization[:3], key.normalization[3:]
    return dict(sidecar), key.input_shape, mean, std


# --- torch-tensorrt ---------------------------------------------------------------------------


def torch_tensorrt_compile_kwargs(
    compile_fn: Any, settings: Mapping[str, Any], version: str
) -> tuple[dict[str, Any], list[str]]:
    """Keep the settings `compile_fn` accepts; return them and the names dropped.

    `use_explicit_typing` may only be dropped by torch-tensorrt >= 2.13, where strong typing is
    the only mode; on an older release without it the build would be weakly typed (silently
    FP32 or mixed), so that raises.
    """
    parameters = inspect.signature(compile_fn).parameters
    accepted = {k: v for k, v in settings.items() if k in parameters}
    dropped = sorted(set(settings) - set(accepted))
    if 'use_explicit_typing' in dropped and _version_tuple(version) < (2, 13):
        raise BackendUnavailableError(
            f'torch-tensorrt {version} has no use_explicit_typing parameter; the precision '
            'recipe needs a strongly typed build (torch-tensorrt 2.8 or newer)'
        )
    return accepted, dropped


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split('+')[0].split('.')[:3]:
        digits = ''.join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def compile_torch_tensorrt(
    graph: torch.nn.Module,
    input_shape: tuple[int, int, int, int],
    engine_path: Path,
    device: torch.device | str,
    settings: Mapping[str, Any] | None = None,
    timing_cache: Path | None = None,
) -> dict[str, Any]:
    """Export `graph` strictly at `input_shape`, compile it with torch-tensorrt, save as `.ep`.

    Args:
        graph: the `InferenceGraph` (any device; moved to `device`).
        input_shape: static (B, 3, H, W) uint8 input shape.
        engine_path: file to write (the caller makes the write atomic).
        device: CUDA device to build on (the target GPU).
        settings: compile settings (default `TORCH_TENSORRT_SETTINGS`).
        timing_cache: TensorRT timing cache file for faster rebuilds on this GPU.

    Returns:
        Build information for the sidecar (settings used and dropped, partitioning, timings).
    """
    from m2a_perception.deploy.precision import (
        example_uint8_input,
        export_inference_graph,
        inspect_precision,
    )

    torch_tensorrt = import_torch_tensorrt()
    device = require_cuda(device)
    settings = dict(settings or TORCH_TENSORRT_SETTINGS)
    if timing_cache is not None:
        settings['timing_cache_path'] = str(timing_cache)
    version = str(getattr(torch_tensorrt, '__version__', '0'))
    kwargs, dropped = torch_tensorrt_compile_kwargs(
        torch_tensorrt.dynamo.compile, settings, version
    )
    graph = graph.to(device).eval()
    start = time.perf_counter()
    program = export_inference_graph(graph, input_shape)
    export_seconds = time.perf_counter() - start
    report = inspect_precision(program)
    if not report.ok:
        raise EngineBuildError(
            'the exported graph breaks the precision recipe: '
            + '; '.join(report.island_violations)
        )
    example = example_uint8_input(input_shape, device)
    LOGGER.info('torch-tensorrt %s compile with %s (dropped: %s)', version, kwargs, dropped)
    start = time.perf_counter()
    with torch.cuda.device(device):
        compiled = torch_tensorrt.dynamo.compile(
            program, arg_inputs=[example], device=device, **kwargs
        )
    compile_seconds = time.perf_counter() - start
    children = [name for name, _ in compiled.named_children()]
    trt_blocks = [n for n in children if n.startswith('_run_on_acc')]
    torch_blocks = [n for n in children if n.startswith('_run_on_gpu')]
    if torch_blocks:
        LOGGER.warning(
            '%d graph block(s) fall back to PyTorch (not converted to TensorRT): %s',
            len(torch_blocks),
            torch_blocks,
        )
    torch_tensorrt.save(
        compiled, str(engine_path), output_format='exported_program', arg_inputs=[example]
    )
    return {
        'frontend': 'torch_tensorrt.dynamo.compile',
        'torch_tensorrt_version': version,
        'compile_kwargs': {k: str(v) for k, v in kwargs.items()},
        'dropped_settings': dropped,
        'tensorrt_blocks': len(trt_blocks),
        'pytorch_fallback_blocks': torch_blocks,
        'precision_report': report.as_dict(),
        'export_seconds': export_seconds,
        'compile_seconds': compile_seconds,
    }


class TensorRTBackend(GraphBackend):
    """A torch-tensorrt compiled inference graph loaded from `.ep`.

    Args:
        engine_path: the `.ep` file written by `m2a-build-engine`.
        device: its CUDA device (the GPU it was built on).
        sidecar: the parsed sidecar; default: read `<engine_path>.json` (required).
    """

    def __init__(
        self,
        engine_path: str | os.PathLike[str],
        device: torch.device | str = 'cuda',
        *,
        sidecar: Mapping[str, Any] | None = None,
    ) -> None:
        engine_path = Path(engine_path)
        self.sidecar, shape, mean, std = _engine_metadata(engine_path, sidecar)
        device = require_cuda(device)
        torch_tensorrt = import_torch_tensorrt()
        try:
            with torch.cuda.device(device):
                program = torch_tensorrt.load(str(engine_path))
                module = program.module()
        except Exception as error:
            raise EngineCorruptError(
                f'{engine_path}: torch-tensorrt could not load it ({error})'
            ) from error
        super().__init__(module, device, shape, mean, std, name='tensorrt')  # type: ignore[arg-type]
        self.engine_path = engine_path


# --- TensorRT ONNX parser ---------------------------------------------------------------------


def build_onnx_engine(
    onnx_path: Path,
    engine_path: Path,
    settings: Mapping[str, Any] | None = None,
    timing_cache: Path | None = None,
) -> dict[str, Any]:
    """Parse an ONNX file with TensorRT's OnnxParser and build a serialized plan.

    Strongly typed by default: the dtypes in the ONNX graph (explicit FP16 casts of the FP16
    recipe, or all FP32 for an `m2a-export` file) are what runs. Equivalent trtexec command:
    `trtexec --onnx=F --saveEngine=E --stronglyTyped --builderOptimizationLevel=3 --noTF32`.

    Returns:
        Build information for the sidecar.

    Raises:
        EngineBuildError: with the parser's or builder's errors.
    """
    trt = import_tensorrt()
    settings = dict(settings or ONNX_TENSORRT_SETTINGS)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if settings.get('strongly_typed', True):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    start = time.perf_counter()
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(index)) for index in range(parser.num_errors)]
        raise EngineBuildError(f'TensorRT could not parse {onnx_path}: ' + ' | '.join(errors))
    parse_seconds = time.perf_counter() - start
    config = builder.create_builder_config()
    if settings.get('workspace_bytes'):
        config.set_memory_pool_limit(
            trt.MemoryPoolType.WORKSPACE, int(settings['workspace_bytes'])
        )
    config.builder_optimization_level = int(settings.get('optimization_level', 3))
    if settings.get('disable_tf32', True) and hasattr(trt.BuilderFlag, 'TF32'):
        config.clear_flag(trt.BuilderFlag.TF32)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b''
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f'TensorRT failed to build an engine from {onnx_path}; see its log')
    build_seconds = time.perf_counter() - start
    Path(engine_path).write_bytes(bytes(serialized))
    if timing_cache is not None:
        data = bytes(config.get_timing_cache().serialize())
        atomic_write_file(timing_cache, lambda tmp: tmp.write_bytes(data))
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    return {
        'frontend': 'tensorrt.OnnxParser',
        'tensorrt_version': str(trt.__version__),
        'settings': dict(settings),
        'network_layers': int(network.num_layers),
        'inputs': [f'{t.name}:{t.dtype}:{tuple(t.shape)}' for t in inputs],
        'parse_seconds': parse_seconds,
        'build_seconds': build_seconds,
    }


def _torch_dtype(trt: ModuleType, dtype: Any) -> torch.dtype:
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT8: torch.int8,
        trt.DataType.BOOL: torch.bool,
        trt.DataType.UINT8: torch.uint8,
    }
    for name, torch_dtype in (('INT64', torch.int64), ('BF16', torch.bfloat16)):
        if hasattr(trt.DataType, name):
            table[getattr(trt.DataType, name)] = torch_dtype
    if dtype not in table:
        raise EngineCorruptError(f'engine tensor dtype {dtype} is not supported here')
    return table[dtype]


class OnnxTensorRTBackend(GraphBackend):
    """A TensorRT plan built from ONNX, run through the TensorRT runtime on torch's stream.

    Handles both ONNX inputs: our uint8 inference graph and `m2a-export`'s normalised float32
    input (the input dtype is read from the engine).

    Args:
        engine_path: the `.plan` file written by `m2a-build-engine --backend tensorrt-onnx`.
        device: its CUDA device.
        sidecar: the parsed sidecar; default: read `<engine_path>.json` (required).
    """

    def __init__(
        self,
        engine_path: str | os.PathLike[str],
        device: torch.device | str = 'cuda',
        *,
        sidecar: Mapping[str, Any] | None = None,
    ) -> None:
        engine_path = Path(engine_path)
        self.sidecar, shape, mean, std = _engine_metadata(engine_path, sidecar)
        device = require_cuda(device)
        trt = import_tensorrt()
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(device):
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if self._engine is None:
                raise EngineCorruptError(
                    f'{engine_path}: TensorRT could not deserialize it (corrupt, or built by '
                    'another TensorRT version or GPU)'
                )
            self._context = self._engine.create_execution_context()
        inputs, outputs = [], {}
        for index in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(index)
            spec = (
                tuple(int(v) for v in self._engine.get_tensor_shape(name)),
                _torch_dtype(trt, self._engine.get_tensor_dtype(name)),
            )
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                inputs.append((name, spec))
            else:
                outputs[name] = spec
        # Two outputs, or three for a model with the instance head (`instance_embedding`).
        if len(inputs) != 1 or len(outputs) not in (2, 3):
            raise EngineCorruptError(
                f'{engine_path}: expected 1 input and 2 or 3 outputs, found {len(inputs)} and '
                f'{len(outputs)}'
            )
        self._input_name, (engine_shape, self.input_dtype) = inputs[0]
        if engine_shape != tuple(shape):
            raise EngineCorruptError(
                f'{engine_path}: engine input {engine_shape} differs from its sidecar {shape}'
            )
        names = list(outputs)
        expected = list(InstanceNetworkOutput._fields[: len(names)])
        if set(expected) == set(names):
            names = expected
        self._outputs = [(name, outputs[name]) for name in names]
        super().__init__(self._execute, device, shape, mean, std, name='tensorrt-onnx')  # type: ignore[arg-type]
        self.engine_path = engine_path
        self._valid_size = tuple(self.sidecar['key'].get('valid_size') or shape[2:])

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.input_dtype == torch.uint8:
            return super().prepare(images)
        # A float engine (m2a-export ONNX) takes normalised images.
        if tuple(images.shape) != self.input_shape:
            raise ValueError(
                f'{self.name} was built for input {self.input_shape}, got {tuple(images.shape)}'
            )
        images = images.to(self.device, non_blocking=True)
        if images.dtype != torch.uint8:
            return images.to(self.input_dtype).contiguous()
        normalized = (images.float() - self._mean.view(1, 3, 1, 1)) / self._std.view(1, 3, 1, 1)
        height, width = self.input_shape[2:]
        valid_h, valid_w = self._valid_size
        if (valid_h, valid_w) != (height, width):
            normalized = F.pad(
                normalized[..., :valid_h, :valid_w], (0, width - valid_w, 0, height - valid_h)
            )
        return normalized.to(self.input_dtype).contiguous()

    def _execute(self, images: torch.Tensor) -> NetworkOutput | InstanceNetworkOutput:
        results = []
        with torch.cuda.device(self.device):
            self._context.set_tensor_address(self._input_name, images.data_ptr())
            for name, (shape, dtype) in self._outputs:
                tensor = torch.empty(shape, dtype=dtype, device=self.device)
                self._context.set_tensor_address(name, tensor.data_ptr())
                results.append(tensor)
            stream = torch.cuda.current_stream(self.device)
            if not self._context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f'TensorRT execution of {self.engine_path} failed')
        return network_output(*results)


def onnx_has_low_precision(path: Path) -> bool:
    """Whether an ONNX file computes in FP16/BF16 anywhere (explicit casts or initialisers)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    low = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    if any(init.data_type in low for init in model.graph.initializer):
        return True
    for node in model.graph.node:
        if node.op_type == 'Cast':
            for attribute in node.attribute:
                if attribute.name == 'to' and attribute.i in low:
                    return True
    return False


def describe_timing(seconds: float) -> str:
    """'2 min 05 s' style durations for progress messages."""
    if seconds < 60:
        return f'{seconds:.1f} s'
    return f'{math.floor(seconds / 60)} min {int(seconds % 60):02d} s'
