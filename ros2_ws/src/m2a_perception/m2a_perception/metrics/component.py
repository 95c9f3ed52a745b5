"""Component-level anomaly metrics of SegmentMeIfYouCan: sIoU, PPV and F1*.

Definitions follow `road_anomaly_benchmark/metrics/instance_segmentation.py` (metric
`SegEval-AnomalyTrack` / `SegEval-ObstacleTrack`):

1. prediction = score > threshold (strict), void pixels zeroed. The benchmark's threshold is the
   best-pixel-F1 threshold of the same method on the same dataset
   (`PixelMetrics.best_f1_threshold`), so a streaming evaluator runs the pixel pass first and this
   one second (or keeps the float16 score maps, as the benchmark does in HDF5).
2. connected components with 8-connectivity (3x3 ones structure) for prediction and ground truth.
3. predicted components smaller than `min_prediction_size` pixels are deleted; ground-truth
   components smaller than `min_gt_size` become void (anomaly track 500 / 100, obstacle track and
   Lost&Found 50 / 10); then everything is restricted to the non-void region.
4. sIoU(k) = |k ∩ K(k)| / (|k| + |K(k)| - |k ∩ K(k)| - |A(k)|) where K(k) is the union of the
   predicted components touching ground-truth component k and A(k) the pixels of K(k) lying on
   other ground-truth components; PPV(j) = |j ∩ ground-truth anomaly| / |j|.
5. for τ in np.linspace(0.25, 0.75, 11): TP = #GT with sIoU >= τ, FN = #GT with sIoU < τ,
   FP = #predicted components with PPV < τ, counts summed over the dataset;
   F1(τ) = 2TP / (2TP + FN + FP) and F1* = mean over τ. sIoU and PPV are means over all
   components of the dataset (component-weighted, not per image).

One benchmark quirk is kept on purpose: its size filter also visits the background "component" 0,
so a frame with fewer than `min_gt_size` non-anomaly pixels has its whole background made void.

Allowed dependencies: numpy, scipy, torch (tensor inputs only).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from m2a_perception.classes import VOID_ID
from m2a_perception.metrics._common import (
    check_2d,
    check_same_shape,
    to_anomaly_label,
    to_numpy,
    to_score_map,
)
from m2a_perception.metrics.pixel import ScoreDtype, round_scores


@dataclass(frozen=True)
class ComponentTrack:
    """Minimum component sizes of one SMIYC track.

    Attributes:
        name: track name written into results.
        min_prediction_size: predicted components with fewer pixels are deleted.
        min_gt_size: ground-truth components with fewer pixels are turned into void.
    """

    name: str
    min_prediction_size: int
    min_gt_size: int

    def __post_init__(self) -> None:
        if self.min_prediction_size < 0 or self.min_gt_size < 0:
            raise ValueError(
                f'component sizes must be >= 0, got {self.min_prediction_size} and '
                f'{self.min_gt_size}'
            )


ANOMALY_TRACK = ComponentTrack(name='anomaly', min_prediction_size=500, min_gt_size=100)
"""RoadAnomaly21 (`SegEval-AnomalyTrack`)."""

OBSTACLE_TRACK = ComponentTrack(name='obstacle', min_prediction_size=50, min_gt_size=10)
"""RoadObstacle21 and Lost&Found (`SegEval-ObstacleTrack`)."""


def siou_thresholds() -> np.ndarray:
    """The 11 values of τ, built like the benchmark (sIoU >= τ is sensitive to their rounding)."""
    return np.linspace(0.25, 0.75, 11, endpoint=True)


@dataclass(frozen=True)
class FrameComponents:
    """Per-component scores of one frame.

    Attributes:
        siou_gt: (G,) float64 sIoU of each ground-truth component.
        siou_pred: (P,) float64 sIoU of each predicted component (the benchmark's `sIoU_pred`).
        ppv_pred: (P,) float64 positive predictive value of each predicted component.
    """

    siou_gt: np.ndarray
    siou_pred: np.ndarray
    ppv_pred: np.ndarray


@dataclass(frozen=True)
class ComponentMetrics:
    """Dataset-level component metrics as fractions (NaN when undefined).

    Attributes:
        track: track name.
        siou: mean sIoU over all ground-truth components (leaderboard "sIoU gt").
        ppv: mean PPV over all predicted components (leaderboard "PPV").
        f1_star: mean of F1(τ) over the 11 thresholds (leaderboard "F1*").
        siou_pred: mean sIoU over predicted components.
        thresholds: the τ values.
        f1_per_threshold: F1(τ) for each τ.
        true_positives, false_negatives, false_positives: counts for each τ.
        num_gt_components, num_pred_components, num_frames: totals.
    """

    track: str
    siou: float
    ppv: float
    f1_star: float
    siou_pred: float
    thresholds: tuple[float, ...]
    f1_per_threshold: tuple[float, ...]
    true_positives: tuple[int, ...]
    false_negatives: tuple[int, ...]
    false_positives: tuple[int, ...]
    num_gt_components: int
    num_pred_components: int
    num_frames: int

    def as_dict(self) -> dict[str, object]:
        """Plain dict for JSON reports."""
        return dataclasses.asdict(self)


def binarize_scores(
    anomaly_score: np.ndarray | torch.Tensor, threshold: float, score_dtype: ScoreDtype = 'float16'
) -> np.ndarray:
    """(H, W) scores -> (H, W) bool prediction, score > threshold after rounding to score_dtype.

    SMIYC compares its stored float16 scores with the threshold, so the rounding has to match the
    pixel protocol that produced the threshold.
    """
    return round_scores(to_score_map(anomaly_score), score_dtype) > threshold


def _label_8_connected(mask: np.ndarray) -> tuple[np.ndarray, int]:
    components, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return components, int(count)


def _sum_by(index: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(index, weights=weights, minlength=size)


def evaluate_frame_components(
    prediction: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor, track: ComponentTrack
) -> FrameComponents:
    """sIoU and PPV of the components of one frame.

    Args:
        prediction: (H, W) bool (or 0/1) anomaly prediction.
        label: (H, W) integers, 0 = inlier, 1 = anomaly, 255 = void.
        track: minimum component sizes.

    Returns:
        Per-component scores, components in increasing label order.
    """
    label_map, histogram = to_anomaly_label(label)
    predicted = to_numpy(prediction, 'prediction')
    check_2d(predicted, 'prediction')
    check_same_shape(predicted, label_map, ('prediction', 'label'))
    predicted = predicted.astype(bool) & (label_map != VOID_ID)

    gt_components, num_gt = _label_8_connected(label_map == 1)
    pred_components, num_pred = _label_8_connected(predicted)

    # Only pixels on a GT or predicted component matter; void pixels are on neither, so the
    # rest of the work runs on this (usually small) subset.
    flat_gt = gt_components.ravel()
    flat_pred = pred_components.ravel()
    foreground = np.flatnonzero((flat_gt > 0) | (flat_pred > 0))
    gt_fg = flat_gt[foreground].astype(np.int64)
    pred_fg = flat_pred[foreground].astype(np.int64)

    # Size filters count pixels before the ROI restriction, as the benchmark does.
    pred_sizes = np.bincount(pred_fg, minlength=num_pred + 1)
    kept = pred_sizes >= track.min_prediction_size
    kept[0] = False
    relabel = np.zeros(num_pred + 1, dtype=np.int64)
    relabel[kept] = np.arange(1, int(kept.sum()) + 1)
    pred_fg = relabel[pred_fg]
    num_pred = int(kept.sum())

    gt_sizes = np.bincount(gt_fg, minlength=num_gt + 1)
    # Index 0 is the background, all non-anomaly pixels (see the module docstring).
    gt_sizes[0] = label_map.size - int(histogram[1])
    too_small = gt_sizes < track.min_gt_size
    in_roi = ~too_small[gt_fg]
    gt_in_roi = gt_fg[in_roi]
    pred_in_roi = pred_fg[in_roi]
    gt_area = np.bincount(gt_in_roi, minlength=num_gt + 1).astype(np.float64)
    pred_area = np.bincount(pred_in_roi, minlength=num_pred + 1).astype(np.float64)

    # Sparse contingency table between ground-truth and predicted components.
    both = (gt_in_roi > 0) & (pred_in_roi > 0)
    pair_codes, overlap = np.unique(
        gt_in_roi[both] * (num_pred + 1) + pred_in_roi[both], return_counts=True
    )
    pair_gt, pair_pred = np.divmod(pair_codes, num_pred + 1)
    overlap = overlap.astype(np.float64)

    gt_covered = _sum_by(pair_gt, overlap, num_gt + 1)  # |k ∩ K(k)|
    pred_on_gt = _sum_by(pair_pred, overlap, num_pred + 1)  # |j ∩ GT anomaly|

    gt_ids = np.flatnonzero(gt_area > 0)
    gt_ids = gt_ids[gt_ids > 0]
    touching_pred_area = _sum_by(pair_gt, pred_area[pair_pred], num_gt + 1)
    # Pixels of the touching predictions that lie on *other* ground-truth components.
    gt_adjustment = _sum_by(pair_gt, pred_on_gt[pair_pred] - overlap, num_gt + 1)
    gt_union = touching_pred_area + gt_area - gt_covered - gt_adjustment
    siou_gt = gt_covered[gt_ids] / gt_union[gt_ids]

    pred_ids = np.flatnonzero(pred_area > 0)
    pred_ids = pred_ids[pred_ids > 0]
    touching_gt_area = _sum_by(pair_pred, gt_area[pair_gt], num_pred + 1)
    pred_adjustment = _sum_by(pair_pred, gt_covered[pair_gt] - overlap, num_pred + 1)
    pred_union = touching_gt_area + pred_area - pred_on_gt - pred_adjustment
    siou_pred = pred_on_gt[pred_ids] / pred_union[pred_ids]
    ppv_pred = pred_on_gt[pred_ids] / pred_area[pred_ids]
    return FrameComponents(siou_gt=siou_gt, siou_pred=siou_pred, ppv_pred=ppv_pred)


class ComponentAccumulator:
    """Streams frames into dataset-level sIoU / PPV / F1* (constant memory).

    Usage:
        threshold = pixel_metrics.best_f1_threshold  # from a first pass, same dataset
        accumulator = ComponentAccumulator(ANOMALY_TRACK)
        for score, label in frames:
            accumulator.update_from_scores(score, label, threshold)
        metrics = accumulator.compute()
    """

    def __init__(self, track: ComponentTrack = ANOMALY_TRACK) -> None:
        self.track = track
        self.thresholds = siou_thresholds()
        self.num_frames = 0
        self.num_gt = 0
        self.num_pred = 0
        self.siou_gt_sum = 0.0
        self.siou_pred_sum = 0.0
        self.ppv_sum = 0.0
        self.true_positives = np.zeros(self.thresholds.size, dtype=np.int64)
        self.false_negatives = np.zeros(self.thresholds.size, dtype=np.int64)
        self.false_positives = np.zeros(self.thresholds.size, dtype=np.int64)

    def update(
        self, prediction: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor
    ) -> FrameComponents:
        """Add one frame given its binary prediction (H, W); returns its per-component scores."""
        frame = evaluate_frame_components(prediction, label, self.track)
        self.num_frames += 1
        self.num_gt += frame.siou_gt.size
        self.num_pred += frame.ppv_pred.size
        # Per-frame sums first, then across frames, like the benchmark's aggregation.
        self.siou_gt_sum += float(np.sum(frame.siou_gt))
        self.siou_pred_sum += float(np.sum(frame.siou_pred))
        self.ppv_sum += float(np.sum(frame.ppv_pred))
        taus = self.thresholds[:, None]
        self.true_positives += np.count_nonzero(frame.siou_gt[None, :] >= taus, axis=1)
        self.false_negatives += np.count_nonzero(frame.siou_gt[None, :] < taus, axis=1)
        self.false_positives += np.count_nonzero(frame.ppv_pred[None, :] < taus, axis=1)
        return frame

    def update_from_scores(
        self,
        anomaly_score: np.ndarray | torch.Tensor,
        label: np.ndarray | torch.Tensor,
        threshold: float,
        score_dtype: ScoreDtype = 'float16',
    ) -> FrameComponents:
        """Add one frame given its (H, W) scores; anomaly = score > threshold (see
        `binarize_scores`)."""
        return self.update(binarize_scores(anomaly_score, threshold, score_dtype), label)

    def merge(self, other: ComponentAccumulator) -> None:
        """Fold in another accumulator of the same track."""
        if other.track != self.track:
            raise ValueError(f'cannot merge tracks {self.track} and {other.track}')
        self.num_frames += other.num_frames
        self.num_gt += other.num_gt
        self.num_pred += other.num_pred
        self.siou_gt_sum += other.siou_gt_sum
        self.siou_pred_sum += other.siou_pred_sum
        self.ppv_sum += other.ppv_sum
        self.true_positives += other.true_positives
        self.false_negatives += other.false_negatives
        self.false_positives += other.false_positives

    def compute(self) -> ComponentMetrics:
        """Dataset-level metrics; F1(τ) is NaN when there is neither a GT nor a predicted
        component (the benchmark divides by zero there)."""
        with np.errstate(divide='ignore', invalid='ignore'):
            f1 = (2 * self.true_positives) / (
                2 * self.true_positives + self.false_negatives + self.false_positives
            ).astype(np.float64)
        return ComponentMetrics(
            track=self.track.name,
            siou=self.siou_gt_sum / self.num_gt if self.num_gt else float('nan'),
            ppv=self.ppv_sum / self.num_pred if self.num_pred else float('nan'),
            f1_star=float(np.mean(f1)),
            siou_pred=self.siou_pred_sum / self.num_pred if self.num_pred else float('nan'),
            thresholds=tuple(float(tau) for tau in self.thresholds),
            f1_per_threshold=tuple(float(value) for value in f1),
            true_positives=tuple(int(count) for count in self.true_positives),
            false_negatives=tuple(int(count) for count in self.false_negatives),
            false_positives=tuple(int(count) for count in self.false_positives),
            num_gt_components=self.num_gt,
            num_pred_components=self.num_pred,
            num_frames=self.num_frames,
        )
