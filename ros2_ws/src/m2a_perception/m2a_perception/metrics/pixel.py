"""Pixel-level anomaly metrics (AuPRC, FPR at 95 % TPR, AUROC), accumulated frame by frame.

Default conventions are those of the SegmentMeIfYouCan (SMIYC) benchmark code
(`road_anomaly_benchmark/metrics/pixel_classification*.py`):

- pixels of the whole dataset are pooled into one curve (no per-image averaging);
- label 255 is void, 1 is positive (anomaly), 0 is negative;
- scores are stored as float16 before any metric, as the benchmark does in its HDF5 files;
- AuPRC = sum_k (R_k - R_{k-1}) * P_k over points of decreasing threshold (the step rule, equal
  to scikit-learn's `average_precision_score` on an exact curve), with a (TP=0, FP=0) point
  prepended and precision 1 where nothing is predicted;
- FPR95 = FPR at the first point with TPR >= 0.95, no interpolation, 1.0 if never reached;
- AUROC = trapezoid over (FPR, TPR).

`MASK2ANOMALY_PROTOCOL` follows the official Mask2Anomaly script instead: float32 scores, frames
without any anomaly pixel skipped, and FPR95 interpolated like `ood_metrics.fpr_at_95_tpr`
(`np.interp(0.95, tpr, fpr)` on scikit-learn's `roc_curve` with `drop_intermediate=True`).

Accumulation modes (all streaming, so a dataset never has to be held in memory):

- exact, float16 scores: one 65536-bin histogram per class keyed by the float16 bit pattern;
  exact for float16 scores, constant memory (1 MiB).
- exact, float32 scores: sorted distinct values with their counts, merged in batches; exact,
  memory grows with the number of distinct scores (20 bytes each). `float32_mantissa_bits`
  bounds it by keeping fewer mantissa bits (16 bits: AuPRC / FPR95 / AUROC within 1e-4 of exact
  in tests/metrics).
- binned: the benchmark's `PixBinaryClass` (per frame 384 quantiles of the positive and 384 of
  the negative scores plus [min - eps, max + eps]; the per-frame bins of all frames are pooled and
  sorted) or `PixBinaryClass-uniThr` (4096 uniform bins on [-0.01, 1.01]). These approximate the
  exact curve: every pixel of a bin is credited to the bin's lower edge. On the synthetic
  frames of tests/metrics the percentile bins read AuPRC about 0.01 higher than exact (FPR95 and
  AUROC within 2e-3); the uniform bins are within 1e-6.

Allowed dependencies: numpy, torch (tensor inputs, fast float16 rounding).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch

from m2a_perception.classes import VOID_ID
from m2a_perception.metrics._common import (
    check_same_shape,
    to_anomaly_label,
    to_score_map,
)

Fpr95Rule = Literal['first_reach', 'interpolate']
ScoreDtype = Literal['float16', 'float32']
Accumulation = Literal['exact', 'binned']
BinStrategy = Literal['percentiles', 'uniform']

TARGET_TPR = 0.95
# Range of the benchmark's uniform bins; scores outside it would be dropped by np.histogram.
UNIFORM_BIN_RANGE = (-0.01, 1.01)
# Pending distinct-value entries merged at once by the float32 exact store (amortises sorting).
_MIN_COMPACTION_SIZE = 1 << 22


@dataclass(frozen=True)
class PixelProtocol:
    """How pixel metrics are accumulated and read off the curve.

    Attributes:
        name: label written into results.
        fpr95_rule: 'first_reach' (SMIYC, Fishyscapes: FPR at the first point with TPR >= 0.95)
            or 'interpolate' (Mask2Anomaly script: `np.interp(0.95, tpr, fpr)`).
        skip_frames_without_anomaly: drop frames whose ground truth has no pixel equal to 1
            (Mask2Anomaly script) instead of counting their negatives (SMIYC).
        score_dtype: scores are rounded to this dtype first ('float16' as SMIYC stores them).
        accumulation: 'exact' or 'binned' (the benchmark's histogram approximation).
        bin_strategy: binned mode only: 'percentiles' (leaderboard `PixBinaryClass`) or
            'uniform' (`PixBinaryClass-uniThr`, scores must lie in [-0.01, 1.01]).
        num_bins: binned mode only: 768 for percentiles, 4096 for uniform in the benchmark.
        float32_mantissa_bits: exact float32 mode only: mantissa bits kept per distinct value.
            23 is exact; fewer bits group scores by their top 9 + bits bits (a relative bin
            width of 2**-bits, each bin's threshold being its lowest float32), which bounds
            memory at 2**(9 + bits) entries of 20 bytes (16 bits: at most about 0.7 GB, in
            practice far less).
    """

    name: str
    fpr95_rule: Fpr95Rule = 'first_reach'
    skip_frames_without_anomaly: bool = False
    score_dtype: ScoreDtype = 'float16'
    accumulation: Accumulation = 'exact'
    bin_strategy: BinStrategy = 'percentiles'
    num_bins: int = 768
    float32_mantissa_bits: int = 23

    def __post_init__(self) -> None:
        if self.fpr95_rule not in ('first_reach', 'interpolate'):
            raise ValueError(
                f"fpr95_rule must be 'first_reach' or 'interpolate', got {self.fpr95_rule!r}"
            )
        if self.score_dtype not in ('float16', 'float32'):
            raise ValueError(
                f"score_dtype must be 'float16' or 'float32', got {self.score_dtype!r}"
            )
        if self.accumulation not in ('exact', 'binned'):
            raise ValueError(
                f"accumulation must be 'exact' or 'binned', got {self.accumulation!r}"
            )
        if self.bin_strategy not in ('percentiles', 'uniform'):
            raise ValueError(
                f"bin_strategy must be 'percentiles' or 'uniform', got {self.bin_strategy!r}"
            )
        if self.num_bins < 2:
            raise ValueError(f'num_bins must be at least 2, got {self.num_bins}')
        if not 0 <= self.float32_mantissa_bits <= 23:
            raise ValueError(
                f'float32_mantissa_bits must be in [0, 23], got {self.float32_mantissa_bits}'
            )


SMIYC_PROTOCOL = PixelProtocol(name='smiyc')
"""SMIYC conventions with an exact curve over float16 scores (the default)."""

SMIYC_BINNED_PROTOCOL = PixelProtocol(name='smiyc_binned', accumulation='binned')
"""The leaderboard's `PixBinaryClass`: float16 scores, 768 percentile bins per frame."""

FISHYSCAPES_PROTOCOL = PixelProtocol(name='fishyscapes', score_dtype='float32')
"""bdl-benchmark `calculate_metrics_perpixAP`: exact float32 curve, first TPR >= 0.95."""

MASK2ANOMALY_PROTOCOL = PixelProtocol(
    name='mask2anomaly',
    fpr95_rule='interpolate',
    skip_frames_without_anomaly=True,
    score_dtype='float32',
)
"""The official Mask2Anomaly script (sklearn AP/AUROC, interpolated FPR95, anomaly-free frames
skipped)."""


_PIXEL_PROTOCOL_PRESETS = {
    'smiyc': SMIYC_PROTOCOL,
    'smiyc_binned': SMIYC_BINNED_PROTOCOL,
    'fishyscapes': FISHYSCAPES_PROTOCOL,
    'mask2anomaly': MASK2ANOMALY_PROTOCOL,
}
PIXEL_PROTOCOLS = tuple(_PIXEL_PROTOCOL_PRESETS)
"""Names of the pixel-protocol presets, the choices of every `--protocol` flag."""


def get_pixel_protocol(name: str) -> PixelProtocol:
    """Return the named preset: 'smiyc', 'smiyc_binned', 'fishyscapes' or 'mask2anomaly'."""
    if name not in _PIXEL_PROTOCOL_PRESETS:
        raise ValueError(f'unknown pixel protocol {name!r}; choose from {sorted(PIXEL_PROTOCOLS)}')
    return _PIXEL_PROTOCOL_PRESETS[name]


@dataclass(frozen=True)
class PixelCurve:
    """Cumulative confusion counts of a binary pixel classifier, by decreasing threshold.

    Point k predicts "anomaly" for scores >= thresholds[k]; a first point (+inf, 0, 0) and a last
    point (-inf, all, all) are present whenever the data do not already provide them.

    Attributes:
        thresholds: (N,) float64, strictly decreasing.
        true_positives: (N,) int64, non-decreasing, ends at num_positives.
        false_positives: (N,) int64, non-decreasing, ends at num_negatives.
        num_positives: number of anomaly pixels pooled.
        num_negatives: number of inlier pixels pooled.
    """

    thresholds: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray
    num_positives: int
    num_negatives: int

    @property
    def tpr(self) -> np.ndarray:
        """(N,) true-positive rate (= recall); NaN without positives."""
        with np.errstate(divide='ignore', invalid='ignore'):
            return self.true_positives / np.float64(self.num_positives)

    @property
    def fpr(self) -> np.ndarray:
        """(N,) false-positive rate; NaN without negatives."""
        with np.errstate(divide='ignore', invalid='ignore'):
            return self.false_positives / np.float64(self.num_negatives)

    @property
    def precision(self) -> np.ndarray:
        """(N,) precision, 1 where nothing is predicted (the benchmark's choice)."""
        predicted = self.true_positives + self.false_positives
        precision = np.ones(predicted.shape, dtype=np.float64)
        nonzero = predicted > 0
        precision[nonzero] = self.true_positives[nonzero] / predicted[nonzero]
        return precision


@dataclass(frozen=True)
class PixelMetrics:
    """Dataset-level pixel metrics, all as fractions in [0, 1] (NaN when undefined).

    Attributes:
        protocol: name of the `PixelProtocol` used.
        auprc: area under the precision-recall curve (step rule).
        fpr95: false-positive rate at 95 % true-positive rate, following the protocol's rule.
        auroc: area under the ROC curve (trapezoid).
        best_f1: maximum pixel F1 over the curve.
        best_f1_threshold: its threshold (score >= threshold); SMIYC binarises the component
            metrics with this value.
        tpr95_threshold: threshold of the first point with TPR >= 0.95 (NaN if never reached).
        num_frames: frames that contributed.
        num_skipped_frames: frames dropped by `skip_frames_without_anomaly`.
        num_positive_pixels: pooled anomaly pixels.
        num_negative_pixels: pooled inlier pixels.
    """

    protocol: str
    auprc: float
    fpr95: float
    auroc: float
    best_f1: float
    best_f1_threshold: float
    tpr95_threshold: float
    num_frames: int
    num_skipped_frames: int
    num_positive_pixels: int
    num_negative_pixels: int

    def as_dict(self) -> dict[str, float | int | str]:
        """Plain dict for JSON reports."""
        return dataclasses.asdict(self)


def curve_from_counts(
    thresholds: np.ndarray,
    positive_counts: np.ndarray,
    negative_counts: np.ndarray,
) -> PixelCurve:
    """Build a pooled curve from per-threshold pixel counts.

    Args:
        thresholds: (M,) float, any order, may repeat (per-frame bins of different frames).
        positive_counts: (M,) int, anomaly pixels credited to each threshold (scores in
            [threshold, next threshold) for bins, or equal to it for distinct values).
        negative_counts: (M,) int, inlier pixels credited to each threshold.

    Returns:
        The cumulative curve. Repeated thresholds are collapsed to the last entry of their run,
        which holds all counts at that threshold (the benchmark does the same since 2023-08-05,
        but also keeps the very first entry whatever its run; that point depends on an unstable
        sort there and is not reproduced).
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    positive_counts = np.asarray(positive_counts, dtype=np.int64)
    negative_counts = np.asarray(negative_counts, dtype=np.int64)
    if not thresholds.shape == positive_counts.shape == negative_counts.shape:
        raise ValueError('thresholds and counts must have the same 1-D shape')
    if thresholds.ndim != 1:
        raise ValueError(f'thresholds must be 1-D, got shape {thresholds.shape}')
    if np.isnan(thresholds).any():
        raise ValueError('thresholds contain NaN')
    num_positives = int(positive_counts.sum())
    num_negatives = int(negative_counts.sum())
    order = np.argsort(-thresholds, kind='stable')
    sorted_thresholds = thresholds[order]
    true_positives = np.cumsum(positive_counts[order])
    false_positives = np.cumsum(negative_counts[order])
    last_of_run = np.ones(sorted_thresholds.shape, dtype=bool)
    last_of_run[:-1] = sorted_thresholds[:-1] != sorted_thresholds[1:]
    sorted_thresholds = sorted_thresholds[last_of_run]
    true_positives = true_positives[last_of_run]
    false_positives = false_positives[last_of_run]
    if true_positives.size == 0 or true_positives[0] != 0 or false_positives[0] != 0:
        sorted_thresholds = np.concatenate([[np.inf], sorted_thresholds])
        true_positives = np.concatenate([[0], true_positives])
        false_positives = np.concatenate([[0], false_positives])
    if true_positives[-1] != num_positives or false_positives[-1] != num_negatives:
        sorted_thresholds = np.concatenate([sorted_thresholds, [-np.inf]])
        true_positives = np.concatenate([true_positives, [num_positives]])
        false_positives = np.concatenate([false_positives, [num_negatives]])
    return PixelCurve(
        thresholds=sorted_thresholds,
        true_positives=true_positives.astype(np.int64),
        false_positives=false_positives.astype(np.int64),
        num_positives=num_positives,
        num_negatives=num_negatives,
    )


def average_precision(curve: PixelCurve) -> float:
    """AuPRC by the step rule sum_k (R_k - R_{k-1}) * P_k (scikit-learn's AP on exact curves)."""
    if curve.num_positives == 0:
        return float('nan')
    recall = curve.tpr
    return float(np.sum(np.diff(recall) * curve.precision[1:]))


def area_under_roc(curve: PixelCurve) -> float:
    """AUROC by the trapezoid rule over (FPR, TPR)."""
    if curve.num_positives == 0 or curve.num_negatives == 0:
        return float('nan')
    return float(np.trapezoid(curve.tpr, curve.fpr))


def roc_points(curve: PixelCurve, drop_intermediate: bool = True) -> tuple[np.ndarray, ...]:
    """ROC points as scikit-learn's `roc_curve` returns them for the same pixels.

    Collinear intermediate points are dropped like `drop_intermediate=True` (a point is kept when
    the second difference of its FP or TP counts is non-zero), then (0, 0) is prepended with
    threshold +inf. Reference code that walks this output (ood_metrics, DenseHybrid) depends on
    which points survive, so the rule is reproduced exactly.

    Returns:
        fpr (N,), tpr (N,), thresholds (N,), all float64.
    """
    thresholds = curve.thresholds
    true_positives = curve.true_positives
    false_positives = curve.false_positives
    if true_positives.size and true_positives[0] == 0 and false_positives[0] == 0:
        # Our artificial start point; scikit-learn adds its own after dropping.
        thresholds = thresholds[1:]
        true_positives = true_positives[1:]
        false_positives = false_positives[1:]
    if drop_intermediate and true_positives.size > 2:
        keep = np.ones(true_positives.shape, dtype=bool)
        keep[1:-1] = (np.diff(false_positives, 2) != 0) | (np.diff(true_positives, 2) != 0)
        thresholds = thresholds[keep]
        true_positives = true_positives[keep]
        false_positives = false_positives[keep]
    with np.errstate(divide='ignore', invalid='ignore'):
        tpr = np.concatenate([[0.0], true_positives / np.float64(curve.num_positives)])
        fpr = np.concatenate([[0.0], false_positives / np.float64(curve.num_negatives)])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


def fpr_at_tpr(
    curve: PixelCurve, target_tpr: float = TARGET_TPR, rule: Fpr95Rule = 'first_reach'
) -> float:
    """False-positive rate at a target true-positive rate.

    Args:
        curve: pooled curve.
        target_tpr: 0.95 for FPR95.
        rule: 'first_reach': FPR of the first point with TPR >= target, 1.0 if none (SMIYC,
            Fishyscapes); 'interpolate': `ood_metrics.fpr_at_95_tpr` on scikit-learn ROC points,
            i.e. 0 if no point reaches the target, the smallest FPR if all do, else
            `np.interp(target, tpr, fpr)` (Mask2Anomaly script).
    """
    if curve.num_positives == 0 or curve.num_negatives == 0:
        return float('nan')
    if rule == 'first_reach':
        index = int(np.searchsorted(curve.tpr, target_tpr, side='left'))
        return float(curve.fpr[index]) if index < curve.tpr.size else 1.0
    if rule == 'interpolate':
        fpr, tpr, _ = roc_points(curve, drop_intermediate=True)
        if np.all(tpr < target_tpr):
            return 0.0
        if np.all(tpr >= target_tpr):
            return float(np.min(fpr))
        return float(np.interp(target_tpr, tpr, fpr))
    raise ValueError(f"rule must be 'first_reach' or 'interpolate', got {rule!r}")


def compute_pixel_metrics(
    curve: PixelCurve,
    protocol: PixelProtocol = SMIYC_PROTOCOL,
    num_frames: int = 0,
    num_skipped_frames: int = 0,
) -> PixelMetrics:
    """Read AuPRC, FPR95, AUROC and the best-F1 operating point off a pooled curve."""
    tpr = curve.tpr
    if curve.num_positives == 0:
        tpr95_threshold = float('nan')
        best_f1 = best_f1_threshold = float('nan')
    else:
        index = int(np.searchsorted(tpr, TARGET_TPR, side='left'))
        tpr95_threshold = float(curve.thresholds[index]) if index < tpr.size else float('nan')
        false_negatives = curve.num_positives - curve.true_positives
        f1 = (
            2
            * curve.true_positives
            / (2 * curve.true_positives + curve.false_positives + false_negatives)
        )
        best = int(np.nanargmax(f1))
        best_f1, best_f1_threshold = float(f1[best]), float(curve.thresholds[best])
    return PixelMetrics(
        protocol=protocol.name,
        auprc=average_precision(curve),
        fpr95=fpr_at_tpr(curve, TARGET_TPR, protocol.fpr95_rule),
        auroc=area_under_roc(curve),
        best_f1=best_f1,
        best_f1_threshold=best_f1_threshold,
        tpr95_threshold=tpr95_threshold,
        num_frames=num_frames,
        num_skipped_frames=num_skipped_frames,
        num_positive_pixels=curve.num_positives,
        num_negative_pixels=curve.num_negatives,
    )


# --------------------------------------------------------------------------------------------
# Count stores: one per accumulation mode. `frame_counts` turns one frame into a partial result
# (so the caller can still decide to skip it), `add` folds it in, `level_counts` returns
# (thresholds, positive counts, negative counts) for `curve_from_counts`.


class _FrameCounts(Protocol):
    num_positives: int


class _CountStore(Protocol):
    # `add` and `merge` only ever receive objects made by the same store class.
    def frame_counts(self, score: np.ndarray, label: np.ndarray) -> _FrameCounts: ...

    def add(self, counts: Any) -> None: ...

    def merge(self, other: Any) -> None: ...

    def level_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class _HistogramCounts:
    counts: np.ndarray  # (2, B) int64: row 0 negatives, row 1 positives
    num_positives: int


@dataclass(frozen=True)
class _DistinctCounts:
    keys: np.ndarray  # (M,) uint32 order-preserving keys (may repeat across classes)
    positives: np.ndarray  # (M,) int64
    negatives: np.ndarray  # (M,) int64
    num_positives: int


@dataclass(frozen=True)
class _BinnedCounts:
    lower_edges: np.ndarray  # (B,) float64
    positives: np.ndarray  # (B,) int64
    negatives: np.ndarray  # (B,) int64
    num_positives: int


def _float16_keys(scores: np.ndarray) -> np.ndarray:
    """(N,) float16 -> (N,) uint16 keys whose unsigned order is the numeric order.

    Positive floats get their sign bit set, negative floats have all bits flipped (so -0.0 and
    +0.0 get the neighbouring keys 0x7FFF and 0x8000).
    """
    bits = scores.view(np.uint16)
    flip = (bits >> np.uint16(15)) * np.uint16(0x7FFF) | np.uint16(0x8000)
    return bits ^ flip


def _float16_values(keys: np.ndarray) -> np.ndarray:
    """Inverse of `_float16_keys` for int keys in [0, 65535]; returns float64 values."""
    keys = keys.astype(np.uint16)
    bits = np.where(keys >= 0x8000, keys ^ np.uint16(0x8000), keys ^ np.uint16(0xFFFF))
    return bits.astype(np.uint16).view(np.float16).astype(np.float64)


def _float32_keys(scores: np.ndarray) -> np.ndarray:
    """(N,) float32 -> (N,) uint32 order-preserving keys (same trick as for float16)."""
    bits = scores.view(np.uint32)
    flip = (bits >> np.uint32(31)) * np.uint32(0x7FFFFFFF) | np.uint32(0x80000000)
    return bits ^ flip


def _float32_values(keys: np.ndarray) -> np.ndarray:
    """Inverse of `_float32_keys`; returns float64 values."""
    keys = keys.astype(np.uint32)
    bits = np.where(keys >= 0x80000000, keys ^ np.uint32(0x80000000), ~keys)
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


class _Float16HistogramStore:
    """Exact counts for float16 scores: one bin per float16 bit pattern and class."""

    def __init__(self) -> None:
        self.counts = np.zeros((2, 1 << 16), dtype=np.int64)
        # Label value -> offset into the bincount: negatives, positives, then a dump for void.
        self._offsets = np.full(256, -1, dtype=np.int32)
        self._offsets[0], self._offsets[1], self._offsets[VOID_ID] = 0, 1 << 16, 2 << 16

    def frame_counts(self, score: np.ndarray, label: np.ndarray) -> _HistogramCounts:
        index = _float16_keys(score.ravel()).astype(np.int32) + self._offsets[label.ravel()]
        counts = np.bincount(index, minlength=3 << 16)[: 2 << 16].reshape(2, 1 << 16)
        # -0.0 and +0.0 are one threshold: fold the key of -0.0 into that of +0.0.
        counts[:, 0x8000] += counts[:, 0x7FFF]
        counts[:, 0x7FFF] = 0
        return _HistogramCounts(counts=counts, num_positives=int(counts[1].sum()))

    def add(self, counts: _HistogramCounts) -> None:
        self.counts += counts.counts

    def merge(self, other: _Float16HistogramStore) -> None:
        self.counts += other.counts

    def level_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keys = np.flatnonzero(self.counts.sum(axis=0))
        return _float16_values(keys), self.counts[1, keys], self.counts[0, keys]


class _DistinctValueStore:
    """Exact counts for float32 scores: sorted distinct values, merged in growing batches.

    With `mantissa_bits` < 23 the low key bits are cleared first, so each score is credited to
    the lowest float32 sharing its top 9 + mantissa_bits key bits.
    """

    def __init__(self, mantissa_bits: int = 23) -> None:
        self._key_mask = np.uint32((0xFFFFFFFF << (23 - mantissa_bits)) & 0xFFFFFFFF)
        self.keys = np.zeros(0, dtype=np.uint32)
        self.positives = np.zeros(0, dtype=np.int64)
        self.negatives = np.zeros(0, dtype=np.int64)
        self._pending: list[_DistinctCounts] = []
        self._pending_size = 0

    def frame_counts(self, score: np.ndarray, label: np.ndarray) -> _DistinctCounts:
        keys = _float32_keys((score.astype(np.float32) + np.float32(0.0)).ravel())
        keys &= self._key_mask
        flat_label = label.ravel()
        positive_keys, positives = np.unique(keys[flat_label == 1], return_counts=True)
        negative_keys, negatives = np.unique(keys[flat_label == 0], return_counts=True)
        return _DistinctCounts(
            keys=np.concatenate([positive_keys, negative_keys]),
            positives=np.concatenate([positives, np.zeros_like(negatives)]),
            negatives=np.concatenate([np.zeros_like(positives), negatives]),
            num_positives=int(positives.sum()),
        )

    def add(self, counts: _DistinctCounts) -> None:
        self._pending.append(counts)
        self._pending_size += counts.keys.size
        # Merging only when the backlog is as large as the merged table keeps the total sorting
        # work O(n log n) over the dataset.
        if self._pending_size >= max(self.keys.size, _MIN_COMPACTION_SIZE):
            self._compact()

    def merge(self, other: _DistinctValueStore) -> None:
        other._compact()
        self.add(
            _DistinctCounts(
                other.keys, other.positives, other.negatives, int(other.positives.sum())
            )
        )

    def _compact(self) -> None:
        if not self._pending:
            return
        keys = np.concatenate([self.keys, *(part.keys for part in self._pending)])
        positives = np.concatenate([self.positives, *(part.positives for part in self._pending)])
        negatives = np.concatenate([self.negatives, *(part.negatives for part in self._pending)])
        self.keys, inverse = np.unique(keys, return_inverse=True)
        # float64 weights are exact for counts below 2**53 pixels.
        self.positives = np.bincount(inverse, weights=positives, minlength=self.keys.size)
        self.negatives = np.bincount(inverse, weights=negatives, minlength=self.keys.size)
        self.positives = self.positives.astype(np.int64)
        self.negatives = self.negatives.astype(np.int64)
        self._pending, self._pending_size = [], 0

    def level_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._compact()
        return _float32_values(self.keys), self.positives, self.negatives


class _PercentileBinStore:
    """The benchmark's `PixBinaryClass`: per-frame bins at quantiles of each class's scores."""

    def __init__(self, num_bins: int) -> None:
        self.num_bins = num_bins
        self.frames: list[_BinnedCounts] = []

    def frame_counts(self, score: np.ndarray, label: np.ndarray) -> _BinnedCounts:
        positives = score[label == 1]
        negatives = score[label == 0]
        if positives.size + negatives.size == 0:
            empty = np.zeros(0, dtype=np.int64)
            return _BinnedCounts(np.zeros(0), empty, empty, 0)
        in_roi = np.concatenate([positives, negatives])
        low, high = in_roi.min(), in_roi.max()
        # Same numpy operations and dtypes as the benchmark, so edges match its float16 maths.
        eps = np.maximum((high - low) * 1e-2, 1e-2)
        parts = [np.asarray([low - eps, high + eps])]
        for values in (positives, negatives):
            if values.size:
                quantiles = np.linspace(0, 1, min(self.num_bins // 2, values.size))
                parts.append(np.quantile(values, quantiles))
        edges = np.unique(np.concatenate(parts))
        positive_hist, _ = np.histogram(positives, bins=edges)
        negative_hist, _ = np.histogram(negatives, bins=edges)
        return _BinnedCounts(
            lower_edges=edges[:-1].astype(np.float64),
            positives=positive_hist.astype(np.int64),
            negatives=negative_hist.astype(np.int64),
            num_positives=int(positives.size),
        )

    def add(self, counts: _BinnedCounts) -> None:
        if counts.lower_edges.size:
            self.frames.append(counts)

    def merge(self, other: _PercentileBinStore) -> None:
        self.frames.extend(other.frames)

    def level_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.frames:
            empty = np.zeros(0, dtype=np.int64)
            return np.zeros(0), empty, empty
        return (
            np.concatenate([frame.lower_edges for frame in self.frames]),
            np.concatenate([frame.positives for frame in self.frames]),
            np.concatenate([frame.negatives for frame in self.frames]),
        )


class _UniformBinStore:
    """The benchmark's `PixBinaryClass-uniThr`: fixed uniform bins on [-0.01, 1.01]."""

    def __init__(self, num_bins: int) -> None:
        self.num_bins = num_bins
        self.counts = np.zeros((2, num_bins), dtype=np.int64)

    def frame_counts(self, score: np.ndarray, label: np.ndarray) -> _HistogramCounts:
        low, high = UNIFORM_BIN_RANGE
        in_roi = score[label != VOID_ID]
        if in_roi.size and (in_roi.min() < low or in_roi.max() > high):
            # The benchmark's np.histogram would silently drop these pixels.
            raise ValueError(
                f'uniform bins need scores in [{low}, {high}], got [{in_roi.min()}, '
                f'{in_roi.max()}]; use percentile bins or the exact mode'
            )
        # float64 edges: with float16 data numpy would build the 4097 edges in float16, where
        # they collide (and np.histogram raises).
        values = score.astype(np.float64)
        counts = np.stack(
            [
                np.histogram(values[label == cls], bins=self.num_bins, range=UNIFORM_BIN_RANGE)[0]
                for cls in (0, 1)
            ]
        ).astype(np.int64)
        return _HistogramCounts(counts=counts, num_positives=int(counts[1].sum()))

    def add(self, counts: _HistogramCounts) -> None:
        self.counts += counts.counts

    def merge(self, other: _UniformBinStore) -> None:
        self.counts += other.counts

    def level_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lower_edges = np.linspace(*UNIFORM_BIN_RANGE, self.num_bins + 1)[:-1]
        return lower_edges, self.counts[1], self.counts[0]


def _make_store(protocol: PixelProtocol) -> _CountStore:
    if protocol.accumulation == 'binned':
        if protocol.bin_strategy == 'uniform':
            return _UniformBinStore(protocol.num_bins)
        return _PercentileBinStore(protocol.num_bins)
    if protocol.score_dtype == 'float16':
        return _Float16HistogramStore()
    return _DistinctValueStore(protocol.float32_mantissa_bits)


def round_scores(score: np.ndarray, score_dtype: ScoreDtype) -> np.ndarray:
    """Round scores to `score_dtype` exactly as numpy's `astype` does (round to nearest even).

    numpy converts float32 to float16 without SIMD; torch gives bit-identical results for
    float32 input about five times faster, so it is used there (other dtypes go through numpy,
    whose direct float64 -> float16 rounding torch does not reproduce).
    """
    dtype = np.dtype(score_dtype)
    if score.dtype == dtype:
        return score
    if dtype == np.float16 and score.dtype == np.float32:
        return torch.from_numpy(np.ascontiguousarray(score)).to(torch.float16).numpy()
    return score.astype(dtype)


class PixelCurveAccumulator:
    """Streams (score, label) frames into one pooled pixel curve.

    Usage:
        accumulator = PixelCurveAccumulator(SMIYC_PROTOCOL)
        for score, label in frames:
            accumulator.update(score, label)
        metrics = accumulator.compute()

    For distributed evaluation, accumulate per process and `merge` the (picklable) accumulators.
    """

    def __init__(self, protocol: PixelProtocol = SMIYC_PROTOCOL) -> None:
        self.protocol = protocol
        self.num_frames = 0
        self.num_skipped_frames = 0
        self._store = _make_store(protocol)

    def update(
        self, anomaly_score: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor
    ) -> None:
        """Add one frame.

        Args:
            anomaly_score: (H, W) real scores, higher = more anomalous; any float dtype (rounded
                to the protocol's `score_dtype`), numpy or torch (any device).
            label: (H, W) integers, 0 = inlier, 1 = anomaly, 255 = void.

        Raises:
            ValueError: on shape mismatch, NaN scores or label values other than 0/1/255.
        """
        label_map, _ = to_anomaly_label(label)
        score_map = to_score_map(anomaly_score)
        check_same_shape(score_map, label_map, ('anomaly_score', 'label'))
        score_map = round_scores(score_map, self.protocol.score_dtype)
        counts = self._store.frame_counts(score_map, label_map)
        if self.protocol.skip_frames_without_anomaly and counts.num_positives == 0:
            self.num_skipped_frames += 1
            return
        self._store.add(counts)
        self.num_frames += 1

    def merge(self, other: PixelCurveAccumulator) -> None:
        """Fold in another accumulator built with the same protocol."""
        if other.protocol != self.protocol:
            raise ValueError(
                f'cannot merge accumulators of different protocols: {self.protocol} vs '
                f'{other.protocol}'
            )
        self._store.merge(other._store)
        self.num_frames += other.num_frames
        self.num_skipped_frames += other.num_skipped_frames

    def curve(self) -> PixelCurve:
        """The pooled curve so far (for plots and threshold calibration)."""
        return curve_from_counts(*self._store.level_counts())

    def compute(self) -> PixelMetrics:
        """Metrics over all frames so far; NaN fields where a class is missing."""
        return compute_pixel_metrics(
            self.curve(), self.protocol, self.num_frames, self.num_skipped_frames
        )
