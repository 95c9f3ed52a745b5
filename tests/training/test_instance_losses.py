"""Known answers for the centroid instance-head losses (seed 004 Eq. 2-5, 10, 12-14)."""

from __future__ import annotations

import math

import pytest
import torch

from m2a_perception.config import load_model_config
from m2a_perception.model import build_model
from m2a_perception.model.instance_head import centroid_positional_embedding
from m2a_perception.types import TrainingOutput
from m2a_training.losses import CriterionConfig
from m2a_training.losses.criterion import SetCriterion
from m2a_training.losses.instance import (
    centroid_loss,
    centroid_targets,
    compute_instance_losses,
    edge_distance_weights,
    generalized_dice_loss,
    instance_centroids,
    instance_id_map,
    total_variation_loss,
)
from m2a_training.losses.targets import MaskTargets


def test_instance_ids_take_thing_masks_at_the_embedding_resolution():
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True  # a thing (class 11)
    masks[1] = True  # stuff (road, class 0): not an instance
    masks[2, 4:, 4:] = True  # another thing (class 13)
    targets = MaskTargets(torch.tensor([11, 0, 13]), masks)
    ids = instance_id_map(targets, (11, 13), (4, 4))
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]])
    assert torch.equal(ids, expected)


def test_centroids_are_cell_centre_means_in_minus_one_one():
    ids = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 2], [0, 0, 0, 0]])
    centroids = instance_centroids(ids, 2)
    # Instance 1: columns 0, 1 -> u = (-0.75 - 0.25) / 2; rows likewise. Instance 2: one pixel.
    expected = torch.tensor([[0.0, 0.0], [-0.5, -0.5], [0.75, 0.25]])
    torch.testing.assert_close(centroids, expected)


def test_targets_are_the_centroid_code_inside_and_zero_outside():
    ids = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]])
    targets = centroid_targets(ids, harmonics=2)
    assert targets.shape == (8, 2, 4)
    # u = -0.5 (columns 0, 1 of 4), v = 0 (both rows of 2).
    code = centroid_positional_embedding(torch.tensor([-0.5, 0.0]), 2)
    for row in range(2):
        torch.testing.assert_close(targets[:, row, 0], code)
        torch.testing.assert_close(targets[:, row, 1], code)
        assert torch.equal(targets[:, row, 2:], torch.zeros(8, 2))
    assert targets[0, 0, 0].item() == pytest.approx(math.sin(-0.5 * math.pi))


def test_edge_distance_weights_follow_eq5():
    ids = torch.tensor([[0, 0, 1, 1, 1]])
    # Boundary pixels 1 and 2; distances 1, 0, 0, 1, 2.
    weights = edge_distance_weights(ids, min_weight=0.0, distance=1.0)
    expected = torch.tensor([[math.exp(-1), 1.0, 1.0, math.exp(-1), math.exp(-4)]])
    torch.testing.assert_close(weights, expected)
    half = edge_distance_weights(ids, min_weight=0.5, distance=2.0)
    torch.testing.assert_close(half, 0.5 + 0.5 * torch.exp(-torch.tensor([[1.0, 0, 0, 1, 4]]) / 4))
    # No boundary at all: every pixel gets w_min.
    assert torch.equal(
        edge_distance_weights(torch.zeros(2, 3, dtype=torch.long), 0.25, 20.0),
        torch.full((2, 3), 0.25),
    )


def test_centroid_loss_is_half_the_sum_of_the_u_and_v_distances():
    target = torch.zeros(8, 1, 2)  # L = 2: channels 0..3 are u, 4..7 are v
    prediction = target.clone()
    prediction[0, 0, 0], prediction[1, 0, 0] = 3.0, 4.0  # ‖Δ_u‖ = 5 at pixel 0
    prediction[6, 0, 1] = 2.0  # ‖Δ_v‖ = 2 at pixel 1
    weights = torch.tensor([[1.0, 0.5]])
    weighted, weight_sum = centroid_loss(prediction, target, weights)
    assert weighted.item() == pytest.approx(1.0 * 2.5 + 0.5 * 1.0)
    assert weight_sum.item() == pytest.approx(1.5)


