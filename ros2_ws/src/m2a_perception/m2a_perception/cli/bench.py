"""m2a-bench: per-stage latency, throughput and memory of Mask2Anomaly backends, in one run.

For every input size and camera count, each backend processes rounds of N frames (N cameras
sharing one model: N frames per round, one after the other at batch 1). A frame goes through four
timed stages:

    h2d_pre  host uint8 frame -> network input on the device: the node's pre-processing
             (frames are generated at the model size, so the resize is an identity);
    model    the backend call;
    post     open-set post-processing (all outputs on, flip off) on the device;
    d2h      copy of the published maps (anomaly, semantic, panoptic) to the host.

Each frame is one call of `runtime.frame.process_frame`, the function the node calls per frame,
so the figures are the node's core stages (its own conversion and publishing overhead is
`m2a-node-bench`).

Backends are timed round-robin (one round of each per iteration), so machine noise hits all of
them alike and ratios from the same run are comparable. Stage times use CUDA events on GPUs and
`perf_counter` on the CPU. Reported per backend: p50/p99 per stage and end to end, throughput
(frames/s over the timed rounds), peak GPU memory (torch allocator peak, and device memory in use;
TensorRT's own activation memory only shows in the latter) and speedups against eager FP32
(`torch`) from the same run. The `postprocess` row repeats the first backend's post stage, with
its ratio against that backend's model time.

Backends: torch (eager FP32), torch-fp16 (CUDA autocast), torch-compile (inductor), torch-
compile-fp16, onnxruntime (the FP32 onnxruntime engine of m2a-build-engine), tensorrt (torch-
tensorrt FP16 engine), tensorrt-fp32, tensorrt-onnx (TensorRT ONNX-parser FP16 engine),
tensorrt-onnx-fp32. Every backend is loaded exactly as the node loads it: a `BackendSpec`
through `runtime.loader.load_backend`, engines opened through their sidecar (engine policy
build_if_missing: built and gated on first use, then reused while the sidecar's key matches).
Engines are named by their key in the engine cache (--engine-cache, else the m2a-build-engine
default), so engines that m2a-build-engine provisioned for the same checkpoint are reused; the
key holds the checkpoint's sha256 and the sampler, so every sampler has its own engine in the
same folder. onnxruntime engines go to a temporary folder unless --engine-cache is given.
Backends that cannot run here (no CUDA, no TensorRT) are listed with the reason and skipped.

Without --checkpoint the model has random weights (seeded, torch seed 0): they are written to a
temporary checkpoint (the node's safetensors format, byte-for-byte reproducible, so its engines
are reused from one run to the next) and loaded from there. Fine for timing, meaningless for
outputs: engines are then kept even if they fail the accuracy gate.

--deform-sampling grid_sample,gather benches every backend with both MSDeformAttn samplers in
one run (`pixel_decoder.deform_sampling`; same values, Gather instead of GridSample) and prints
the gather / grid_sample model-stage p50 ratio per backend. Each sampler has its own
checkpoint (--checkpoint itself for its own sampler, else a temporary copy with the sampler
switched). TensorRT graphs are always exported with gather, so their grid_sample rows are listed
as unavailable; onnxruntime exports the model with each sampler.

Examples:
    m2a-bench --backend torch,torch-fp16,tensorrt --size 512x1024,1024x2048 --num-cameras 1,4 \\
        --json docs/benchmarks/h100.json
    m2a-bench --backend torch,onnxruntime --deform-sampling grid_sample,gather --device cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2a_perception.cli import args as cli_args
from m2a_perception.config import (
    DEFORM_SAMPLINGS,
    GRID_SAMPLE,
    ModelConfig,
    PreprocessConfig,
    check_deform_sampling,
    load_model_config,
)
from m2a_perception.inference import Backend
from m2a_perception.logs import setup_logging
from m2a_perception.model import build_model
from m2a_perception.model.cost import format_model_cost, model_cost
from m2a_perception.pipeline import Segmenter
from m2a_perception.postprocess import PostprocessConfig
from m2a_perception.runtime.frame import StageTimes, process_frame
from m2a_perception.runtime.loader import (
    BUILD_IF_MISSING,
    BackendError,
    BackendSpec,
    LoadedBackend,
    load_backend,
)
from m2a_perception.weights.checkpoint import CheckpointError, read_checkpoint, save_checkpoint

LOGGER = logging.getLogger(__name__)

REFERENCE = 'torch'
# Engine backends: bench name -> (engine kind, precision).
# The runtime loader's torch kinds: bench name -> (kind, precision).
TORCH_BACKENDS = {
    'torch': ('torch', 'fp32'),
    'torch-fp16': ('torch', 'fp16'),
    'torch-compile': ('torch-compile', 'fp32'),
    'torch-compile-fp16': ('torch-compile', 'fp16'),
}
ENGINE_BACKENDS = {
    'onnxruntime': ('onnxruntime', 'fp32'),
    'tensorrt': ('tensorrt', 'fp16'),
    'tensorrt-fp32': ('tensorrt', 'fp32'),
    'tensorrt-onnx': ('tensorrt-onnx', 'fp16'),
    'tensorrt-onnx-fp32': ('tensorrt-onnx', 'fp32'),
}
BACKENDS = (*TORCH_BACKENDS, *ENGINE_BACKENDS)
STAGES = ('h2d_pre', 'model', 'post', 'd2h')  # StageTimes: preprocess, model, postprocess, handoff


def build_parser() -> argparse.ArgumentParser:
    parser = cli_args.new_parser('m2a-bench', __doc__)
    cli_args.add_backend(
        parser,
        choices=None,
        several=True,
        default=['torch'],
        help=f'comma-separated backends from {", ".join(BACKENDS)}; speedups are against '
        f'{REFERENCE} (added if missing), legacy ratios against the first',
    )
    cli_args.add_size(
        parser,
        several=True,
        default=[(512, 1024)],
        help='comma-separated input sizes HxW (multiples of 32)',
    )
    cli_args.add_num_cameras(
        parser,
        several=True,
        default=[1],
        help='comma-separated camera counts; N cameras share one model (N frames per round)',
    )
    cli_args.add_checkpoint(parser, help='m2a checkpoint (default: random weights)')
    cli_args.add_model_config(
        parser, default='cityscapes_r50_gma', help='model config when no checkpoint is given'
    )
    cli_args.add_device(parser)
    parser.add_argument(
        '--no-postprocess', action='store_true', help='do not run the post-processing stage'
    )
    parser.add_argument(
        '--anomaly-threshold',
        type=float,
        default=0.5,
        help='threshold for the open-set outputs of the post-processing stage',
    )
    cli_args.add_engine_cache(
        parser,
        help='engine cache folder for the engine backends (default: m2a-build-engine default)',
    )
    cli_args.add_deform_sampling(
        parser,
        choices=DEFORM_SAMPLINGS,
        several=True,
        default=None,
        help='comma-separated MSDeformAttn samplers (grid_sample,gather) to bench in one run; '
        'the ratio is the model-stage p50 of the second over the first per backend (default: '
        "the model config's sampler)",
    )
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds per backend')
    parser.add_argument('--iters', type=int, default=10, help='timed rounds per backend')
    cli_args.add_json(parser, help='also write the results as JSON here')
    cli_args.add_verbose(parser)
    return parser


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 / mean of latency samples in milliseconds (linear interpolation)."""
    values = np.asarray(samples_ms, dtype=np.float64)
    return {
        'p50_ms': float(np.percentile(values, 50)),
        'p90_ms': float(np.percentile(values, 90)),
        'p99_ms': float(np.percentile(values, 99)),
        'mean_ms': float(statistics.fmean(values)),
        'n': len(samples_ms),
    }


