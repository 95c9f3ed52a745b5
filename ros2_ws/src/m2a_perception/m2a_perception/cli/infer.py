"""m2a-infer: open-set segmentation of one image, written as pictures and JSON.

Writes into --out:
    anomaly_heatmap.png   anomaly score in a colour map, with a colour bar
    semantic_overlay.png  open-set semantic labels over the image (unknown in magenta)
    panoptic_overlay.png  panoptic segments over the image, unknown things boxed
    segments.json         the segment list (id, kind, class, scores, area, box in source pixels)

Examples:
    m2a-infer street.png --checkpoint model.safetensors --out results/ --flip
    m2a-infer street.png --checkpoint model.safetensors --engine engines/<name>.onnx --out res/
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from m2a_perception.cli import args as cli_args
from m2a_perception.inference.backend import PRECISIONS
from m2a_perception.logs import setup_logging
from m2a_perception.pictures import read_rgb, write_outputs
from m2a_perception.postprocess import SCORERS, PostprocessConfig
from m2a_perception.postprocess.config import REFINEMENT_MODES
from m2a_perception.runtime.loader import (
    KINDS,
    BackendError,
    BackendSpec,
    build_segmenter,
    engine_kind,
)
from m2a_perception.weights import CheckpointError

LOGGER = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = cli_args.new_parser('m2a-infer', __doc__)
    parser.add_argument('image', type=Path, help='input image (any format Pillow reads)')
    cli_args.add_checkpoint(parser, required=True)
    cli_args.add_out(parser, help='output folder (created)')
    cli_args.add_backend(
        parser,
        choices=KINDS,
        default='torch',
        help='torch / torch-compile run the checkpoint; the engine kinds run --engine',
    )
    cli_args.add_engine(parser)
    cli_args.add_precision(parser, choices=PRECISIONS, default='fp32')
    cli_args.add_allow_gate_failed(parser)
    cli_args.add_device(parser)
    parser.add_argument('--scorer', choices=SCORERS, default='mask2anomaly')
    parser.add_argument('--refinement', choices=REFINEMENT_MODES, default='code')
    parser.add_argument(
        '--anomaly-threshold',
        type=float,
        default=0.5,
        help='open-set semantic threshold (Eq. 14); pixels scoring at least this are unknown',
    )
    cli_args.add_flip(parser, default=False, help='average with a flipped pass (default off)')
    parser.add_argument('--scf', action='store_true', help='CSL structure-constrained fusion')
    parser.add_argument('--no-mining', action='store_true', help='skip unknown-instance mining')
    parser.add_argument('--alpha', type=float, default=0.5, help='overlay opacity')
    cli_args.add_verbose(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        config = PostprocessConfig(
            scorer=args.scorer,
            refinement=args.refinement,
            anomaly_threshold=args.anomaly_threshold,
            flip=args.flip,
            scf=args.scf,
            mining=not args.no_mining,
        )
        image = read_rgb(args.image)
        kind = args.backend
        if args.engine is not None and kind in ('torch', 'torch-compile'):
            kind = engine_kind(args.engine)
        spec = BackendSpec(
            kind=kind,
            checkpoint=str(args.checkpoint),
            engine_path='' if args.engine is None else str(args.engine),
            device=args.device,
            precision=args.precision,
            allow_gate_failed=args.allow_gate_failed,
        )
        segmenter, _ = build_segmenter(spec, config)
        output = segmenter(image)
        written = write_outputs(args.out, image, output, args.scorer, args.alpha)
    except (BackendError, CheckpointError, ValueError, OSError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    counts = {}
    for segment in output.segments:
        counts[segment.kind.value] = counts.get(segment.kind.value, 0) + 1
    LOGGER.info('segments by kind: %s', counts or 'none')
    for path in written:
        print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
