"""Open-set semantic segmentation: open-IoU as DenseHybrid defines it, and StreetHazards helpers.

DenseHybrid (`evaluate_osr.py`, `utils/iou.py: OpenIoU`):

- threshold: on *another* split, walk scikit-learn's `roc_curve` (anomaly = positive,
  `drop_intermediate=True`, ignore pixels removed) and take the first point with TPR > 0.95
  (strict); its threshold is used as is. On StreetHazards the two test towns t5 and t6 calibrate
  each other, with scores downscaled bilinearly by 0.5 and labels by nearest neighbour;
- prediction: argmax over the K known classes, replaced by K (anomaly) where score > threshold;
- a (K + 1) x (K + 1) confusion matrix over non-ignored pixels gives IoU_c = TP / (TP + FP + FN),
  so a known pixel rejected as anomaly is an FN of its class and an anomaly accepted as class c an
  FP of c;
- open-mIoU = nanmean of the K known-class IoUs (anomaly IoU reported separately, not averaged);
  the StreetHazards result is the image-count-weighted mean of the t5 and t6 results.

Closed-set reference mIoU on the same data: `closed_set_target` turns anomaly pixels into ignore
and `ConfusionMatrix` does the rest.

Allowed dependencies: numpy, torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from m2a_perception.classes import VOID_ID
from m2a_perception.metrics._common import (
    check_2d,
    check_same_shape,
    to_numpy,
    to_score_map,
)
from m2a_perception.metrics.pixel import TARGET_TPR, PixelCurve, roc_points
from m2a_perception.metrics.semantic import iou_from_confusion

STREETHAZARDS_TOWNS = ('t5', 't6')
"""The two StreetHazards test towns; each is evaluated with a threshold calibrated on the other."""

CALIBRATION_SCALE = 0.5
"""DenseHybrid calibrates on half-resolution maps."""


@dataclass(frozen=True)
class OperatingPoint:
    """A point of the ROC curve: predict anomaly where score > threshold (DenseHybrid)."""

    threshold: float
    tpr: float
    fpr: float


def calibrate_threshold(curve: PixelCurve, target_tpr: float = TARGET_TPR) -> OperatingPoint:
    """DenseHybrid's `OODCalibration.calculate_stats`: first ROC point with TPR > target.

    Args:
        curve: pooled curve of the calibration split; use an exact float32 protocol
            (`FISHYSCAPES_PROTOCOL`) so that the points equal scikit-learn's.
        target_tpr: 0.95 (DenseHybrid's `--tpr` default).

    Raises:
        ValueError: if the curve has no positives or never exceeds the target.
    """
    if curve.num_positives == 0:
        raise ValueError('cannot calibrate a threshold without anomaly pixels')
    fpr, tpr, thresholds = roc_points(curve, drop_intermediate=True)
    above = np.flatnonzero(tpr > target_tpr)
    if above.size == 0:
        raise ValueError(f'no ROC point has TPR > {target_tpr}')
    index = int(above[0])
    return OperatingPoint(
        threshold=float(thresholds[index]), tpr=float(tpr[index]), fpr=float(fpr[index])
    )


def downscale_for_calibration(
    anomaly_score: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    scale: float = CALIBRATION_SCALE,
) -> tuple[np.ndarray, np.ndarray]:
    """Resize like DenseHybrid's calibration loader (torch `F.interpolate` with scale_factor).

    Args:
        anomaly_score: (H, W) float scores.
        label: (H, W) integer labels.
        scale: resize factor.

    Returns:
        (h, w) float32 scores (bilinear, align_corners=False) and (h, w) labels (nearest) with
        h = floor(H * scale), w = floor(W * scale).
    """
    score = torch.as_tensor(to_score_map(anomaly_score), dtype=torch.float32)
    labels = torch.as_tensor(to_numpy(label, 'label'))
    if score.shape != labels.shape:
        raise ValueError(f'shapes differ: {tuple(score.shape)} vs {tuple(labels.shape)}')
    small_score = F.interpolate(score[None, None], scale_factor=scale, mode='bilinear')[0, 0]
    small_label = F.interpolate(labels[None, None].float(), scale_factor=scale, mode='nearest')
    return small_score.numpy(), small_label[0, 0].numpy().astype(labels.numpy().dtype)


def closed_set_target(
    target: np.ndarray | torch.Tensor, num_known_classes: int, ignore_index: int = VOID_ID
) -> np.ndarray:
    """(H, W) open-set GT -> closed-set GT: the anomaly class K becomes `ignore_index`."""
    truth = to_numpy(target, 'target').copy()
    truth[truth == num_known_classes] = ignore_index
    return truth


@dataclass(frozen=True)
class OpenSetMetrics:
    """open-IoU results as fractions.

    Attributes:
        open_iou: (K,) open-IoU per known class (NaN if the class never occurs).
        open_miou: nanmean of `open_iou`.
        anomaly_iou: IoU of the anomaly class (reported separately, DenseHybrid).
        threshold: the score threshold used.
    """

    open_iou: tuple[float, ...]
    open_miou: float
    anomaly_iou: float
    threshold: float

    def as_dict(self) -> dict[str, object]:
        """Plain dict for JSON reports."""
        return dataclasses.asdict(self)


class OpenSetConfusion:
    """Streaming (K + 1) x (K + 1) confusion matrix of open-set predictions.

    Usage:
        threshold = calibrate_threshold(curve_of_other_split).threshold
        confusion = OpenSetConfusion(num_known_classes=12, threshold=threshold)
        for class_prediction, anomaly_score, target in frames:
            confusion.update(class_prediction, anomaly_score, target)
        confusion.compute().open_miou
    """

    def __init__(
        self, num_known_classes: int, threshold: float, ignore_index: int = VOID_ID
    ) -> None:
        if num_known_classes < 1:
            raise ValueError(f'num_known_classes must be positive, got {num_known_classes}')
        if 0 <= ignore_index <= num_known_classes:
            raise ValueError(f'ignore_index {ignore_index} collides with a class index')
        self.num_known_classes = num_known_classes
        self.threshold = float(threshold)
        self.ignore_index = ignore_index
        size = num_known_classes + 1
        self.matrix = np.zeros((size, size), dtype=np.int64)

    def update(
        self,
        class_prediction: np.ndarray | torch.Tensor,
        anomaly_score: np.ndarray | torch.Tensor,
        target: np.ndarray | torch.Tensor,
    ) -> None:
        """Add one frame.

        Args:
            class_prediction: (H, W) integer argmax over the K known classes, in [0, K).
            anomaly_score: (H, W) scores; pixels with score > threshold become anomaly (K).
            target: (H, W) integers: [0, K) known class, K anomaly, `ignore_index` ignored.
        """
        predicted = to_numpy(class_prediction, 'class_prediction')
        score = to_score_map(anomaly_score)
        truth = to_numpy(target, 'target')
        check_2d(predicted, 'class_prediction')
        check_same_shape(predicted, score, ('class_prediction', 'anomaly_score'))
        check_same_shape(predicted, truth, ('class_prediction', 'target'))
        num_known = self.num_known_classes
        if not np.issubdtype(predicted.dtype, np.integer) or (
            predicted.size and (predicted.min() < 0 or predicted.max() >= num_known)
        ):
            raise ValueError(f'class_prediction must hold integers in [0, {num_known})')
        valid = truth != self.ignore_index
        truth = truth[valid].astype(np.int64)
        if truth.size and (truth.min() < 0 or truth.max() > num_known):
            raise ValueError(
                f'target values must be in [0, {num_known}] or {self.ignore_index}; found '
                f'{np.unique(truth[(truth < 0) | (truth > num_known)])[:10].tolist()}'
            )
        open_prediction = np.where(score[valid] > self.threshold, num_known, predicted[valid])
        size = num_known + 1
        counts = np.bincount(truth * size + open_prediction.astype(np.int64), minlength=size**2)
        self.matrix += counts.reshape(size, size)

    def merge(self, other: OpenSetConfusion) -> None:
        """Fold in another matrix with the same classes and threshold."""
        if other.matrix.shape != self.matrix.shape or other.threshold != self.threshold:
            raise ValueError('cannot merge open-set confusions of different configuration')
        self.matrix += other.matrix

    def compute(self) -> OpenSetMetrics:
        """open-IoU per known class, their nanmean, and the anomaly IoU."""
        iou = np.asarray(iou_from_confusion(self.matrix).iou)
        known = iou[: self.num_known_classes]
        valid = ~np.isnan(known)
        return OpenSetMetrics(
            open_iou=tuple(float(value) for value in known),
            open_miou=float(known[valid].mean()) if valid.any() else float('nan'),
            anomaly_iou=float(iou[self.num_known_classes]),
            threshold=self.threshold,
        )


def calibration_town(town: str) -> str:
    """The StreetHazards town whose data calibrate the threshold for `town` (t5 <-> t6)."""
    if town not in STREETHAZARDS_TOWNS:
        raise ValueError(
            f'unknown StreetHazards town {town!r}; expected one of {STREETHAZARDS_TOWNS}'
        )
    return STREETHAZARDS_TOWNS[1 - STREETHAZARDS_TOWNS.index(town)]


def weighted_town_mean(values: Mapping[str, float], num_images: Mapping[str, int]) -> float:
    """Image-count-weighted mean of per-town results (DenseHybrid's final open-mIoU)."""
    if set(values) != set(num_images) or not values:
        raise ValueError('values and num_images must name the same, non-empty set of towns')
    total = sum(num_images.values())
    if total <= 0:
        raise ValueError('num_images must sum to a positive number')
    return float(sum(values[town] * num_images[town] for town in values) / total)