class BackendSkippedError(Exception):
    """A requested backend cannot run on this machine; the message says why."""


@dataclass(frozen=True)
class BenchModel:
    """The checkpoint every backend of one sampler is loaded from.

    Attributes:
        checkpoint: an m2a safetensors checkpoint (--checkpoint, or one written by the bench).
        config: its model config.
        weights_sha256: sha256 of the file (names its engine files; engine keys record it).
        random_weights: the seeded random model (engines are kept even if the gate fails).
        temporary: written by the bench into its temporary folder.
    """

    checkpoint: Path
    config: ModelConfig
    weights_sha256: str
    random_weights: bool
    temporary: bool

    def describe(self) -> dict[str, Any]:
        return {
            'checkpoint': str(self.checkpoint),
            'sha256': self.weights_sha256,
            'deform_sampling': self.config.pixel_decoder.deform_sampling,
            'random_weights': self.random_weights,
            'temporary': self.temporary,
        }


@dataclass(frozen=True)
class BenchContext:
    model: BenchModel
    device: torch.device
    workdir: Path
    engine_cache: Path | None


def with_deform_sampling(config: ModelConfig, sampler: str) -> ModelConfig:
    """`config` with the MSDeformAttn sampler `sampler` (same weights, same values)."""
    decoder = dataclasses.replace(config.pixel_decoder, deform_sampling=sampler)
    return dataclasses.replace(config, pixel_decoder=decoder)


