"""m2a-compare-options: each architecture / post-processing option against the default on the
synthetic world, with the demo's recipes, the same seeds and the same budget.

Every option (`m2a_training.compare.OPTIONS`; `--list` prints them) is model-config overrides on
config/model/demo.yaml plus post-processing overrides. Options with the same model overrides
share one trained model: post-processing-only options reuse it. Each model is trained with the
demo's two stages (config/train/synthetic_stage{1,2}.yaml, iterations times `--budget`); each
option is then evaluated on the held-out scenes: anomaly AuPRC / FPR95 (on the road), closed-set
mIoU (val scenes) and the unknown-instance PQ (full frame). Writes OUT/comparison.md (the table,
with the budget and this command) and OUT/comparison.json.

Example (all options at the demo's budget, about 15 minutes per trained model on one core):
    m2a-compare-options --out out/compare
Quick look at half the budget for two options:
    m2a-compare-options --out out/compare --options default,kan --budget 0.5
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from m2a_perception.cli import args as cli_args
from m2a_training.compare import (
    OPTIONS,
    Budget,
    ComparisonSettings,
    format_row,
    markdown_table,
    run_comparison,
    select_options,
)
from m2a_training.config import ConfigError
from m2a_training.demo import find_recipe_dir


def build_parser() -> argparse.ArgumentParser:
    parser = cli_args.new_parser('m2a-compare-options', __doc__)
    cli_args.add_out(
        parser,
        required=False,
        default=Path('out/compare'),
        help='output folder (default out/compare)',
    )
    parser.add_argument(
        '--options',
        help=f'comma-separated option names (default: all: {",".join(o.name for o in OPTIONS)})',
    )
    parser.add_argument(
        '--budget',
        type=float,
        default=1.0,
        help="scale of both stages' iterations relative to the demo recipes (default 1)",
    )
    cli_args.add_model_config(
        parser, default='demo', help='base model config (name or YAML path) the overrides apply to'
    )
    parser.add_argument(
        '--recipes', type=Path, help='folder with the two synthetic_stage*.yaml recipes'
    )
    parser.add_argument(
        '--set',
        dest='overrides',
        action='append',
        default=[],
        metavar='KEY=VALUE',
        help='training-config override for both stages and every option (repeatable)',
    )
    parser.add_argument('--list', action='store_true', help='print the options and exit')
    return parser


def _progress(message: str) -> None:
    print(f'{time.strftime("%H:%M:%S")} {message}', flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for option in OPTIONS:
            print(
                f'{option.name}: model {list(option.model)}, '
                f'postprocess {list(option.postprocess)}'
            )
        return 0
    if not args.budget > 0:
        parser.error(f'--budget must be positive, got {args.budget}')
    names = None if args.options is None else [n.strip() for n in args.options.split(',')]
    try:
        options = select_options(names)
        settings = ComparisonSettings(
            out=args.out,
            recipes=args.recipes if args.recipes is not None else find_recipe_dir(),
            base_model=args.model_config,
            budget=Budget(args.budget),
            recipe_overrides=tuple(args.overrides),
            command=shlex.join(['m2a-compare-options', *(sys.argv[1:] if argv is None else argv)]),
        )
        report = run_comparison(options, settings, _progress)
    except (ValueError, FileNotFoundError, ConfigError) as error:
        print(f'm2a-compare-options: {error}', file=sys.stderr)
        return 2
    print('\n' + markdown_table(report))
    for row in report['rows']:
        print(format_row(row))
    print(f'table: {args.out / "comparison.md"}, figures: {args.out / "comparison.json"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
