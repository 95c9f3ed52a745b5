"""m2a-convert-checkpoint: official Mask2Anomaly / Mask2Former / ResNet-50 weights -> m2a format.

Examples:
    m2a-convert-checkpoint best_contrastive.pth --out m2a_cityscapes.safetensors
    m2a-convert-checkpoint resnet50_barlowtwins.pth --out stage1_init.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from m2a_perception.cli import args as cli_args
from m2a_perception.config import load_model_config
from m2a_perception.model import build_model
from m2a_perception.weights.checkpoint import CheckpointError, WriteFailedError, save_checkpoint
from m2a_perception.weights.convert import (
    BACKBONE_ONLY_FORMATS,
    convert_state_dict,
    read_weights_file,
)

SOURCE_FORMATS = (
    'auto',
    'mask2anomaly',
    'mask2former',
    'torchvision-resnet',
    'detectron2-resnet',
    'dinov2',
)


def build_parser() -> argparse.ArgumentParser:
    parser = cli_args.new_parser('m2a-convert-checkpoint', __doc__)
    parser.add_argument('source', type=Path, help='.pth / .pkl / .safetensors weights to convert')
    cli_args.add_out(parser, help='output .safetensors checkpoint')
    cli_args.add_model_config(parser, default='cityscapes_r50_gma')
    parser.add_argument('--source-format', choices=SOURCE_FORMATS, default='auto')
    parser.add_argument(
        '--seed', type=int, default=0, help='seed for the heads of backbone-only conversions'
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = load_model_config(args.model_config)
    torch.manual_seed(args.seed)
    model_state = build_model(config).state_dict()
    try:
        source = read_weights_file(args.source)
        source_format = None if args.source_format == 'auto' else args.source_format
        converted, report = convert_state_dict(source, model_state, source_format)
    except CheckpointError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    backbone_only = report.source_format in BACKBONE_ONLY_FORMATS
    try:
        save_checkpoint(
            args.out,
            converted,
            config,
            weights_state='backbone_only' if backbone_only else 'trained',
            extra_metadata={
                'converted_from': args.source.name,
                'source_format': report.source_format,
                'init_seed': str(args.seed) if report.initialised else '',
            },
        )
    except WriteFailedError as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    print(report.summary())
    print(f'wrote {args.out}' + (' (backbone-only initialisation)' if backbone_only else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
