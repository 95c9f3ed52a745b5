"""m2a-demo: the whole mission on built-in data, on a CPU, in a few minutes.

1. Stage 1: the project's `Trainer` on `config/train/synthetic_stage1.yaml`. It generates the
   synthetic road world (Cityscapes-format scenes, a COCO-format outlier set, held-out scenes
   with obstacle types the model never sees) and trains the demo model on the closed-set classes.
2. Stage 2: the `Trainer` on `config/train/synthetic_stage2.yaml` from the stage-1 model: mask
   contrastive fine-tuning with AnomalyMix outliers.
   Each stage ends with the trainer's validation (`m2a_training.validation.Validator`, through
   the shared `Segmenter`): closed-set mIoU on the val scenes, anomaly AuPRC / FPR95 on the
   held-out scenes. These are the printed figures; nothing is selected on the held-out scenes
   (the demo uses each stage's last iteration).
3. The held-out scenes are packed into a camera bag (`m2a-pack-bag`) and replayed through the
   real ROS node (`m2a-replay --live`: a node process, a bag player with /clock and a
   recorder), giving an mcap output bag with every node output and the metrics from the bag.
4. A gallery of held-out scenes (input, ground truth, anomaly heatmap, open-set panoptic
   overlay) and, over all held-out scenes, how often the unseen obstacle holds the hottest
   anomaly score.

Everything is seeded and runs on a pinned number of torch threads, so the same command prints
the same figures on every run (README: "The demo").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from m2a_perception.config import config_search_path
from m2a_perception.pictures import read_rgb, write_outputs
from m2a_perception.pipeline import Segmenter
from m2a_perception.visualize import blend, colorize_scalar
from m2a_perception.weights import load_checkpoint
from m2a_training.checkpointing import MODEL_FILE
from m2a_training.config import TrainConfig, load_train_config
from m2a_training.data.synthetic import load_synthetic_world
from m2a_training.trainer import TrainingSummary, train

LOGGER = logging.getLogger(__name__)
STAGE_RECIPES = ('synthetic_stage1.yaml', 'synthetic_stage2.yaml')
CHECKPOINT_NAME = 'm2a_demo.safetensors'
# Ground-truth colours of the gallery: unseen obstacle red, void grey (over a dimmed input).
_OBSTACLE_RGB = np.array([230, 30, 30], np.uint8)
_VOID_RGB = np.array([128, 128, 128], np.uint8)


@dataclass(frozen=True)
class HottestRegionCount:
    """In how many held-out scenes the unseen obstacle holds the highest anomaly score."""

    hottest: int
    scenes: int
    gallery_hottest: int
    gallery_scenes: int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='m2a-demo', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('--out', type=Path, default=Path('out/demo'), help='output folder')
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


def find_recipe_dir() -> Path:
    """`config/train` of the repository (the recipes are not installed with the package)."""
    for folder in config_search_path():
        if all((folder / 'train' / name).is_file() for name in STAGE_RECIPES):
            return folder / 'train'
    searched = ', '.join(str(p / 'train') for p in config_search_path())
    raise FileNotFoundError(f'demo recipes {STAGE_RECIPES} not found in: {searched}')


def stage_config(
    recipe: Path, out: Path, stage: str, iters: int | None, overrides: Sequence[str]
) -> TrainConfig:
    """A recipe with the demo's output folders (and optional length / overrides)."""
    extra = [f'output_dir={out / stage}', f'data.root={out / "world"}']
    if iters is not None:
        extra.append(f'solver.max_iters={iters}')
    return load_train_config(recipe, [*extra, *overrides])


def final_model(summary: TrainingSummary) -> Path:
    """The model file of a run's last checkpoint (the demo selects nothing)."""
    if summary.last_checkpoint is None:
        raise RuntimeError(f'training in {summary.output_dir} wrote no checkpoint')
    return summary.last_checkpoint / MODEL_FILE


def final_metrics(summary: TrainingSummary) -> dict[str, float]:
    """The validation of the last iteration (every stage validates at its end)."""
    if summary.iteration not in summary.validations:
        raise RuntimeError(f'no validation at the last iteration {summary.iteration}')
    return summary.validations[summary.iteration]


def format_figures(metrics: dict[str, float]) -> str:
    return (
        f'anomaly AuPRC {metrics["anomaly_auprc"]:.3f}, FPR95 {metrics["anomaly_fpr95"]:.3f}, '
        f'mIoU {metrics["miou"]:.3f}'
    )


