"""m2a-demo: the whole mission on built-in data, on a CPU, in a few minutes.

1. Stage 1: the project's `Trainer` on `config/train/synthetic_stage1.yaml`. It generates the
   synthetic road world (Cityscapes-format scenes, a COCO-format outlier set, held-out scenes
   with obstacle types the model never sees) and trains the demo model on the closed-set classes.
2. Stage 2: the `Trainer` on `config/train/synthetic_stage2.yaml` from the stage-1 model: mask
   contrastive fine-tuning with AnomalyMix outliers.
   Each stage ends with the trainer's validation (`m2a_training.validation.Validator`, through
   the shared `Segmenter`): closed-set mIoU on the val scenes, anomaly AuPRC / FPR95 on the
   held-out scenes, judged on the road as the road-obstacle benchmarks do (off-road pixels are
   void; `m2a_training.data.synthetic`). These are the printed figures; nothing is selected on
   the held-out scenes (the demo uses each stage's last iteration).
3. The held-out scenes are packed into a camera bag (`m2a-pack-bag`) and replayed through the
   real ROS node (`m2a-replay --live`: a node process, a bag player with /clock and a
   recorder), giving an mcap output bag with every node output and the metrics from the bag.
4. A gallery of held-out scenes (input, ground truth, anomaly heatmap, open-set panoptic
   overlay) and, over all held-out scenes, how often the unseen obstacle holds the hottest
   anomaly score on the road, plus the full-frame AuPRC / FPR95 (every known pixel an inlier).

Everything is seeded and runs on a pinned number of torch threads, so the same command prints
the same figures on every run (README: "The demo").

The steps are the functions of `m2a_training.demo`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from m2a_perception.cli import args as cli_args
from m2a_perception.pipeline import Segmenter
from m2a_perception.weights import load_checkpoint
from m2a_training.data.synthetic import load_synthetic_world
from m2a_training.demo import (
    CHECKPOINT_NAME,
    STAGE_RECIPES,
    clean_outputs,
    final_metrics,
    final_model,
    find_recipe_dir,
    format_figures,
    replay_through_node,
    stage_config,
    write_gallery,
)
from m2a_training.trainer import train


def build_parser() -> argparse.ArgumentParser:
    parser = cli_args.new_parser('m2a-demo', __doc__)
    cli_args.add_out(
        parser, required=False, default=Path('out/demo'), help='output folder (default out/demo)'
    )
    parser.add_argument(
        '--recipes',
        type=Path,
        default=None,
        help='folder with the two synthetic_stage*.yaml recipes (default: config/train)',
    )
    parser.add_argument(
        '--stage1-iters', type=int, help="stage-1 solver.max_iters (default: the recipe's)"
    )
    parser.add_argument(
        '--stage2-iters', type=int, help="stage-2 solver.max_iters (default: the recipe's)"
    )
    parser.add_argument(
        '--set',
        dest='overrides',
        action='append',
        default=[],
        metavar='KEY=VALUE',
        help='recipe override applied to both stages (repeatable), e.g. solver.batch_size=2',
    )
    parser.add_argument('--gallery', type=int, default=4, help='held-out scenes to render')
    parser.add_argument(
        '--no-replay', action='store_true', help='skip the bag replay through the ROS node'
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    started = time.perf_counter()
    out: Path = args.out
    recipes = args.recipes if args.recipes is not None else find_recipe_dir()
    out.mkdir(parents=True, exist_ok=True)
    clean_outputs(out)

    stage1 = stage_config(
        recipes / STAGE_RECIPES[0], out, 'stage1', args.stage1_iters, args.overrides
    )
    print(
        f'[1/4] stage 1: closed-set training, {stage1.solver.max_iters} iterations '
        f'({recipes / STAGE_RECIPES[0]})',
        flush=True,
    )
    summary1 = train(stage1)
    stage2 = stage_config(
        recipes / STAGE_RECIPES[1],
        out,
        'stage2',
        args.stage2_iters,
        [f'model.init_checkpoint={final_model(summary1)}', *args.overrides],
    )
    print(
        f'[2/4] stage 2: mask contrastive fine-tuning with AnomalyMix, '
        f'{stage2.solver.max_iters} iterations ({recipes / STAGE_RECIPES[1]})',
        flush=True,
    )
    summary2 = train(stage2)
    checkpoint = out / CHECKPOINT_NAME
    shutil.copyfile(final_model(summary2), checkpoint)
    world = load_synthetic_world(stage2.data.root)

    replay_text = None
    if not args.no_replay:
        print('[3/4] replaying the held-out scenes through the ROS node', flush=True)
        replay_text = replay_through_node(world.anomaly_root, checkpoint, out)
    print('[4/4] open-set inference gallery of held-out scenes', flush=True)
    model, model_config = load_checkpoint(checkpoint)
    segmenter = Segmenter.from_model(
        model.eval(),
        model_config,
        # The validation's scoring, plus the open-set outputs the validation leaves out.
        postprocess_config=dataclasses.replace(
            stage2.validation.postprocess, anomaly_threshold=0.5, panoptic=True, mining=True
        ),
    )
    hottest = write_gallery(segmenter, world.anomaly_root, out, args.gallery)
    metrics1, metrics2 = final_metrics(summary1), final_metrics(summary2)
    report = {
        'after_stage1': metrics1,
        'after_stage2': metrics2,
        'hottest_region': {
            'scenes_where_the_obstacle_is_hottest': hottest.hottest,
            'scenes': hottest.scenes,
            'gallery_scenes_where_the_obstacle_is_hottest': hottest.gallery_hottest,
            'gallery_scenes': hottest.gallery_scenes,
        },
        'after_stage2_full_frame': {
            'anomaly_auprc': hottest.full_frame.auprc,
            'anomaly_fpr95': hottest.full_frame.fpr95,
        },
        'anomaly_kinds': list(world.anomaly_kinds),
        'wall_time_s': round(time.perf_counter() - started, 1),
    }
    (out / 'metrics.json').write_text(json.dumps(report, indent=2))

    if replay_text is not None:
        print('\nreplay through the ROS node\n' + replay_text.rstrip())
    print('\nm2a demo summary')
    print(f'  held-out obstacle types (never seen in training): {", ".join(world.anomaly_kinds)}')
    print(f'  after stage 1: {format_figures(metrics1)}')
    print(f'  after stage 2: {format_figures(metrics2)}')
    print(
        f'  after stage 2, full frame (every known pixel an inlier, not only the road): anomaly '
        f'AuPRC {hottest.full_frame.auprc:.3f}, FPR95 {hottest.full_frame.fpr95:.3f}'
    )
    print(
        f'  unseen obstacle is the hottest region in {hottest.hottest} of {hottest.scenes} '
        f'held-out scenes ({hottest.gallery_hottest} of {hottest.gallery_scenes} in the gallery)'
    )
    print(f'  checkpoint: {checkpoint}')
    if replay_text is not None:
        print(f'  camera bag (input + ground truth): {out / "camera_bag"}')
        print(f'  output bag (inputs + every node output, mcap): {out / "output_bag"}')
        print(f'  replay report: {out / "replay_report.json"}')
        print(
            '  view the output bag: Foxglove Studio -> Open local file -> '
            f'{out / "output_bag"}/*.mcap; on a ROS 2 install: ros2 bag play '
            f'{out / "output_bag"} and ros2 launch m2a_perception rviz.launch.py'
        )
    print(f'  gallery: {out / "gallery.png"} (per scene: {out / "gallery"})')
    print(f'  metrics: {out / "metrics.json"}')
    print(f'  wall time: {report["wall_time_s"]} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
