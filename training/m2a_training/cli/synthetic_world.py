"""m2a-synthetic-world: write the m2a synthetic road world and print where its parts are.

The world (Cityscapes-format scenes, a COCO-format outlier set and held-out anomaly scenes) is
`m2a_training.data.synthetic.generate_synthetic_world`.

Example:
    m2a-synthetic-world out/world --num-train 20 --size 128x256
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from m2a_perception.cli import args as cli_args
from m2a_training.data.synthetic import generate_synthetic_world


def build_parser() -> argparse.ArgumentParser:
    parser = cli_args.new_parser('m2a-synthetic-world', __doc__)
    parser.add_argument('root', type=Path, help='output folder')
    parser.add_argument('--num-train', type=int, default=200)
    parser.add_argument('--num-val', type=int, default=50)
    parser.add_argument('--num-anomaly-val', type=int, default=40)
    parser.add_argument('--num-outlier-images', type=int, default=120)
    cli_args.add_size(parser, default=(128, 256), help='scene size HxW (default 128x256)')
    # The old spellings of --size, one flag per side.
    parser.add_argument('--height', type=cli_args.positive_int, help=argparse.SUPPRESS)
    parser.add_argument('--width', type=cli_args.positive_int, help=argparse.SUPPRESS)
    parser.add_argument('--seed', type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    height, width = args.size
    if args.height is not None or args.width is not None:
        print(
            f'{parser.prog}: warning: --height/--width are deprecated; use --size HxW',
            file=sys.stderr,
        )
        height, width = args.height or height, args.width or width
    world = generate_synthetic_world(
        args.root,
        num_train=args.num_train,
        num_val=args.num_val,
        num_anomaly_val=args.num_anomaly_val,
        num_outlier_images=args.num_outlier_images,
        size=(height, width),
        seed=args.seed,
    )
    print(f'cityscapes:  {world.cityscapes_root}')
    print(f'coco images: {world.coco_image_dir}')
    print(f'coco json:   {world.coco_annotation_file}')
    print(f'anomaly val: {world.anomaly_root}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
