"""The shipped synthetic recipes on CPU: stage 1 learns the scenes, stage 2 learns anomalies.

Runs `config/train/synthetic_stage1.yaml`, then `synthetic_stage2.yaml` from the stage-1 model
selected by mIoU, exactly as a user would (`m2a-train`'s `train`), and scores both selected
models on a separately generated held-out world (other seed) whose anomaly scenes contain only
object types that never appear in training (rock, barrel, tyre, cone; the AnomalyMix outliers
are crates, balls, animals, stars and suitcases). Figures are printed (run with `-s`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m2a_perception.metrics.semantic import ConfusionMatrix
from m2a_perception.weights import load_checkpoint
from m2a_training.config import build_train_config, load_train_config
from m2a_training.data.cityscapes import CityscapesDataset
from m2a_training.data.synthetic import HELD_OUT_KINDS, generate_synthetic_world
from m2a_training.distributed import DistributedContext
from m2a_training.trainer import train
from m2a_training.validation import Validator

from .train_helpers import CONFIG_DIR

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures('single_thread')]


def held_out_validator(root: Path) -> Validator:
    generate_synthetic_world(
        root,
        num_train=0,
        num_val=24,
        num_anomaly_val=24,
        num_outlier_images=0,
        size=(128, 256),
        seed=101,
        anomaly_kinds=HELD_OUT_KINDS,
    )
    config = build_train_config(
        {
            'data': {'root': str(root)},
            'validation': {
                'anomaly_sets': [{'name': 'fs_lost_and_found', 'root': 'anomaly_val'}],
                'selection_metric': 'anomaly_auprc',
            },
            'logging': {'progress_bar': False},
        }
    )
    return Validator(config, DistributedContext())


def constant_prediction_miou(root: Path) -> float:
    """mIoU of predicting the most frequent class everywhere (the chance level to beat)."""
    val = CityscapesDataset(root / 'cityscapes', 'val')
    labels = [val.load(i).semantic for i in range(len(val))]
    counts = np.bincount(np.concatenate([x[x < 255] for x in labels]), minlength=19)
    confusion = ConfusionMatrix(19)
    for label in labels:
        confusion.update(np.full_like(label, int(counts.argmax())), label)
    return float(confusion.compute().miou)


@pytest.mark.timeout(2400)
def test_stage1_then_stage2_on_the_synthetic_world(tmp_path: Path) -> None:
    world = tmp_path / 'world'
    common = [f'data.root={world}', 'logging.progress_bar=false', 'runtime.device=cpu']
    stage1 = train(
        load_train_config(
            CONFIG_DIR / 'synthetic_stage1.yaml', [*common, f'output_dir={tmp_path / "s1"}']
        )
    )
    assert stage1.best_model is not None
    stage2 = train(
        load_train_config(
            CONFIG_DIR / 'synthetic_stage2.yaml',
            [
                *common,
                f'output_dir={tmp_path / "s2"}',
                f'model.init_checkpoint={stage1.best_model}',
            ],
        )
    )
    assert stage2.best_model is not None

    validator = held_out_validator(tmp_path / 'held_out')
    results = {}
    for name, path in (('stage 1', stage1.best_model), ('stage 2', stage2.best_model)):
        model, model_config = load_checkpoint(path)
        results[name] = validator.run(model, model_config).metrics
    chance_miou = constant_prediction_miou(tmp_path / 'held_out')
    losses = np.array([stage1.losses[i] for i in sorted(stage1.losses)])
    first, last = float(losses[:50].mean()), float(losses[-50:].mean())
    anomaly_fraction = float(
        np.mean(
            [
                (sample.label == 1).sum() / (sample.label != 255).sum()
                for sample in validator.anomaly_sets[0][0]
            ]
        )
    )

    s1, s2 = results['stage 1'], results['stage 2']
    auroc = 'fishyscapes_lost_and_found/auroc'
    print(
        '\nsynthetic world, held-out scenes (seed 101; anomalies of unseen types only):\n'
        f'  stage 1 training loss: first 50 iterations {first:.2f}, last 50 {last:.2f}\n'
        f'  stage 1 (best at {stage1.best_iteration}): mIoU {s1["miou"]:.3f} '
        f'(constant-prediction chance {chance_miou:.3f}), '
        f'anomaly AuPRC {s1["anomaly_auprc"]:.4f}, FPR95 {s1["anomaly_fpr95"]:.3f}, '
        f'AUROC {s1[auroc]:.3f}\n'
        f'  stage 2 (best at {stage2.best_iteration}): mIoU {s2["miou"]:.3f}, '
        f'anomaly AuPRC {s2["anomaly_auprc"]:.4f}, FPR95 {s2["anomaly_fpr95"]:.3f}, '
        f'AUROC {s2[auroc]:.3f}\n'
        f'  anomaly pixel fraction (AuPRC of a random score): {anomaly_fraction:.4f}'
    )
    assert last < 0.6 * first
    assert s1['miou'] > max(0.3, 3 * chance_miou)
    # Stage 1 scores anomalies at chance; stage 2 clearly above it and above stage 1.
    assert s2['anomaly_auprc'] > 1.4 * s1['anomaly_auprc']
    assert s2['anomaly_auprc'] > 1.5 * anomaly_fraction
    assert s2[auroc] > s1[auroc] + 0.1
    assert s2['miou'] > s1['miou'] - 0.04
