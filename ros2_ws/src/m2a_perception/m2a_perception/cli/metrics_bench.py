"""m2a-metrics-bench: throughput of the metric accumulators alone (no model), in frames/s.

Synthetic frames (default 1024x2048, like Cityscapes / Fishyscapes) with a few anomaly blobs and
a void band are fed to each accumulator; the time of `update` is measured per frame, excluding
frame generation. Printed: frames/s per accumulator and for a full SMIYC evaluation pass
(exact pixel curve + component metrics). Single-threaded numpy except the float32 -> float16
rounding (torch). The measurement is `m2a_perception.metrics.bench.run`.

Example:
    m2a-metrics-bench --frames 20 --size 1024x2048 --json metrics_bench.json
"""

from __future__ import annotations

import argparse
import sys

from m2a_perception.cli import args as cli_args
from m2a_perception.metrics.bench import run


def build_parser() -> argparse.ArgumentParser:
    parser = cli_args.new_parser('m2a-metrics-bench', __doc__)
    parser.add_argument('--frames', type=int, default=20, help='number of synthetic frames')
    cli_args.add_size(parser, default=(1024, 2048), help='frame size HxW (default 1024x2048)')
    parser.add_argument('--seed', type=int, default=0)
    cli_args.add_json(
        parser, help="also write the figures as JSON here ('-': print only the JSON)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Prints frames/s per accumulator."""
    parser = build_parser()
    args = parser.parse_args(argv)
    height, width = args.size
    if args.frames < 1 or height < 8 or width < 8:
        parser.error('need at least one frame of at least 8x8 pixels')
    results = run(args.frames, height, width, args.seed)
    to_stdout = args.json is not None and str(args.json) == '-'
    if not to_stdout:  # '--json -' prints the JSON alone, for pipes
        print(f'metrics-only throughput, {args.frames} frames of {height}x{width}:')
        for name, fps in results.items():
            print(f'  {name:36s} {fps:8.2f} frames/s')
    if args.json:
        where = cli_args.write_json_output(args.json, results)
        if not to_stdout:
            print(f'wrote {where}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