def bench_checkpoint(args: argparse.Namespace, sampler: str | None, folder: Path) -> BenchModel:
    """The checkpoint to bench for `sampler` (None: the model config's own).

    --checkpoint is used as it is when its sampler is the one asked for; otherwise its tensors
    and metadata are written again with the sampler switched. Without --checkpoint the seeded
    random model of --model-config is written (the same bytes on every run). Written files go
    to `folder`.

    Raises:
        CheckpointError: --checkpoint is not a usable m2a checkpoint.
    """
    from m2a_perception.deploy.cache import sha256_file

    if args.checkpoint:
        contents = read_checkpoint(args.checkpoint)
        config = contents.config
        if sampler in (None, config.pixel_decoder.deform_sampling):
            path = Path(args.checkpoint)
            return BenchModel(path, config, sha256_file(path), False, False)
        state_dict = contents.state_dict
        metadata = {**contents.metadata, 'm2a_bench_source': str(args.checkpoint)}
        random_weights = False
    else:
        config = load_model_config(args.model_config)
        # Seeded on the CPU: the same weights on every run and device, for every sampler.
        torch.manual_seed(0)
        state_dict = build_model(config).state_dict()
        metadata = {'m2a_bench': 'random weights (torch seed 0), for timing only'}
        random_weights = True
    if sampler is not None:
        config = with_deform_sampling(config, sampler)
    path = save_checkpoint(
        folder / f'{config.name}-{config.pixel_decoder.deform_sampling}.safetensors',
        state_dict,
        config,
        extra_metadata=metadata,
    )
    return BenchModel(path, config, sha256_file(path), random_weights, True)


def engine_folder(kind: str, context: BenchContext) -> Path:
    """The engine cache folder the bench's `kind` engines live in, named there by their key.

    The key holds the checkpoint's hash, which covers the model config (the sampler included),
    and `model_deform_sampling` itself, so the engines of every sampler and checkpoint sit side
    by side, and engines provisioned by `m2a-build-engine` in the same folder are reused.
    """
    if context.engine_cache is not None:
        return context.engine_cache
    if kind == 'onnxruntime':  # cheap to rebuild: kept out of the TensorRT cache
        return context.workdir
    from m2a_perception.deploy.build import default_cache_dir

    return default_cache_dir()


def backend_spec(name: str, size: tuple[int, int], context: BenchContext) -> BackendSpec:
    """The spec the node would get for bench backend `name` at `size`."""
    model = context.model
    if name in TORCH_BACKENDS:
        kind, precision = TORCH_BACKENDS[name]
        return BackendSpec(
            kind=kind,
            checkpoint=str(model.checkpoint),
            device=str(context.device),
            precision=precision,
        )
    if name in ENGINE_BACKENDS:
        kind, precision = ENGINE_BACKENDS[name]
        return BackendSpec(
            kind=kind,
            checkpoint=str(model.checkpoint),
            engine_cache=str(engine_folder(kind, context)),
            device=str(context.device),
            precision=precision,
            engine_policy=BUILD_IF_MISSING,
            allow_gate_failed=model.random_weights,
            engine_size=size,
        )
    raise ValueError(f'unknown backend {name!r}; choose from {BACKENDS}')


