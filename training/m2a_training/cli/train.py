"""m2a-train: train Mask2Anomaly (stage 1 closed set, stage 2 mask contrastive) from a YAML recipe.

Examples:
    m2a-train config/train/synthetic_stage1.yaml
    m2a-train config/train/cityscapes_stage1.yaml data.root=/data solver.max_iters=1000
    torchrun --nproc_per_node 8 -m m2a_training.cli.train config/train/cityscapes_stage1.yaml
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        -m m2a_training.cli.train config/train/cityscapes_stage2.yaml --resume

Overrides are `dotted.key=value` (value parsed as YAML). `--resume` continues from the newest
checkpoint in the output folder (or starts if there is none), so a pre-empted job can be
re-submitted with the same command. Exit status: 0 done, 1 bad config or data, 2 the loss
diverged (the last good checkpoint is kept), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from m2a_perception.cli import args as cli_args
from m2a_perception.weights import CheckpointError, WriteFailedError
from m2a_training.checkpointing import TrainingCheckpointError
from m2a_training.config import ConfigError, load_train_config
from m2a_training.data.benchmarks import BenchmarkDatasetError
from m2a_training.data.cityscapes import DatasetError

LOG_FORMAT = '%(asctime)s %(levelname)s %(name)s: %(message)s'


def build_parser() -> argparse.ArgumentParser:
    parser = cli_args.new_parser('m2a-train', __doc__)
    parser.add_argument('config', type=Path, help='training recipe (config/train/*.yaml)')
    parser.add_argument('overrides', nargs='*', help='dotted.key=value overrides')
    parser.add_argument(
        '--resume', action='store_true', help='continue from the newest checkpoint in output_dir'
    )
    parser.add_argument(
        '--stop-after',
        type=int,
        default=None,
        metavar='ITER',
        help='stop (with a checkpoint) after this iteration; the schedule still spans max_iters',
    )
    parser.add_argument(
        '--print-config', action='store_true', help='print the resolved config and exit'
    )
    return parser


def setup_logging(output_dir: Path | None, rank: int) -> None:
    """Console logging (INFO on rank 0, WARNING elsewhere) and `output_dir/log.txt` on rank 0."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if output_dir is not None and rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(output_dir / 'log.txt'))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=LOG_FORMAT if rank == 0 else f'[rank {rank}] {LOG_FORMAT}',
        handlers=handlers,
        force=True,
    )


def main(argv: list[str] | None = None) -> int:
    # Options may come before, between or after the overrides.
    args = build_parser().parse_intermixed_args(argv)
    rank = int(os.environ.get('RANK', '0'))
    try:
        config = load_train_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as error:
        print(f'm2a-train: {error}', file=sys.stderr)
        return 1
    if args.print_config:
        print(config.to_yaml(), end='')
        return 0
    setup_logging(Path(config.output_dir), rank)
    # Imported after the config check so that `--help` and config errors answer quickly.
    from m2a_training.trainer import TrainingDivergedError, train

    log = logging.getLogger('m2a_training.cli.train')
    try:
        summary = train(config, resume=args.resume, stop_after=args.stop_after)
    except TrainingDivergedError:
        return 2  # already logged with the last good checkpoint
    except (
        ConfigError,
        DatasetError,
        BenchmarkDatasetError,
        CheckpointError,
        TrainingCheckpointError,
        WriteFailedError,
        FileExistsError,
        FileNotFoundError,
    ) as error:
        log.error('%s', error)
        return 1
    except KeyboardInterrupt:
        log.error('interrupted; the last complete checkpoint is intact (use --resume)')
        return 130
    if rank == 0:
        best = (
            f'best model {summary.best_model} (iteration {summary.best_iteration}, '
            f'{config.validation.selection_metric} {summary.best_score:.4f})'
            if summary.best_model is not None and summary.best_score is not None
            else 'no validation-selected model'
        )
        log.info(
            'done: iteration %d, last checkpoint %s, %s',
            summary.iteration,
            summary.last_checkpoint,
            best,
        )
    return 0


if __name__ == '__main__':
    sys.exit(main())
