"""Anomaly scorers: known answers and agreement with direct numpy formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2a_perception.postprocess import (
    SCORERS,
    compute_anomaly_score,
    compute_class_scores,
    compute_query_probabilities,
    postprocess,
    scorer_floor,
)
from tests.postprocess.postprocess_builders import (
    NUM_CLASSES,
    ROAD,
    box_mask,
    confident,
    identity_record,
    mask_logit,
    quiet_config,
    spread,
    stack_queries,
)

SIZE = (8, 12)


def _numpy_inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    class_logits = rng.normal(0.0, 3.0, size=(7, NUM_CLASSES + 1))
    mask_logits = rng.normal(0.0, 4.0, size=(7, *SIZE))
    return class_logits, mask_logits


def _numpy_probabilities(class_logits: np.ndarray, mask_logits: np.ndarray):
    shifted = np.exp(class_logits - class_logits.max(1, keepdims=True))
    probs = shifted / shifted.sum(1, keepdims=True)
    masks = 1.0 / (1.0 + np.exp(-mask_logits))
    scores = np.einsum('qk,qhw->khw', probs[:, :-1], masks)
    return probs, masks, scores


def _numpy_score(name: str, probs: np.ndarray, masks: np.ndarray, scores: np.ndarray):
    if name == 'mask2anomaly':
        return 1.0 - scores.max(0)
    if name == 'max_logit':
        return -scores.max(0)
    if name == 'rba':
        return -np.tanh(scores).sum(0)
    if name == 'energy':
        top = scores.max(0)
        return -(top + np.log(np.exp(scores - top).sum(0)))
    if name == 'neg_logit_sum':
        return -scores.sum(0)
    if name == 'entropy':
        p = scores / scores.sum(0, keepdims=True)
        return -(p * np.log(p)).sum(0) / np.log(NUM_CLASSES)
    if name == 'eam':
        return 1.0 - np.einsum('q,qhw->hw', probs[:, :-1].max(1), masks)
    raise AssertionError(name)


@pytest.mark.parametrize('name', SCORERS)
def test_scorer_matches_numpy_formula(name):
    class_logits, mask_logits = _numpy_inputs()
    probs, masks, scores = _numpy_probabilities(class_logits, mask_logits)
    class_probs, mask_probs = compute_query_probabilities(
        torch.from_numpy(class_logits).float(), torch.from_numpy(mask_logits).float()
    )
    class_scores = compute_class_scores(class_probs, mask_probs)
    np.testing.assert_allclose(class_scores.numpy(), scores, rtol=1e-5, atol=1e-6)
    got = compute_anomaly_score(name, class_scores, class_probs, mask_probs)
    assert got.shape == SIZE
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _numpy_score(name, probs, masks, scores), atol=2e-5)


def test_unknown_scorer_is_rejected():
    class_probs = torch.full((1, NUM_CLASSES + 1), 1.0 / (NUM_CLASSES + 1))
    with pytest.raises(ValueError, match='unknown scorer'):
        compute_anomaly_score(
            'msp', torch.zeros(NUM_CLASSES, 2, 2), class_probs, torch.ones(1, 2, 2)
        )


def test_confident_road_query_scores_low_and_spread_query_scores_high():
    left = box_mask(SIZE, 0, 0, SIZE[0], SIZE[1] // 2)
    right = ~left
    road = (confident(ROAD), mask_logit(left))
    unsure = (spread(), mask_logit(right))
    class_logits, mask_logits = stack_queries([road, unsure], SIZE)
    # No refinement here: the road query must score low by itself.
    output = postprocess(
        class_logits, mask_logits, identity_record(SIZE), quiet_config(refinement='off')
    )
    anomaly = output.anomaly_map.numpy()
    assert anomaly[left].max() < 1e-3
    # Uniform over K+1 gives each known class 1/20, so the score is 1 - 1/20.
    np.testing.assert_allclose(anomaly[right], 1.0 - 1.0 / (NUM_CLASSES + 1), atol=1e-4)


@pytest.mark.parametrize(
    ('name', 'expected'),
    [
        ('mask2anomaly', 0.0),
        ('max_logit', -1.0),
        ('rba', -float(np.tanh(1.0))),
        ('energy', -float(np.log(np.e + NUM_CLASSES - 1))),
        ('neg_logit_sum', -1.0),
        ('entropy', 0.0),
        ('eam', 0.0),
    ],
)
def test_scorer_floor_is_the_score_of_a_certain_known_pixel(name, expected):
    assert scorer_floor(name, NUM_CLASSES) == pytest.approx(expected, abs=1e-6)
