"""m2a-bench: latency of Mask2Anomaly backends and of post-processing, in one interleaved run.

Backends are timed round-robin (one call of each per iteration), so that machine noise hits all of
them alike and the printed ratios are comparable. The `postprocess` row times the open-set
post-processing (all outputs on, flip off) of the first backend's logits on the same device, in
the same loop, and its ratio is against that backend's model time. Without --checkpoint the model
has random weights of the given config: fine for timing, meaningless for outputs.

Example:
    m2a-bench --backend torch,onnxruntime --size 512x1024
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from m2a_perception.cli.common import parse_list, parse_size, setup_logging
from m2a_perception.config import load_model_config
from m2a_perception.export import example_input, export_onnx
from m2a_perception.inference import Backend, TorchBackend
from m2a_perception.model import Mask2Anomaly, build_model
from m2a_perception.postprocess import PostprocessConfig, postprocess
from m2a_perception.preprocess import PreprocessRecord
from m2a_perception.weights.checkpoint import CheckpointError, load_checkpoint

BACKENDS = ('torch', 'torch-fp16', 'onnxruntime')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='m2a-bench', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        '--backend',
        type=parse_list,
        default=['torch'],
        help=f'comma-separated backends from {", ".join(BACKENDS)}; the first is '
        'the reference for ratios',
    )
    parser.add_argument(
        '--size',
        type=parse_list,
        default=['512x1024'],
        help='comma-separated input sizes HxW (multiples of 32)',
    )
    parser.add_argument('--checkpoint', type=Path, help='m2a checkpoint (default: random weights)')
    parser.add_argument(
        '--config', default='cityscapes_r50_gma', help='model config when no checkpoint is given'
    )
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument(
        '--no-postprocess', action='store_true', help='do not time the post-processing stage'
    )
    parser.add_argument(
        '--anomaly-threshold',
        type=float,
        default=0.5,
        help='threshold for the open-set outputs of the post-processing stage',
    )
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--json', type=Path, help='also write the results as JSON here')
    parser.add_argument('-v', '--verbose', action='store_true')
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


def make_backend(
    name: str, model: Mask2Anomaly, size: tuple[int, int], device: str, workdir: Path
) -> Backend:
    if name == 'torch':
        return TorchBackend(model, device, 'fp32')
    if name == 'torch-fp16':
        return TorchBackend(model, device, 'fp16')
    if name == 'onnxruntime':
        from m2a_perception.inference.onnxruntime_backend import OnnxRuntimeBackend

        path = export_onnx(model.cpu(), workdir / f'model_{size[0]}x{size[1]}.onnx', size)
        model.to(device)
        return OnnxRuntimeBackend(path)
    raise ValueError(f'unknown backend {name!r}; choose from {BACKENDS}')


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_round_robin(
    calls: dict[str, Callable[[], object]],
    devices: dict[str, torch.device],
    warmup: int,
    iters: int,
) -> dict[str, list[float]]:
    """Call every function once per iteration, in turn; return per-name latencies in ms."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for iteration in range(warmup + iters):
        for name, call in calls.items():
            _synchronize(devices[name])
            start = time.perf_counter()
            call()
            _synchronize(devices[name])
            if iteration >= warmup:
                samples[name].append((time.perf_counter() - start) * 1e3)
    return samples


def postprocess_call(
    backend: Backend, images: torch.Tensor, size: tuple[int, int], args: argparse.Namespace
) -> Callable[[], object]:
    """Post-processing of one frame's logits with every output on (flip off), on their device."""
    class_logits, mask_logits = backend(images)
    record = PreprocessRecord(source_size=size, resized_size=size, padded_size=size)
    config = PostprocessConfig(anomaly_threshold=args.anomaly_threshold)

    def call() -> object:
        with torch.inference_mode():
            return postprocess(class_logits[0], mask_logits[0], record, config)

    return call


def run(args: argparse.Namespace) -> dict[str, object]:
    if args.checkpoint:
        model, config = load_checkpoint(args.checkpoint, args.device)
        weights = str(args.checkpoint)
    else:
        config = load_model_config(args.config)
        torch.manual_seed(0)
        model = build_model(config).to(args.device).eval()
        weights = 'random (timing only)'
    results: dict[str, object] = {
        'device': torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu',
        'torch': torch.__version__,
        'threads': torch.get_num_threads(),
        'config': config.name,
        'weights': weights,
        'warmup': args.warmup,
        'iters': args.iters,
        'sizes': {},
    }
    with tempfile.TemporaryDirectory(prefix='m2a-bench-') as tmp:
        for size_text in args.size:
            size = parse_size(size_text)
            backends = {
                name: make_backend(name, model, size, args.device, Path(tmp))
                for name in args.backend
            }
            images = example_input(size)
            calls = {
                name: (lambda b=backend, x=images: b(x)) for name, backend in backends.items()
            }
            devices = {name: backend.device for name, backend in backends.items()}
            reference = args.backend[0]
            if not args.no_postprocess:
                calls['postprocess'] = postprocess_call(backends[reference], images, size, args)
                devices['postprocess'] = backends[reference].device
            samples = time_round_robin(calls, devices, args.warmup, args.iters)
            reference_p50 = percentiles(samples[reference])['p50_ms']
            entry = {}
            for name in calls:
                stats = percentiles(samples[name])
                stats['p50_ratio_vs_' + reference] = stats['p50_ms'] / reference_p50
                entry[name] = stats
            results['sizes'][size_text] = entry
    return results


def format_table(results: dict[str, object]) -> str:
    lines = [
        f'device {results["device"]}, torch {results["torch"]}, {results["threads"]} threads, '
        f'config {results["config"]}, weights {results["weights"]}, '
        f'{results["iters"]} timed iterations after {results["warmup"]} warm-up (round-robin)',
        f'{"size":>10} {"backend":>12} {"p50 ms":>10} {"p90 ms":>10} {"ratio p50":>10}',
    ]
    for size, entry in results['sizes'].items():  # type: ignore[union-attr]
        for name, stats in entry.items():
            ratio = next(v for k, v in stats.items() if k.startswith('p50_ratio_vs_'))
            lines.append(
                f'{size:>10} {name:>12} {stats["p50_ms"]:>10.1f} '
                f'{stats["p90_ms"]:>10.1f} {ratio:>10.3f}'
            )
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    print(format_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