def obstacle_is_hottest(anomaly: np.ndarray, label: np.ndarray) -> bool:
    """True if the highest anomaly score of the scene lies on the obstacle.

    Args:
        anomaly: (H, W) anomaly score.
        label: (H, W) 0 inlier, 1 obstacle, 255 void (void is ignored).
    """
    obstacle, inlier = anomaly[label == 1], anomaly[label == 0]
    if obstacle.size == 0:
        return False
    return inlier.size == 0 or float(obstacle.max()) > float(inlier.max())


def ground_truth_picture(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    """(H, W, 3) dimmed input with the obstacle in red and void in grey."""
    picture = (image.astype(np.float32) * 0.45).astype(np.uint8)
    picture[label == 1] = _OBSTACLE_RGB
    picture[label == 255] = _VOID_RGB
    return picture


def write_gallery(
    segmenter: Segmenter, anomaly_root: Path, out: Path, count: int
) -> HottestRegionCount:
    """Per-scene pictures for the first `count` held-out scenes, one sheet `out/gallery.png`
    (rows: input | ground truth | anomaly heatmap | open-set panoptic overlay), and the
    hottest-region count over every held-out scene."""
    rows, hottest, gallery_hottest = [], 0, 0
    images = sorted((anomaly_root / 'images').glob('*.png'))
    for index, path in enumerate(images):
        image = read_rgb(path)
        label = np.asarray(Image.open(anomaly_root / 'labels_masks' / path.name))
        output = segmenter(image)
        anomaly = output.anomaly_map.float().cpu().numpy()
        is_hottest = obstacle_is_hottest(anomaly, label)
        hottest += is_hottest
        if index >= count:
            continue
        gallery_hottest += is_hottest
        target = out / 'gallery' / path.stem
        write_outputs(target, image, output, segmenter.postprocess_config.scorer, alpha=0.5)
        Image.fromarray(image).save(target / 'input.png')
        panoptic = read_rgb(target / 'panoptic_overlay.png')
        heat = blend(image, colorize_scalar(anomaly, 0.0, 1.0), 0.85)
        rows.append(np.concatenate([image, ground_truth_picture(image, label), heat, panoptic], 1))
    if rows:
        sheet = np.concatenate(rows, 0)
        # Twice the scene resolution, nearest: obstacles of a few pixels stay visible.
        sheet = sheet.repeat(2, axis=0).repeat(2, axis=1)
        Image.fromarray(sheet).save(out / 'gallery.png', optimize=True)
    return HottestRegionCount(hottest, len(images), gallery_hottest, len(rows))


def run_console_script(module: str, arguments: Sequence[str]) -> str:
    """Run one of the package's console scripts (`python -m module`) and return its output."""
    command = [sys.executable, '-m', module, *arguments]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f'{module} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}'
        )
    return result.stdout


def replay_through_node(anomaly_root: Path, checkpoint: Path, out: Path) -> str:
    """Pack the held-out scenes into a camera bag and play it into a real node process.

    The node publishes at source resolution, so the metrics computed from the output bag are
    those of the stage-2 validation. Returns the replay report as printed by `m2a-replay`.
    """
    camera_bag, output_bag = out / 'camera_bag', out / 'output_bag'
    run_console_script(
        'm2a_perception.cli.pack_bag',
        [
            str(anomaly_root / 'images'),
            '--masks',
            str(anomaly_root / 'labels_masks'),
            '--out',
            str(camera_bag),
            '--camera',
            'front',
            '--fps',
            '5',
            '--overwrite',
        ],
    )
    return run_console_script(
        'm2a_perception.cli.replay',
        [
            str(camera_bag),
            '--out',
            str(output_bag),
            '--checkpoint',
            str(checkpoint.resolve()),
            '--live',
            '--overwrite',
            '--param',
            'output_resolution:=source',
            '--json',
            str(out / 'replay_report.json'),
            '--no-progress',
        ],
    )


def clean_outputs(out: Path) -> None:
    """Remove what a previous demo run wrote here, so every run starts from the same state."""
    for name in ('world', 'stage1', 'stage2', 'gallery', 'camera_bag', 'output_bag'):
        shutil.rmtree(out / name, ignore_errors=True)


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
