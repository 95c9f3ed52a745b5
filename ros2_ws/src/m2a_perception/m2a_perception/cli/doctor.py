"""m2a-doctor: the vehicle self-check; run it on the target before trusting a deployment.

It reports the GPU, driver, CUDA, torch, torch-tensorrt, TensorRT and onnxruntime against the
documented support matrix (docs/vehicle_deployment.md), builds or loads the engine of
--checkpoint at --size through the node's loader (the sidecar check, build_if_missing), reports
the accuracy gate recorded in its sidecar and times the backend (p50 ms per call). It prints a
pass/fail table with one sentence per missing item and writes the whole report as JSON (attach
it to a bug report).

Exit status: 0 when every required check passes, 1 otherwise, 2 for bad arguments.
--require all (default) requires every check, i.e. the TensorRT route; --require route only the
checks the chosen --backend needs (e.g. --backend onnxruntime --device cpu on a CI machine).

Examples:
    m2a-doctor --checkpoint m2a.safetensors --size 1024x2048 --precision fp16
    m2a-doctor --checkpoint m2a.safetensors --backend tensorrt-onnx --engine-cache /opt/m2a/engines
    m2a-doctor --checkpoint tiny.safetensors --backend onnxruntime --device cpu --require route
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from m2a_perception.cli import args as cli_args
from m2a_perception.deploy.doctor import REQUIRE_MODES, format_report, run_doctor, write_report
from m2a_perception.inference.backend import PRECISIONS
from m2a_perception.logs import setup_logging
from m2a_perception.runtime.loader import (
    BUILD_IF_MISSING,
    ENGINE_POLICIES,
    ENGINE_SUFFIXES,
    KINDS,
    BackendError,
    BackendSpec,
)

DEFAULT_JSON = 'm2a_doctor_report.json'


def build_parser() -> argparse.ArgumentParser:
    parser = cli_args.new_parser('m2a-doctor', __doc__)
    cli_args.add_checkpoint(parser, required=True)
    cli_args.add_backend(
        parser,
        choices=KINDS,
        default='tensorrt',
        help='backend kind to check (default %(default)s)',
        deprecated=('--kind',),
    )
    cli_args.add_device(parser)
    cli_args.add_precision(
        parser,
        choices=PRECISIONS,
        default=None,
        help='default: fp16 for tensorrt kinds, else fp32 (onnxruntime engines are fp32)',
    )
    cli_args.add_size(parser, default=(512, 1024), help='engine HxW (default 512x1024)')
    cli_args.add_engine(
        parser,
        help='engine file (opened through its sidecar); default: one per backend, precision '
        'and size in --engine-cache',
    )
    cli_args.add_engine_cache(
        parser,
        help='folder for the default engine (default $M2A_ENGINE_CACHE or ~/.cache/m2a/engines)',
    )
    cli_args.add_engine_policy(parser, choices=ENGINE_POLICIES, default=BUILD_IF_MISSING)
    cli_args.add_allow_gate_failed(
        parser, help='use an engine whose accuracy gate failed (the check still fails)'
    )
    parser.add_argument('--require', choices=REQUIRE_MODES, default='all')
    parser.add_argument('--iters', type=int, default=5, help='timed frames')
    cli_args.add_json(
        parser, default=Path(DEFAULT_JSON), help='report file (default: ./%(default)s)'
    )
    cli_args.add_verbose(parser)
    return parser


def default_engine(args: argparse.Namespace, precision: str) -> Path:
    """The doctor's own engine file for this kind, precision and size in the cache folder."""
    from m2a_perception.deploy.build import default_cache_dir

    folder = args.engine_cache or default_cache_dir()
    height, width = args.size
    return (
        folder
        / f'm2a-doctor-{args.backend}-{precision}-{height}x{width}{ENGINE_SUFFIXES[args.backend]}'
    )


def make_spec(args: argparse.Namespace) -> BackendSpec:
    precision = args.precision or ('fp16' if args.backend.startswith('tensorrt') else 'fp32')
    engine = ''
    if args.backend in ENGINE_SUFFIXES:
        engine = str(args.engine or default_engine(args, precision))
    return BackendSpec(
        kind=args.backend,
        checkpoint=str(args.checkpoint),
        engine_path=engine,
        device=args.device,
        precision=precision,
        engine_policy=args.policy,
        allow_gate_failed=args.allow_gate_failed,
        engine_size=args.size,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        spec = make_spec(args)
    except BackendError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    start = time.perf_counter()

    def progress(state: str, detail: str) -> None:
        print(f'[{time.perf_counter() - start:7.1f} s] engine {state}: {detail}', flush=True)

    report = run_doctor(spec, args.require, args.iters, on_state=progress)
    report['command'] = 'm2a-doctor ' + ' '.join(sys.argv[1:] if argv is None else argv)
    print(format_report(report))
    print(f'wrote {write_report(args.json, report)}')
    return 0 if report['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