def make_backend(name: str, size: tuple[int, int], context: BenchContext) -> LoadedBackend:
    """Load bench backend `name` through the one loader, or raise BackendSkippedError."""
    spec = backend_spec(name, size, context)
    if name in TORCH_BACKENDS and spec.precision != 'fp32' and context.device.type != 'cuda':
        raise BackendSkippedError(f'{name} (autocast) needs a CUDA device')
    start = time.perf_counter()
    try:
        loaded = load_backend(
            spec, lambda state, detail: LOGGER.info('%s engine %s: %s', name, state, detail)
        )
    except BackendError as error:
        raise BackendSkippedError(str(error)) from error
    loaded.info['load_seconds'] = time.perf_counter() - start
    if loaded.sidecar is not None:
        from m2a_perception.deploy.gate import GateResult

        LOGGER.info('%s: %s', name, GateResult.from_dict(loaded.sidecar['gate']).summary())
    return loaded


def engine_info(loaded: LoadedBackend) -> dict[str, Any]:
    """What the results record about an engine backend: files, build, gate, the loader's view."""
    sidecar = loaded.sidecar or {}
    return {
        'engine': loaded.engine_file,
        'sidecar': loaded.engine_file + '.json',
        'built': loaded.built,
        'provision_seconds': loaded.info.get('load_seconds'),
        'build_seconds': sidecar.get('build_seconds'),
        'gate': sidecar.get('gate'),
        'loaded': loaded.describe(),
    }


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class _Clock:
    """Stage marks: CUDA events on the current stream, or host time on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def elapsed_ms(self, start: Any, end: Any) -> float:
        if self.cuda:
            return float(start.elapsed_time(end))
        return (end - start) * 1e3


@dataclass
class BackendRun:
    """One backend at one size and camera count: samples and the segmenter that makes a frame.

    A frame is exactly what the node runs per frame, `runtime.frame.process_frame`; its four
    core stage times are the `STAGES` (preprocess, model, postprocess, handoff).
    """

    name: str
    backend: Backend
    device: torch.device
    frames: list[np.ndarray]
    segmenter: Segmenter
    postprocess_config: PostprocessConfig | None
    stage_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    total_ms: list[float] = field(default_factory=list)
    round_s: list[float] = field(default_factory=list)

    def frame(self, host_frame: np.ndarray) -> StageTimes:
        """One frame through the node's per-frame function; its stage times."""
        return process_frame(self.segmenter, host_frame, self.postprocess_config).times

    def round(self, clock: _Clock, timed: bool) -> None:
        """N frames (one per camera) then a device synchronisation."""
        _synchronize(self.device)
        start = time.perf_counter()
        all_times = [self.frame(frame) for frame in self.frames]
        _synchronize(self.device)
        elapsed = time.perf_counter() - start
        if not timed:
            return
        self.round_s.append(elapsed)
        for times in all_times:
            values = (times.preprocess_ms, times.model_ms, times.postprocess_ms, times.handoff_ms)
            for stage, value in zip(STAGES, values, strict=True):
                self.stage_ms[stage].append(value)
            self.total_ms.append(sum(values))


def measure_memory(run: BackendRun, clock: _Clock) -> dict[str, float] | None:
    """Peak torch-allocator memory of one round of this backend alone, and device memory in use."""
    if run.device.type != 'cuda':
        return None
    _synchronize(run.device)
    torch.cuda.reset_peak_memory_stats(run.device)
    before = torch.cuda.memory_allocated(run.device)
    run.round(clock, timed=False)
    peak = torch.cuda.max_memory_allocated(run.device)
    free, total = torch.cuda.mem_get_info(run.device)
    return {
        # Absolute peak: includes the weights of every backend loaded in this run.
        'peak_allocated_mb': peak / 2**20,
        # What this backend's round added on top (activations, outputs, workspaces via torch).
        'round_increase_mb': (peak - before) / 2**20,
        'device_used_mb': (total - free) / 2**20,
    }


