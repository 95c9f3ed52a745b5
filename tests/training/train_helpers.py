"""Shared set-up of the trainer tests: a tiny synthetic world and tiny-run configs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from m2a_training.config import TrainConfig, load_train_config
from m2a_training.data.synthetic import generate_synthetic_world

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / 'config' / 'train'


def make_tiny_world(root: Path) -> Path:
    """A few 64×128 scenes, outliers and anomaly frames (about a second to write)."""
    generate_synthetic_world(
        root,
        num_train=8,
        num_val=2,
        num_anomaly_val=2,
        num_outlier_images=4,
        size=(64, 128),
        seed=3,
    )
    return root


def tiny_overrides(world: Path, output_dir: Path, *, max_iters: int, period: int) -> list[str]:
    """Overrides that shrink the synthetic recipes to a seconds-long CPU run."""
    return [
        f'data.root={world}',
        'data.synthetic_world=null',
        f'output_dir={output_dir}',
        'model.config=tiny',
        'model.init_checkpoint=null',
        'data.augment.crop_size=[64, 96]',
        'data.augment.short_side_base=64',
        'solver.batch_size=2',
        f'solver.max_iters={max_iters}',
        'loss.num_points=256',
        f'checkpoint.period={period}',
        'checkpoint.keep_last=null',
        f'validation.period={period}',
        'logging.period=1',
        'logging.progress_bar=false',
        'logging.tensorboard=false',
        'runtime.device=cpu',
        'runtime.num_threads=1',
    ]


def tiny_stage2_config(
    world: Path, output_dir: Path, *, max_iters: int, period: int, extra: Sequence[str] = ()
) -> TrainConfig:
    """Stage 2 (AnomalyMix with probability 0.5 + contrastive loss) from random weights."""
    overrides = tiny_overrides(world, output_dir, max_iters=max_iters, period=period)
    overrides += ['data.anomaly_mix.probability=0.5', *extra]
    return load_train_config(CONFIG_DIR / 'synthetic_stage2.yaml', overrides)
