"""m2a-build-engine: provision a vehicle offline with a gated, cached engine.

Run it on the target machine (engines are tied to the GPU and the TensorRT version). For each
size it computes the cache key, reuses a valid cached engine or builds one (torch-tensorrt, or
TensorRT's ONNX parser), runs the accuracy gate against eager FP32, and saves the engine with its
JSON sidecar. Progress goes to stdout; the engine and sidecar paths are printed at the end.

Backends:
    tensorrt       torch-tensorrt dynamo compile of the uint8 inference graph (.ep)
    tensorrt-onnx  TensorRT OnnxParser + builder (.plan); the Orin route (no torch-tensorrt)
    onnxruntime    CPU reference route (FP32 ONNX in onnxruntime): exercises the cache, the
                   sidecar and the gate on machines without a GPU (CI); the node runs it too

Examples:
    m2a-build-engine --checkpoint m2a.safetensors --size 512x1024,1024x2048 --precision fp16
    m2a-build-engine --checkpoint m2a.safetensors --backend tensorrt-onnx --onnx m2a.onnx \\
        --precision fp32 --policy force_rebuild

The ROS node opens the engine it prints (model.engine_path) through the same sidecar check
(`m2a_perception.runtime.loader`), and under model.engine_policy build_if_missing builds it in
the background, reporting 'building' in its diagnostics.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from m2a_perception.cli import args as cli_args
from m2a_perception.config import load_model_config
from m2a_perception.deploy.build import (
    CACHE_ENV,
    DEFAULT_GATE_IMAGES,
    ENGINE_KINDS,
    get_engine_kind,
    provision_engine,
)
from m2a_perception.deploy.cache import (
    BUILD_IF_MISSING,
    POLICIES,
    EngineCacheError,
    sha256_file,
    sha256_state_dict,
)
from m2a_perception.deploy.gate import (
    GateFailedError,
    GateThresholds,
    load_gate_set,
    synthetic_gate_images,
)
from m2a_perception.deploy.precision import RECIPES
from m2a_perception.deploy.tensorrt_backend import (
    BackendUnavailableError,
    EngineBuildError,
    describe_timing,
)
from m2a_perception.logs import setup_logging
from m2a_perception.model import Mask2Anomaly
from m2a_perception.weights.checkpoint import CheckpointError, load_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = cli_args.new_parser('m2a-build-engine', __doc__)
    source = parser.add_argument_group('model')
    cli_args.add_checkpoint(source)
    cli_args.add_model_config(source, help='model config name for --random-weights (testing only)')
    source.add_argument(
        '--random-weights',
        action='store_true',
        help='build from randomly initialised weights of --model-config (tests and timing only)',
    )
    engine = parser.add_argument_group('engine')
    cli_args.add_backend(
        engine,
        choices=sorted(ENGINE_KINDS),
        default='tensorrt',
        help='engine backend (default %(default)s)',
    )
    cli_args.add_precision(engine, choices=sorted(RECIPES), default='fp16')
    cli_args.add_size(
        engine,
        several=True,
        default=[(512, 1024)],
        help='comma-separated padded input sizes HxW (multiples of 32); one engine each',
    )
    engine.add_argument(
        '--valid-size',
        type=cli_args.parse_size,
        metavar='HxW',
        help='HxW of the image inside the padding (one --size only; default: no padding)',
    )
    cli_args.add_device(engine, default='cuda', help='torch device (default cuda)')
    engine.add_argument('--onnx', type=Path, help='tensorrt-onnx: build from this ONNX file')
    cli_args.add_engine_cache(
        engine,
        help=f'engine cache folder (default ${CACHE_ENV} or ~/.cache/m2a/engines)',
        deprecated=('--cache-dir',),
    )
    cli_args.add_engine_policy(engine, choices=POLICIES, default=BUILD_IF_MISSING)
    gate = parser.add_argument_group('accuracy gate')
    gate.add_argument('--gate-images', type=int, default=DEFAULT_GATE_IMAGES)
    gate.add_argument('--gate-image-dir', type=Path, help='folder of RGB gate images')
    gate.add_argument(
        '--gate-label-dir',
        type=Path,
        help='anomaly labels (0/1/255 PNGs named like the images) for the AuPRC criterion',
    )
    gate.add_argument('--min-agreement', type=float, default=GateThresholds.min_argmax_agreement)
    gate.add_argument(
        '--max-auprc-delta', type=float, default=GateThresholds.max_auprc_delta_points
    )
    gate.add_argument(
        '--accept-gate-failure',
        action='store_true',
        help='keep an engine that fails the gate (recorded as overridden in its sidecar)',
    )
    cli_args.add_json(parser, help='write a summary of the engines as JSON here')
    cli_args.add_verbose(parser)
    return parser


class ProgressPrinter:
    """Prints state changes with elapsed time (the states the node reports as diagnostics)."""

    def __init__(self, label: str, write: Callable[[str], None] | None = None) -> None:
        self.label = label
        self.start = time.perf_counter()
        self.write = write or (lambda text: print(text, flush=True))

    def __call__(self, state: str, detail: str) -> None:
        elapsed = describe_timing(time.perf_counter() - self.start)
        suffix = ' (this takes minutes on the target GPU)' if state == 'building' else ''
        self.write(f'[{elapsed:>9}] {self.label} {state}: {detail}{suffix}')


def _load_model(args: argparse.Namespace, device: torch.device) -> tuple[Mask2Anomaly, Any, str]:
    if args.checkpoint is not None:
        model, config = load_checkpoint(args.checkpoint, 'cpu')
        return model.to(device), config, sha256_file(args.checkpoint)
    if not args.random_weights or not args.model_config:
        raise ValueError('give --checkpoint (or --model-config NAME --random-weights for testing)')
    config = load_model_config(args.model_config)
    torch.manual_seed(0)
    from m2a_perception.model import build_model

    model = build_model(config).eval()
    return model.to(device), config, sha256_state_dict(model.state_dict())


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    sizes = args.size
    if args.valid_size is not None and len(sizes) != 1:
        raise ValueError('--valid-size needs exactly one --size')
    get_engine_kind(args.backend).check_available(device)  # fail fast, before loading weights
    model, config, weights_sha256 = _load_model(args, device)
    thresholds = GateThresholds(args.min_agreement, args.max_auprc_delta)
    summaries = []
    for size in sizes:
        valid = args.valid_size or size
        images = labels = None
        if args.gate_image_dir is not None:
            images, labels = load_gate_set(
                args.gate_image_dir, args.gate_label_dir, size, valid, args.gate_images
            )
        else:
            images = synthetic_gate_images(size, args.gate_images)
        label = f'{args.backend} {args.precision} {size[0]}x{size[1]}'
        provisioned = provision_engine(
            model,
            config,
            weights_sha256=weights_sha256,
            backend=args.backend,
            precision=args.precision,
            size=size,
            valid_size=valid,
            device=device,
            cache_dir=args.engine_cache,
            policy=args.policy,
            onnx_path=args.onnx,
            gate_images=images,
            gate_labels=labels,
            gate_thresholds=thresholds,
            allow_gate_failure=args.accept_gate_failure,
            on_state=ProgressPrinter(label),
        )
        gate = provisioned.gate
        print(gate.summary())
        print(f'engine:  {provisioned.paths.engine}')
        print(f'sidecar: {provisioned.paths.sidecar}')
        print(
            f'{"built" if provisioned.built else "reused"} in '
            f'{describe_timing(provisioned.seconds)}'
        )
        summaries.append(
            {
                'size': list(size),
                'engine': str(provisioned.paths.engine),
                'sidecar': str(provisioned.paths.sidecar),
                'built': provisioned.built,
                'seconds': provisioned.seconds,
                'key_digest': provisioned.key.digest(),
                'gate': gate.as_dict(),
            }
        )
        del provisioned
    return summaries


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        summaries = run(args)
    except BackendUnavailableError as error:
        print(
            f'error: backend {args.backend} is unavailable on this machine: {error}',
            file=sys.stderr,
        )
        return 2
    except (CheckpointError, ValueError, FileNotFoundError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    except GateFailedError as error:
        print(f'error: {error}', file=sys.stderr)
        return 3
    except EngineCacheError as error:
        print(f'error: {error}', file=sys.stderr)
        return 4
    except EngineBuildError as error:
        print(f'error: {error}', file=sys.stderr)
        return 5
    if args.json:
        print(f'wrote {cli_args.write_json_output(args.json, summaries)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