def host_frames(size: tuple[int, int], count: int) -> list[np.ndarray]:
    """`count` different (H, W, 3) uint8 RGB frames on the host, as the node receives them."""
    from m2a_perception.deploy.gate import synthetic_gate_images

    images = synthetic_gate_images(size, count, seed=1)
    return [image.permute(1, 2, 0).contiguous().numpy() for image in images]


def bench_segmenter(
    backend: Backend, preprocess: PreprocessConfig, size: tuple[int, int]
) -> Segmenter:
    """The node's `Segmenter` for frames generated at the network size (no resize timed)."""
    identity = dataclasses.replace(preprocess, short_side=size[0], max_size=max(size))
    return Segmenter(backend, identity)


def _stage_stats(run: BackendRun) -> dict[str, Any]:
    stages = {stage: percentiles(run.stage_ms[stage]) for stage in STAGES}
    stages['total'] = percentiles(run.total_ms)
    frames = len(run.frames) * len(run.round_s)
    return {
        'stages': stages,
        'throughput_fps': frames / sum(run.round_s),
        'round_p50_ms': float(np.percentile(np.asarray(run.round_s) * 1e3, 50)),
    }


def _versions(device: torch.device) -> dict[str, str]:
    """Tool versions, GPU name and compute capability for the record."""
    from m2a_perception.deploy.cache import probe_toolchain, tool_versions

    versions = dict(tool_versions())
    try:
        versions.update(probe_toolchain(device).as_dict())
    except Exception as error:  # version probes must never break a benchmark
        versions['probe_error'] = str(error)
    return versions


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'--device {args.device} but CUDA is not available on this machine')
    sizes = [(f'{height}x{width}', (height, width)) for height, width in args.size]
    if args.iters < 1 or args.warmup < 0:
        raise ValueError('--iters must be at least 1 and --warmup at least 0')
    cameras = list(args.num_cameras)
    requested = list(dict.fromkeys(args.backend))
    names = requested if REFERENCE in requested else [*requested, REFERENCE]
    clock = _Clock(device)
    results: dict[str, Any] = {
        'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
        'host': platform.node(),
        'versions': _versions(device),
        'threads': torch.get_num_threads(),
        'config': None,
        'weights': str(args.checkpoint) if args.checkpoint else 'random (timing only)',
        'warmup': args.warmup,
        'iters': args.iters,
        'cameras': cameras,
        'postprocess': not args.no_postprocess,
        'command': ' '.join(['m2a-bench', *getattr(args, 'argv', [])]),
        'reference': REFERENCE,
        'reference_added': REFERENCE not in requested,
        'unavailable': {},
        'engines': {},
        'backends': {},
        'checkpoints': {},
        'runs': [],
        'sizes': {},
    }
    post_config = (
        None
        if args.no_postprocess
        else PostprocessConfig(anomaly_threshold=args.anomaly_threshold)
    )
    samplers = [check_deform_sampling(name) for name in args.deform_sampling or []]
    compare = len(samplers) > 1
    config: ModelConfig | None = None
    with tempfile.TemporaryDirectory(prefix='m2a-bench-') as tmp:
        for sampler in samplers or [None]:
            model = bench_checkpoint(args, sampler, Path(tmp))
            config = config or model.config
            results['checkpoints'][sampler or 'model'] = model.describe()
            context = BenchContext(model, device, Path(tmp), args.engine_cache)
            _bench_sampler(
                args,
                context,
                sizes,
                cameras,
                names,
                requested,
                post_config,
                clock,
                results,
                sampler if compare else None,
            )
    assert config is not None
    results['config'] = config.name
    # Parameters and multiply-adds of the network at the first size (model/cost.py).
    results['model_cost'] = model_cost(config, sizes[0][1]).as_dict()
    if compare:
        results['deform_sampling'] = samplers
        results['deform_sampling_ratios'] = sampler_ratios(results['runs'], *samplers[:2])
    return results


