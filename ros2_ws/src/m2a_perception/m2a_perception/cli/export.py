"""m2a-export: write the inference graph as ONNX (torch dynamo exporter) and check it.

The ONNX file has input `images` (B, 3, H, W) float32 (normalised, padded) and outputs
`class_logits` (B, Q, K+1) and `mask_logits` (B, Q, H/4, W/4), at one static shape. After writing,
it runs onnxruntime on CPU against eager PyTorch and prints the largest differences.

The deformable attention is exported with the `gather` sampler by default (no GridSample op, the
same values; TensorRT >= 10.14 miscompiles GridSample, see docs/vehicle_deployment.md);
`--deform-sampling grid_sample` keeps the official op.

Example:
    m2a-export --checkpoint model.safetensors --size 512x1024 --out model_512x1024.onnx
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from m2a_perception.cli import args as cli_args
from m2a_perception.config import DEFORM_SAMPLINGS, GATHER
from m2a_perception.export import DEFAULT_OPSET, example_input, export_onnx
from m2a_perception.inference.onnxruntime_backend import OnnxRuntimeBackend
from m2a_perception.logs import setup_logging
from m2a_perception.model.ms_deform_attn import set_deform_sampling
from m2a_perception.weights.checkpoint import CheckpointError, load_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = cli_args.new_parser('m2a-export', __doc__)
    cli_args.add_checkpoint(parser, required=True)
    cli_args.add_out(parser, help='output .onnx file')
    cli_args.add_size(
        parser,
        default=(512, 1024),
        help='static input size HxW, multiples of 32 (default 512x1024)',
    )
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET)
    cli_args.add_deform_sampling(
        parser,
        choices=DEFORM_SAMPLINGS,
        default=GATHER,
        help='MSDeformAttn sampler in the graph (default gather: no GridSample op)',
    )
    parser.add_argument(
        '--no-check', action='store_true', help='skip the onnxruntime parity check'
    )
    cli_args.add_verbose(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        model, _ = load_checkpoint(args.checkpoint)
    except CheckpointError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    set_deform_sampling(model, args.deform_sampling)
    start = time.perf_counter()
    path = export_onnx(model, args.out, args.size, args.batch, args.opset)
    print(
        f'wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) '
        f'in {time.perf_counter() - start:.1f} s'
    )
    if args.no_check:
        return 0
    images = example_input(args.size, args.batch)
    with torch.inference_mode():
        expected = model(images)
    actual = OnnxRuntimeBackend(path)(images)
    for name in expected._fields:
        diff = (getattr(expected, name) - getattr(actual, name)).abs().max().item()
        print(f'onnxruntime vs eager {name}: max abs diff {diff:.3g}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
