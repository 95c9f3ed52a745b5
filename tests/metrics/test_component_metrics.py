"""Component-level metrics (sIoU, PPV, F1*): hand-computed frames and a naive re-derivation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from m2a_perception.metrics.component import (
    ANOMALY_TRACK,
    OBSTACLE_TRACK,
    ComponentAccumulator,
    ComponentTrack,
    binarize_scores,
    evaluate_frame_components,
    siou_thresholds,
)

NO_SIZE_FILTER = ComponentTrack(name='none', min_prediction_size=0, min_gt_size=0)


def _frame_one() -> tuple[np.ndarray, np.ndarray]:
    """GT A (4 px) inside P1 (8 px), GT B (2 px) touched by P3 (2 px), P2 on background."""
    label = np.zeros((10, 12), dtype=np.uint8)
    label[9] = 255
    label[1:3, 1:3] = 1  # A
    label[1:3, 7] = 1  # B
    prediction = np.zeros((10, 12), dtype=bool)
    prediction[1:3, 1:5] = True  # P1: A plus 4 background pixels
    prediction[5:7, 8:10] = True  # P2: background only
    prediction[2:4, 7] = True  # P3: one pixel of B, one background pixel
    prediction[9, :] = True  # void: must be ignored
    return prediction, label


def _frame_two() -> tuple[np.ndarray, np.ndarray]:
    """One prediction Q (4 px) bridging GT C (2 px) and GT D (2 px)."""
    label = np.zeros((6, 8), dtype=np.uint8)
    label[1, 1:3] = 1  # C
    label[1, 5:7] = 1  # D
    prediction = np.zeros((6, 8), dtype=bool)
    prediction[1, 2:6] = True  # Q covers C at (1, 2), D at (1, 5) and two background pixels
    return prediction, label


def test_frame_one_by_hand() -> None:
    frame = evaluate_frame_components(*_frame_one(), NO_SIZE_FILTER)
    # sIoU(A) = |A ∩ P1| / (|P1| + |A| - |A ∩ P1|) = 4 / (8 + 4 - 4); sIoU(B) = 1 / (2 + 2 - 1).
    np.testing.assert_allclose(frame.siou_gt, [4 / 8, 1 / 3])
    # PPV: P1 = 4/8, P2 = 0/4, P3 = 1/2 (components ordered by scipy's raster scan: P1, P3, P2).
    np.testing.assert_allclose(frame.ppv_pred, [1 / 2, 1 / 2, 0.0])


def test_frame_two_adjustment_term_by_hand() -> None:
    frame = evaluate_frame_components(*_frame_two(), NO_SIZE_FILTER)
    # sIoU(C) = |C ∩ Q| / (|Q| + |C| - |C ∩ Q| - |Q ∩ D|) = 1 / (4 + 2 - 1 - 1), same for D.
    np.testing.assert_allclose(frame.siou_gt, [1 / 4, 1 / 4])
    np.testing.assert_allclose(frame.ppv_pred, [2 / 4])
    # sIoU of Q against the GT it touches: 2 / (4 + 4 - 2).
    np.testing.assert_allclose(frame.siou_pred, [2 / 6])


def test_dataset_f1_star_by_hand() -> None:
    accumulator = ComponentAccumulator(NO_SIZE_FILTER)
    accumulator.update(*_frame_one())
    accumulator.update(*_frame_two())
    metrics = accumulator.compute()
    # GT sIoU: 1/2, 1/3, 1/4, 1/4; PPV: 1/2, 0, 1/2, 1/2.
    assert metrics.siou == pytest.approx((1 / 2 + 1 / 3 + 1 / 4 + 1 / 4) / 4)
    assert metrics.ppv == pytest.approx(1.5 / 4)
    # τ = 0.25: TP 4, FN 0, FP 1 (PPV 0 < τ)        -> 8/9
    # τ = 0.30: TP 2 (1/2, 1/3), FN 2, FP 1         -> 4/7
    # τ = 0.35 .. 0.50: TP 1, FN 3, FP 1 (4 values) -> 2/6 each (0.5 >= 0.5 and 0.5 !< 0.5)
    # τ = 0.55 .. 0.75: TP 0, FN 4, FP 4 (5 values) -> 0
    expected_f1 = [8 / 9, 4 / 7, *[1 / 3] * 4, *[0.0] * 5]
    np.testing.assert_allclose(metrics.f1_per_threshold, expected_f1)
    assert metrics.f1_star == pytest.approx(sum(expected_f1) / 11)
    assert metrics.true_positives == (4, 2, 1, 1, 1, 1, 0, 0, 0, 0, 0)
    assert metrics.false_positives == (1,) * 6 + (4,) * 5
    assert (metrics.num_gt_components, metrics.num_pred_components) == (4, 4)


def test_thresholds_are_the_benchmarks_linspace() -> None:
    taus = siou_thresholds()
    assert taus.size == 11 and taus[0] == 0.25 and taus[-1] == 0.75
    # Compared as floats, so the benchmark's rounding matters (0.6 is 0.6000000000000001).
    np.testing.assert_array_equal(taus, np.linspace(0.25, 0.75, 11, endpoint=True))


def test_size_filters() -> None:
    label = np.zeros((12, 12), dtype=np.uint8)
    label[1:3, 1:3] = 1  # 4 px GT: kept with min_gt_size 3
    label[8, 8:10] = 1  # 2 px GT: becomes void
    prediction = np.zeros((12, 12), dtype=bool)
    prediction[1:3, 1:3] = True  # exact hit, 4 px
    prediction[8, 7:10] = True  # 3 px, two of them on the small (now void) GT
    prediction[5, 10] = True  # 1 px: deleted
    frame = evaluate_frame_components(prediction, label, ComponentTrack('t', 2, 3))
    np.testing.assert_allclose(frame.siou_gt, [1.0])
    # The second prediction keeps only its one non-void pixel, on background: PPV 0.
    np.testing.assert_allclose(frame.ppv_pred, [1.0, 0.0])


def test_background_smaller_than_min_gt_size_turns_void() -> None:
    # Benchmark quirk: "component 0" (all non-anomaly pixels) is size-filtered too.
    label = np.ones((4, 4), dtype=np.uint8)
    label[0, 0] = 0  # one background pixel < min_gt_size 2
    prediction = np.zeros((4, 4), dtype=bool)
    prediction[0, :2] = True  # one pixel on background (void now), one on the GT
    frame = evaluate_frame_components(prediction, label, ComponentTrack('t', 0, 2))
    np.testing.assert_allclose(frame.ppv_pred, [1.0])
    np.testing.assert_allclose(frame.siou_gt, [1 / 15])


def test_eight_connectivity() -> None:
    label = np.zeros((5, 5), dtype=np.uint8)
    label[1, 1] = label[2, 2] = 1  # diagonal neighbours: one component
    frame = evaluate_frame_components(label.astype(bool), label, NO_SIZE_FILTER)
    assert frame.siou_gt.tolist() == [1.0]


def test_binarisation_is_strict_and_uses_float16() -> None:
    scores = np.array([[0.5, 0.50001, 0.6]], dtype=np.float32)
    # 0.50001 rounds to 0.5 in float16, so only 0.6 is above the threshold 0.5.
    assert binarize_scores(scores, 0.5).tolist() == [[False, False, True]]
    assert binarize_scores(scores, 0.5, 'float32').tolist() == [[False, True, True]]


def test_tracks_and_empty_dataset() -> None:
    assert (ANOMALY_TRACK.min_prediction_size, ANOMALY_TRACK.min_gt_size) == (500, 100)
    assert (OBSTACLE_TRACK.min_prediction_size, OBSTACLE_TRACK.min_gt_size) == (50, 10)
    metrics = ComponentAccumulator().compute()
    assert np.isnan(metrics.siou) and np.isnan(metrics.f1_star)
    with pytest.raises(ValueError, match='same shape'):
        evaluate_frame_components(
            np.zeros((2, 2), bool), np.zeros((2, 3), np.uint8), OBSTACLE_TRACK
        )


def _naive_frame(prediction: np.ndarray, label: np.ndarray, track: ComponentTrack):
    """Literal transcription of the published definitions, one component at a time."""
    structure = np.ones((3, 3))
    predicted = prediction & (label != 255)
    gt, num_gt = ndimage.label(label == 1, structure)
    pred, num_pred = ndimage.label(predicted, structure)
    for component in range(1, num_pred + 1):
        if np.sum(pred == component) < track.min_prediction_size:
            pred[pred == component] = 0
    label = label.copy()
    for component in range(0, num_gt + 1):
        if np.sum(gt == component) < track.min_gt_size:
            label[gt == component] = 255
    roi = label != 255
    gt, pred = gt[roi], pred[roi]
    siou_gt = []
    for k in np.unique(gt[gt > 0]):
        touching = np.unique(pred[(gt == k) & (pred > 0)])
        in_touching = np.isin(pred, touching)
        intersection = np.sum((gt == k) & in_touching)
        adjustment = np.sum(in_touching & (gt > 0) & (gt != k))
        siou_gt.append(
            intersection / (in_touching.sum() + (gt == k).sum() - intersection - adjustment)
        )
    ppv = [np.sum((pred == j) & (gt > 0)) / np.sum(pred == j) for j in np.unique(pred[pred > 0])]
    return np.array(siou_gt), np.array(ppv)


@pytest.mark.parametrize('seed', range(6))
def test_matches_naive_transcription_on_random_blobs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    label = (ndimage.uniform_filter(rng.random((40, 60)), 5) > 0.55).astype(np.uint8)
    label[rng.random((40, 60)) < 0.03] = 255
    prediction = ndimage.uniform_filter(rng.random((40, 60)), 5) > 0.53
    track = ComponentTrack('t', min_prediction_size=4, min_gt_size=3)
    frame = evaluate_frame_components(prediction, label, track)
    siou_gt, ppv = _naive_frame(prediction, label, track)
    np.testing.assert_allclose(frame.siou_gt, siou_gt)
    np.testing.assert_allclose(frame.ppv_pred, ppv)


def test_merge_equals_sequential() -> None:
    whole, first, second = (ComponentAccumulator(NO_SIZE_FILTER) for _ in range(3))
    for accumulator, frame in ((first, _frame_one()), (second, _frame_two())):
        accumulator.update(*frame)
        whole.update(*frame)
    first.merge(second)
    assert first.compute() == whole.compute()