def _bench_sampler(
    args: argparse.Namespace,
    context: BenchContext,
    sizes: list[tuple[str, tuple[int, int]]],
    cameras: list[int],
    names: list[str],
    requested: list[str],
    post_config: PostprocessConfig | None,
    clock: _Clock,
    results: dict[str, Any],
    sampler: str | None,
) -> None:
    """Bench every backend at every size and camera count with the model's current sampler.

    `sampler` is None unless samplers are compared; then runs, engines and unavailable
    entries are labelled with it and only the first sampler fills the legacy `sizes` rows.
    """
    suffix = '' if sampler is None else f'[{sampler}]'
    for size_text, size in sizes:
        backends: dict[str, LoadedBackend] = {}
        for name in names:
            if sampler == GRID_SAMPLE and name in ENGINE_BACKENDS and name != 'onnxruntime':
                results['unavailable'][name + suffix] = (
                    'TensorRT graphs are always exported with deform_sampling gather'
                )
                continue
            try:
                backends[name] = make_backend(name, size, context)
            except BackendSkippedError as error:
                results['unavailable'][name + suffix] = str(error)
                continue
            label = f'{name}{suffix}@{size_text}'
            results['backends'][label] = backends[name].describe()
            if backends[name].sidecar is not None:
                results['engines'][label] = engine_info(backends[name])
        legacy: dict[str, Any] = {}
        for num_cameras in cameras:
            frames = host_frames(size, num_cameras)
            runs = [
                BackendRun(
                    name,
                    loaded.backend,
                    loaded.backend.device,
                    frames,
                    bench_segmenter(loaded.backend, loaded.config.preprocess, size),
                    post_config,
                )
                for name, loaded in backends.items()
            ]
            memory = {run_.name: measure_memory(run_, clock) for run_ in runs}
            for iteration in range(args.warmup + args.iters):
                for run_ in runs:
                    run_.round(clock, timed=iteration >= args.warmup)
            stats = {run_.name: _stage_stats(run_) for run_ in runs}
            _add_speedups(stats)
            for run_ in runs:
                entry = {
                    'size': size_text,
                    'cameras': num_cameras,
                    'backend': run_.name,
                    **stats[run_.name],
                    'memory': memory[run_.name],
                }
                if sampler is not None:
                    entry['deform_sampling'] = sampler
                results['runs'].append(entry)
            if num_cameras == cameras[0]:
                legacy = _legacy_rows(requested, stats, not args.no_postprocess)
        if size_text not in results['sizes']:
            results['sizes'][size_text] = legacy


def sampler_ratios(runs: list[dict[str, Any]], first: str, second: str) -> list[dict[str, Any]]:
    """Model-stage p50 of `second` over `first` per (size, cameras, backend) run by both."""
    p50 = {
        (run['size'], run['cameras'], run['backend'], run['deform_sampling']): run['stages'][
            'model'
        ]['p50_ms']
        for run in runs
    }
    ratios = []
    for (size, cameras, backend, sampler), first_ms in p50.items():
        second_ms = p50.get((size, cameras, backend, second))
        if sampler != first or second_ms is None:
            continue
        ratios.append(
            {
                'size': size,
                'cameras': cameras,
                'backend': backend,
                f'{first}_model_p50_ms': first_ms,
                f'{second}_model_p50_ms': second_ms,
                f'{second}_over_{first}': second_ms / first_ms,
            }
        )
    return ratios


def _add_speedups(stats: dict[str, dict[str, Any]]) -> None:
    """Speedups against eager FP32 of the same run: p50 model / p50 total / throughput."""
    reference = stats.get(REFERENCE)
    for entry in stats.values():
        if reference is None:
            entry['speedup_vs_' + REFERENCE] = None
            continue
        entry['speedup_vs_' + REFERENCE] = {
            'model_p50': reference['stages']['model']['p50_ms']
            / entry['stages']['model']['p50_ms'],
            'total_p50': reference['stages']['total']['p50_ms']
            / entry['stages']['total']['p50_ms'],
            'throughput': entry['throughput_fps'] / reference['throughput_fps'],
        }