def test_total_variation_uses_the_euclidean_norm_over_channels():
    prediction = torch.zeros(2, 2, 2)
    prediction[0, :, 1], prediction[1, :, 1] = 3.0, 4.0  # right column differs by (3, 4)
    # Vertical differences 0; horizontal 5 on both rows: mean 5.
    assert total_variation_loss(prediction).item() == pytest.approx(5.0)
    flat = torch.ones(4, 3, 3, requires_grad=True)
    loss = total_variation_loss(flat)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(flat.grad, torch.zeros(4, 3, 3))  # no NaN from the norm at 0


def test_generalized_dice_of_a_perfect_prediction_leaves_only_the_void_membership():
    ids = torch.tensor([[1, 1, 0, 0]])
    harmonics = 1
    prediction = centroid_targets(ids, harmonics)  # exact codes inside, 0 on void pixels
    # Void pixels predict 0: d_u² = d_v² = ‖γ‖² = L, so p = exp(-2L) there; p = 1 inside.
    void_p = math.exp(-2 * harmonics)
    area = 2
    expected = 1 - 2 * area / (2 * area + 2 * void_p)
    assert generalized_dice_loss(prediction, ids, harmonics).item() == pytest.approx(expected)
    assert generalized_dice_loss(prediction, torch.zeros_like(ids), harmonics) is None


def _two_instance_targets() -> MaskTargets:
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[0, 4:12, 4:12] = True
    masks[1, 16:28, 8:28] = True
    masks[2] = ~(masks[0] | masks[1])
    return MaskTargets(torch.tensor([11, 13, 0]), masks)


def test_batch_losses_vanish_for_exact_codes_except_dice_void_term():
    targets = [_two_instance_targets()]
    ids = instance_id_map(targets[0], (11, 13), (8, 8))
    embedding = centroid_targets(ids, 4)[None]
    centroid, tv, dice = compute_instance_losses(embedding, targets, (11, 13))
    assert centroid.item() == pytest.approx(0.0, abs=1e-6)
    # TV of a piecewise-constant code is its jumps only: strictly positive, and smaller for a
    # constant (all-void) prediction, which has none.
    assert tv.item() > 0
    _, flat_tv, _ = compute_instance_losses(torch.zeros_like(embedding), targets, (11, 13))
    assert flat_tv.item() == 0.0
    assert 0 <= dice.item() < 0.01


def test_criterion_adds_the_weighted_instance_terms_only_with_the_head():
    torch.manual_seed(0)
    model = build_model(load_model_config('tiny_centroid')).train()
    images = torch.randn(1, 3, 32, 32)
    targets = [_two_instance_targets()]
    outputs = model(images)
    weights = {'centroid_weight': 2.0, 'centroid_tv_weight': 0.5, 'centroid_dice_weight': 3.0}
    generator = torch.Generator().manual_seed(0)
    base = SetCriterion(
        CriterionConfig(
            num_points=64, centroid_weight=0, centroid_tv_weight=0, centroid_dice_weight=0
        )
    )
    weighted = SetCriterion(CriterionConfig(num_points=64, **weights))
    zero = base(outputs, targets, generator=generator)
    generator = torch.Generator().manual_seed(0)
    full = weighted(outputs, targets, generator=generator)
    extra = (
        2.0 * full.terms['loss_centroid']
        + 0.5 * full.terms['loss_centroid_tv']
        + 3.0 * full.terms['loss_centroid_dice']
    )
    assert full.total.item() == pytest.approx(zero.total.item() + extra.item(), rel=1e-5)
    full.total.backward()
    grad = model.sem_seg_head.instance_head.projection.weight.grad
    assert grad is not None and bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0
    plain = TrainingOutput(*outputs[:4])
    assert not any('centroid' in key for key in base(plain, targets).terms)


def test_criterion_rejects_bad_instance_settings():
    with pytest.raises(ValueError, match='centroid_eds_min_weight'):
        CriterionConfig(centroid_eds_min_weight=1.5)
    with pytest.raises(ValueError, match='centroid_eds_distance'):
        CriterionConfig(centroid_eds_distance=0.0)
    with pytest.raises(ValueError, match='non-negative'):
        CriterionConfig(centroid_tv_weight=-1.0)
