"""The m2a demo's steps: two Trainer stages on the synthetic recipes, a replay through the node,
a gallery and the figures. The command line (`m2a-demo`) is `m2a_training.cli.demo`, which
describes the steps in order.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from m2a_perception.config import config_search_path
from m2a_perception.metrics.pixel import SMIYC_PROTOCOL, PixelCurveAccumulator, PixelMetrics
from m2a_perception.pictures import read_rgb, write_outputs
from m2a_perception.pipeline import Segmenter
from m2a_perception.visualize import blend, colorize_scalar
from m2a_training.checkpointing import MODEL_FILE
from m2a_training.config import TrainConfig, load_train_config
from m2a_training.data.synthetic import FULL_FRAME_LABELS
from m2a_training.trainer import TrainingSummary

LOGGER = logging.getLogger(__name__)
STAGE_RECIPES = ('synthetic_stage1.yaml', 'synthetic_stage2.yaml')
CHECKPOINT_NAME = 'm2a_demo.safetensors'
# Ground-truth colours of the gallery: unseen obstacle red, void grey (over a dimmed input).
_OBSTACLE_RGB = np.array([230, 30, 30], np.uint8)
_VOID_RGB = np.array([128, 128, 128], np.uint8)


@dataclass(frozen=True)
class HottestRegionCount:
    """In how many held-out scenes the unseen obstacle holds the highest anomaly score (on the
    road, the scenes' evaluated region), and the full-frame pixel figures of the same maps."""

    hottest: int
    scenes: int
    gallery_hottest: int
    gallery_scenes: int
    full_frame: PixelMetrics


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
    full_frame = PixelCurveAccumulator(SMIYC_PROTOCOL)
    images = sorted((anomaly_root / 'images').glob('*.png'))
    for index, path in enumerate(images):
        image = read_rgb(path)
        label = np.asarray(Image.open(anomaly_root / 'labels_masks' / path.name))
        output = segmenter(image)
        anomaly = output.anomaly_map.float().cpu().numpy()
        full_frame.update(
            anomaly, np.asarray(Image.open(anomaly_root / FULL_FRAME_LABELS / path.name))
        )
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
    return HottestRegionCount(
        hottest, len(images), gallery_hottest, len(rows), full_frame.compute()
    )


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
