"""What one evaluated frame is made of: the model's maps, the ground truth, per-frame numbers.

Allowed dependencies: numpy, `m2a_perception.classes`, `m2a_perception.metrics`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from m2a_perception.classes import VOID_ID
from m2a_perception.metrics.panoptic import PanopticSegment
from m2a_perception.metrics.pixel import round_scores


@dataclass(frozen=True)
class FramePrediction:
    """One frame's model output, as numpy, at the resolution of its ground truth.

    Attributes:
        score: (H, W) float32 anomaly score.
        semantic: (H, W) integer semantic map, or None: closed-set train ids 0..K-1 (m2a-eval)
            or the node's published open-set map (K = unknown), see `EvaluationSpec.semantic`.
        panoptic: (H, W) int64 segment ids and their segments in dataset categories, or None.
    """

    score: np.ndarray
    semantic: np.ndarray | None = None
    panoptic: tuple[np.ndarray, list[PanopticSegment]] | None = None


@dataclass(frozen=True)
class FrameTruth:
    """One frame's ground truth; any part may be missing.

    Attributes:
        anomaly: (H, W) uint8, 0 inlier, 1 anomaly, 255 void.
        semantic: (H, W) uint8 train ids, 255 void (plus an unknown id on open-set data).
        panoptic_ids: (H, W) integer segment ids, with `panoptic_segments`.
        panoptic_segments: the ground-truth segments.
        group: the frame's group for per-group calibration (StreetHazards town), or None.
    """

    anomaly: np.ndarray | None = None
    semantic: np.ndarray | None = None
    panoptic_ids: np.ndarray | None = None
    panoptic_segments: list[PanopticSegment] | None = None
    group: str | None = None


@dataclass
class FrameStats:
    """Per-frame numbers for the gallery ranking and the per-frame CSV."""

    index: int
    name: str
    anomaly_pixels: int | None = None
    ap: float | None = None
    fpr_at_tpr95_threshold: float | None = None
    miou: float | None = None
    pq: float | None = None
    error: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def frame_error(stats: FrameStats) -> float:
    """Gallery ranking key in [0, 1], larger = worse.

    Frames with anomalies: 1 - AP; anomaly-free frames: FPR at the dataset's 95 %-TPR
    threshold; semantic-only datasets: 1 - frame mIoU; panoptic-only: 1 - frame PQ.
    """
    if stats.anomaly_pixels is not None:
        if stats.anomaly_pixels > 0 and stats.ap is not None and not math.isnan(stats.ap):
            return 1.0 - stats.ap
        return stats.fpr_at_tpr95_threshold or 0.0
    if stats.miou is not None and not math.isnan(stats.miou):
        return 1.0 - stats.miou
    if stats.pq is not None:
        return 1.0 - stats.pq
    return 0.0


def open_set_binary_label(semantic_label: np.ndarray, num_known: int) -> np.ndarray:
    """(H, W) open-set labels -> anomaly labels: K -> 1, ignore -> 255, known -> 0."""
    label = np.zeros(semantic_label.shape, dtype=np.uint8)
    label[semantic_label == num_known] = 1
    label[semantic_label == VOID_ID] = VOID_ID
    return label


def frame_anomaly_fpr(
    score: np.ndarray, label: np.ndarray, threshold: float, score_dtype: str
) -> float | None:
    """Fraction of a frame's inlier pixels with score >= threshold (None without inliers)."""
    negatives = label == 0
    count = int(negatives.sum())
    if count == 0 or not math.isfinite(threshold):
        return None
    rounded = round_scores(score, score_dtype)  # type: ignore[arg-type]
    return float(np.count_nonzero(rounded[negatives] >= threshold)) / count