def _legacy_rows(
    requested: list[str], stats: dict[str, dict[str, Any]], with_post: bool
) -> dict[str, Any]:
    """The pre-stage format: model-stage latency per backend, ratio to the first backend."""
    present = [name for name in requested if name in stats]
    if not present:
        return {}
    first = present[0]
    reference_p50 = stats[first]['stages']['model']['p50_ms']
    rows: dict[str, Any] = {}
    for name in present:
        row = dict(stats[name]['stages']['model'])
        row['p50_ratio_vs_' + first] = row['p50_ms'] / reference_p50
        rows[name] = row
    if with_post:
        row = dict(stats[first]['stages']['post'])
        row['p50_ratio_vs_' + first] = row['p50_ms'] / reference_p50
        rows['postprocess'] = row
    return rows


def format_table(results: dict[str, Any]) -> str:
    lines = [
        f'device {results["device"]}, torch {results["versions"].get("torch")}, '
        f'{results["threads"]} threads, config {results["config"]}, weights {results["weights"]}, '
        f'{results["iters"]} timed rounds after {results["warmup"]} warm-up (round-robin)',
        f'{"size":>10} {"cams":>4} {"backend":>24} {"pre":>7} {"model":>7} {"m p99":>7} '
        f'{"post":>7} {"d2h":>7} {"total":>7} {"t p99":>7} {"fps":>7} {"peakMB":>7} '
        f'{"x model":>7} {"x fps":>7}',
    ]
    for entry in results['runs']:
        stages = entry['stages']
        speedup = entry.get('speedup_vs_' + REFERENCE) or {}
        memory = entry.get('memory') or {}
        lines.append(
            f'{entry["size"]:>10} {entry["cameras"]:>4} {_label(entry):>24} '
            f'{stages["h2d_pre"]["p50_ms"]:>7.2f} {stages["model"]["p50_ms"]:>7.2f} '
            f'{stages["model"]["p99_ms"]:>7.2f} {stages["post"]["p50_ms"]:>7.2f} '
            f'{stages["d2h"]["p50_ms"]:>7.2f} {stages["total"]["p50_ms"]:>7.2f} '
            f'{stages["total"]["p99_ms"]:>7.2f} {entry["throughput_fps"]:>7.1f} '
            f'{_number(memory.get("peak_allocated_mb"), 7, 0)} '
            f'{_number(speedup.get("model_p50"), 7, 2)} {_number(speedup.get("throughput"), 7, 2)}'
        )
    lines.append('stage times are p50 ms; x = speedup against eager FP32 (torch) in this run')
    if results.get('model_cost'):
        lines.append(format_model_cost(results['model_cost']))
    for name, reason in results['unavailable'].items():
        lines.append(f'unavailable: {name}: {reason}')
    samplers = results.get('deform_sampling')
    for ratio in results.get('deform_sampling_ratios', []):
        first, second = samplers[:2]
        lines.append(
            f'deform sampling {ratio["size"]} {ratio["cameras"]} cam {ratio["backend"]}: '
            f'model p50 {second} {ratio[f"{second}_model_p50_ms"]:.2f} ms / {first} '
            f'{ratio[f"{first}_model_p50_ms"]:.2f} ms = {ratio[f"{second}_over_{first}"]:.2f}x'
        )
    return '\n'.join(lines)


def _label(entry: dict[str, Any]) -> str:
    sampler = entry.get('deform_sampling')
    return entry['backend'] if sampler is None else f'{entry["backend"]}/{sampler}'


def _number(value: float | None, width: int, digits: int) -> str:
    return f'{"-":>{width}}' if value is None else f'{value:>{width}.{digits}f}'


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    setup_logging(args.verbose)
    unknown = [name for name in args.backend if name not in BACKENDS]
    if unknown:
        print(f'error: unknown backend(s) {unknown}; choose from {BACKENDS}', file=sys.stderr)
        return 2
    try:
        results = run(args)
    except (CheckpointError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    if not results['runs']:
        reasons = '; '.join(f'{k}: {v}' for k, v in results['unavailable'].items())
        print(f'error: none of the requested backends can run here ({reasons})', file=sys.stderr)
        return 2
    print(format_table(results))
    if args.json:
        print(f'wrote {cli_args.write_json_output(args.json, results)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
