"""Open-set semantic metrics: DenseHybrid open-IoU, its threshold rule, StreetHazards helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_curve

from m2a_perception.metrics.open_set import (
    OpenSetConfusion,
    calibrate_threshold,
    calibration_town,
    closed_set_target,
    downscale_for_calibration,
    weighted_town_mean,
)
from m2a_perception.metrics.pixel import FISHYSCAPES_PROTOCOL, PixelCurveAccumulator


def _curve(score: np.ndarray, label: np.ndarray):
    accumulator = PixelCurveAccumulator(FISHYSCAPES_PROTOCOL)
    accumulator.update(score.astype(np.float32), label.astype(np.uint8))
    return accumulator.curve()


def test_threshold_is_first_point_strictly_above_target() -> None:
    # 20 positives at 21..40, negatives at 1..20 except one at 21.5. TPR reaches exactly 0.95
    # at score 22 (19 of 20 positives) -> not > 0.95; the next point is score 21 (TPR 1.0).
    positives = np.arange(21, 41, dtype=np.float32)
    negatives = np.concatenate([np.arange(1, 20), [21.5]]).astype(np.float32)
    score = np.concatenate([positives, negatives])[None]
    label = np.concatenate([np.ones(20), np.zeros(20)])[None]
    point = calibrate_threshold(_curve(score, label))
    assert point.threshold == 21.0
    assert (point.tpr, point.fpr) == (1.0, 1 / 20)


def _densehybrid_threshold(labels: np.ndarray, scores: np.ndarray, rate: float = 0.95) -> float:
    # OODCalibration.calculate_stats, re-stated: walk roc_curve until TPR > rate.
    _, tpr, thresholds = roc_curve(labels, scores)
    for true_rate, threshold in zip(tpr, thresholds, strict=True):
        if true_rate > rate:
            return float(threshold)
    return 0.0


@pytest.mark.parametrize('seed', range(3))
def test_threshold_matches_densehybrid_walk_over_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    label = (rng.random((40, 50)) < 0.1).astype(np.uint8)
    score = (rng.normal(size=(40, 50)) + 2 * label).astype(np.float32)
    score[rng.random((40, 50)) < 0.2] = 1.0  # ties, so that drop_intermediate matters
    label[rng.random((40, 50)) < 0.05] = 255
    valid = label != 255
    expected = _densehybrid_threshold(label[valid], score[valid])
    assert calibrate_threshold(_curve(score, label)).threshold == expected


def test_open_iou_by_hand() -> None:
    # K = 2 known classes, anomaly = 2, threshold 0.5 (score > 0.5 -> anomaly).
    target = np.array([[0, 0, 1, 1, 2, 2, 255]])
    classes = np.array([[0, 0, 1, 0, 1, 0, 1]])
    score = np.array([[0.1, 0.9, 0.2, 0.3, 0.8, 0.4, 0.9]])
    confusion = OpenSetConfusion(num_known_classes=2, threshold=0.5)
    confusion.update(classes, score, target)
    metrics = confusion.compute()
    # Open predictions: 0, 2, 1, 0, 2, 0 (void dropped).
    # class 0: TP 1, FN 1 (rejected as anomaly), FP 2 (GT 1 -> 0, anomaly -> 0): 1/4.
    # class 1: TP 1, FN 1, FP 0: 1/2. anomaly: TP 1, FP 1, FN 1: 1/3.
    np.testing.assert_allclose(metrics.open_iou, [1 / 4, 1 / 2])
    assert metrics.open_miou == pytest.approx(3 / 8)
    assert metrics.anomaly_iou == pytest.approx(1 / 3)


def test_open_set_rejects_bad_inputs() -> None:
    confusion = OpenSetConfusion(num_known_classes=2, threshold=0.0)
    with pytest.raises(ValueError, match='class_prediction'):
        confusion.update(np.array([[2]]), np.array([[0.0]]), np.array([[0]]))
    with pytest.raises(ValueError, match='target values'):
        confusion.update(np.array([[1]]), np.array([[0.0]]), np.array([[3]]))


def test_closed_set_target_and_towns() -> None:
    assert closed_set_target(np.array([[0, 12, 255]]), 12).tolist() == [[0, 255, 255]]
    assert calibration_town('t5') == 't6' and calibration_town('t6') == 't5'
    with pytest.raises(ValueError, match='unknown StreetHazards town'):
        calibration_town('t4')
    assert weighted_town_mean({'t5': 0.5, 't6': 0.2}, {'t5': 3, 't6': 1}) == pytest.approx(0.425)


def test_downscale_matches_torch_interpolate() -> None:
    rng = np.random.default_rng(0)
    score = rng.random((7, 10)).astype(np.float32)
    label = rng.integers(0, 3, (7, 10)).astype(np.uint8)
    small_score, small_label = downscale_for_calibration(score, label)
    assert small_score.shape == small_label.shape == (3, 5)
    expected = F.interpolate(
        torch.from_numpy(score)[None, None], scale_factor=0.5, mode='bilinear'
    )[0, 0].numpy()
    np.testing.assert_array_equal(small_score, expected)
    assert small_label.dtype == np.uint8
