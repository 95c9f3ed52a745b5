"""Single-process training step: the tiny model's loss goes down on a synthetic batch."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from m2a_perception.config import load_model_config
from m2a_perception.model import build_model
from m2a_training.data.augment import AugmentConfig, Augmenter
from m2a_training.data.cityscapes import (
    CityscapesDataset,
    TrainingBatch,
    collate_training_batch,
)
from m2a_training.data.synthetic import generate_synthetic_world
from m2a_training.engine import build_optimizer, train_step
from m2a_training.losses import ContrastiveLossConfig, CriterionConfig, SetCriterion

pytestmark = pytest.mark.usefixtures('single_thread')


@pytest.fixture(scope='module')
def batch(tmp_path_factory: pytest.TempPathFactory) -> TrainingBatch:
    world = generate_synthetic_world(
        tmp_path_factory.mktemp('engine'),
        num_train=2,
        num_val=0,
        num_anomaly_val=0,
        num_outlier_images=0,
        size=(64, 128),
        seed=9,
    )
    config = load_model_config('tiny')
    augment = Augmenter(AugmentConfig(crop_size=(64, 96), short_side_base=64, color_jitter=False))
    dataset = CityscapesDataset(world.cityscapes_root, 'train', transform=augment)
    samples = [dataset[(i, 0)] for i in range(2)]
    collated = collate_training_batch(
        samples, pixel_mean=config.preprocess.pixel_mean, pixel_std=config.preprocess.pixel_std
    )
    # Mark a block as pasted outlier so the stage-2 loss has both terms.
    ood = collated.ood_masks.clone()
    ood[0, 20:30, 40:60] = True
    return replace(collated, ood_masks=ood)


def test_loss_decreases_over_twenty_steps(batch: TrainingBatch) -> None:
    torch.manual_seed(0)
    model = build_model(load_model_config('tiny'))
    criterion = SetCriterion(
        CriterionConfig(num_points=1024, contrastive=ContrastiveLossConfig(margin=0.75))
    )
    optimizer = build_optimizer(model, lr=1e-3)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    trainable = {id(p) for g in optimizer.param_groups for p in g['params']}
    assert trainable == {id(p) for p in model.parameters() if p.requires_grad}

    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        result = train_step(model, criterion, optimizer, batch, generator=generator)
        losses.append(result.loss)
        assert 'loss_ood' in result.terms
        assert 'loss_ce_0' in result.terms
    # Observed on CPU: about 55 -> 42 (mean of the first vs the last three steps).
    assert sum(losses[-3:]) / 3 < 0.85 * sum(losses[:3]) / 3


def test_non_finite_loss_stops_without_stepping(batch: TrainingBatch) -> None:
    torch.manual_seed(0)
    model = build_model(load_model_config('tiny'))
    criterion = SetCriterion(CriterionConfig(num_points=64))
    optimizer = build_optimizer(model)
    before = [p.detach().clone() for g in optimizer.param_groups for p in g['params']]
    broken = replace(batch, images=batch.images * float('nan'))
    with pytest.raises(FloatingPointError, match='non-finite'):
        train_step(model, criterion, optimizer, broken)
    after = [p for g in optimizer.param_groups for p in g['params']]
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
