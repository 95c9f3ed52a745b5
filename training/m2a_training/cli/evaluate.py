"""m2a-eval: the command line of `m2a_training.evaluate` (its docstring is the --help text)."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import sys
from pathlib import Path

import torch

from m2a_perception.cli import args as cli_args
from m2a_perception.inference.backend import PRECISIONS
from m2a_perception.logs import setup_logging
from m2a_perception.metrics.pixel import PIXEL_PROTOCOLS
from m2a_perception.postprocess import SCORERS, SCORING_PROTOCOLS
from m2a_perception.postprocess.config import (
    LABEL_UPSAMPLING,
    MINING_SPLITS,
    REFINEMENT_MODES,
    SCORING_RESOLUTIONS,
)
from m2a_perception.runtime.loader import BackendError
from m2a_perception.weights import CheckpointError, WriteFailedError
from m2a_perception.weights.checkpoint import write_failure
from m2a_training import evaluate
from m2a_training.data.benchmarks import LAF_SPLITS
from m2a_training.distributed import init_distributed, shutdown_distributed
from m2a_training.evaluation.datasets import DATASET_ERRORS, DATASET_NAMES
from m2a_training.evaluation.runner import EvaluationError

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = cli_args.new_parser('m2a-eval', evaluate.__doc__)
    model = parser.add_argument_group('model')
    cli_args.add_checkpoint(model)
    cli_args.add_engine(
        model,
        help='engine from m2a-build-engine: .onnx (onnxruntime), .ep (tensorrt) or .plan '
        '(tensorrt-onnx); opened through its sidecar, checked against --checkpoint',
    )
    cli_args.add_backend(
        model,
        choices=('torch', 'torch-compile'),
        default='torch',
        help='backend of --checkpoint without --engine',
    )
    cli_args.add_allow_gate_failed(model)
    cli_args.add_device(model)
    cli_args.add_precision(model, choices=PRECISIONS, default='fp32')
    model.add_argument('--method-name', help='row label in the tables (default: file stem)')

    data = parser.add_argument_group('data')
    data.add_argument(
        '--dataset',
        action='append',
        required=True,
        metavar='NAME=PATH',
        help=f'dataset to evaluate (repeatable); NAME in {", ".join(DATASET_NAMES)}',
    )
    data.add_argument('--limit', type=int, help='evaluate only the first N frames of each dataset')
    data.add_argument(
        '--streethazards-convention',
        choices=('mask2anomaly', 'densehybrid', 'caos'),
        default='mask2anomaly',
        help='void labels of StreetHazards pixel metrics (default: the Mask2Anomaly script)',
    )
    data.add_argument('--workers', type=int, default=2, help='frame-decoding workers')
    data.add_argument(
        '--unknown-labels',
        choices=('error', 'void'),
        default='error',
        help='a label value the dataset does not define: stop with the file and value '
        '(default), or treat it as void as SMIYC and bdl-benchmark do',
    )
    data.add_argument(
        '--lost-and-found-split',
        choices=LAF_SPLITS,
        default='testNoKnown',
        help="Lost & Found split (default testNoKnown, the SMIYC leaderboard's 1043 frames)",
    )
    data.add_argument(
        '--lost-and-found-root',
        type=Path,
        help='Lost & Found tree (with leftImg8bit/) for the Fishyscapes L&F images '
        '(default: detected next to the labels)',
    )
    data.add_argument(
        '--cityscapes-root',
        type=Path,
        help='Cityscapes tree (with leftImg8bit/val/) for the released Fishyscapes Static '
        'overlays (default: detected next to them)',
    )
    data.add_argument(
        '--fs-static-version',
        type=int,
        metavar='N',
        help='Fishyscapes Static overlay version fs_val_vN (needed when several are present)',
    )
    data.add_argument(
        '--list-frames',
        action='store_true',
        help='open the datasets, print their frame counts and exit (no model needed)',
    )

    metrics = parser.add_argument_group('metrics')
    metrics.add_argument(
        '--protocol',
        action='append',
        default=[],
        metavar='[DATASET=]NAME',
        help=(
            f'scoring protocol, one of {", ".join(SCORING_PROTOCOLS)} (default official), or '
            f'pixel protocol, one of {", ".join(PIXEL_PROTOCOLS)} (default: smiyc_binned on '
            'the SMIYC tracks, smiyc elsewhere); repeatable'
        ),
    )
    metrics.add_argument(
        '--calibrate-on',
        metavar='NAME',
        help='choose the open-set threshold at 95%% TPR on this dataset, apply it to all',
    )
    metrics.add_argument('--calibration-scale', type=float, default=0.5)
    metrics.add_argument(
        '--calibration-mantissa-bits',
        type=int,
        default=16,
        help='precision of the float32 calibration curve (23 = exact, more memory)',
    )
    metrics.add_argument('--no-panoptic', action='store_true', help='skip PQ (faster)')

    post = parser.add_argument_group('post-processing')
    post.add_argument('--scorer', choices=SCORERS, help='default: the protocol (mask2anomaly)')
    post.add_argument(
        '--refinement', choices=REFINEMENT_MODES, help='default: the protocol (code)'
    )
    post.add_argument(
        '--scoring-resolution',
        choices=SCORING_RESOLUTIONS,
        help='source = score at full resolution (official), mask = at 1/4 (node); '
        'default: the protocol',
    )
    post.add_argument(
        '--refinement-min-queries',
        type=int,
        metavar='N',
        help='refine only with at least N confident queries (official 2, node 1)',
    )
    cli_args.add_flip(
        post,
        default=None,
        help='average with the pass on the mirrored source image (official geometry); '
        'default: the protocol (official on, node off)',
    )
    post.add_argument('--scf', action='store_true', help='CSL structure-constrained fusion')
    post.add_argument('--no-mining', action='store_true', help='no unknown-instance mining')
    post.add_argument(
        '--mining-split',
        choices=MINING_SPLITS,
        help='how a mined unknown region becomes instances: components (paper, default), '
        "query_regions, centroid_head (the checkpoint's class-agnostic instance head)",
    )
    post.add_argument(
        '--label-upsampling',
        choices=LABEL_UPSAMPLING,
        help='bilinear = labels from upsampled class scores (official, with source scoring in '
        'the official order), nearest = faster; default: the protocol',
    )

    output = parser.add_argument_group('output')
    cli_args.add_out(output, help='output folder (created)')
    output.add_argument('--gallery', type=int, default=8, help='worst frames per dataset')
    cli_args.add_option(
        output,
        '--score-cache',
        deprecated=('--cache-dir',),
        dest='cache_dir',
        type=Path,
        metavar='DIR',
        help='score-map cache between the two passes (default OUT/cache)',
    )
    output.add_argument('--keep-cache', action='store_true')
    cli_args.add_progress(output)
    cli_args.add_threads(output)
    cli_args.add_verbose(output)
    return parser


def settings_from_args(args: argparse.Namespace) -> evaluate.EvaluateSettings:
    """The parsed flags as the library's typed settings (the library never sees argparse)."""
    values = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(evaluate.EvaluateSettings)
    }
    values['dataset'] = tuple(args.dataset)
    values['protocol'] = tuple(args.protocol)
    return evaluate.EvaluateSettings(**values)


EXPECTED_ERRORS = (
    *DATASET_ERRORS,
    CheckpointError,
    BackendError,
    WriteFailedError,
    EvaluationError,
    FileNotFoundError,
    ValueError,
)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (also under torchrun: every rank runs it)."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    context = init_distributed(args.device)
    device = context.device
    try:
        return evaluate.run(settings_from_args(args), context, device)
    except EXPECTED_ERRORS as error:
        # EvaluationError messages already name the failing rank.
        named = context.is_distributed and not isinstance(error, EvaluationError)
        prefix = f'rank {context.rank}: ' if named else ''
        print(f'error: {prefix}{error}', file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        # A full disk anywhere under --out (gallery, curves, caches); other OS errors propagate.
        failure = write_failure(args.out, error) if args.out is not None else None
        if failure is None or failure.errno != errno.ENOSPC:
            raise
        print(f'error: {failure}', file=sys.stderr)
        return EXIT_USAGE
    finally:
        shutdown_distributed(context)


if __name__ == '__main__':
    sys.exit(main())
