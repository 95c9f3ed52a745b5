"""The two-pass streaming evaluator shared by `m2a-eval` and the replay.

Pass 1, frame by frame (`TwoPassEvaluator.update`): the pixel curve, the calibration curves,
the confusion matrix, the panoptic statistics and the components of a fixed-threshold mask are
updated, and the frame's score map (plus labels and semantic prediction) is written to a
`FrameCache`: float16 when only float16 comparisons follow (SMIYC protocols), float32 otherwise.
Between the passes the thresholds that need the whole data set are chosen from the (merged)
pass-1 state (`anomaly_thresholds`: the best-pixel-F1 threshold, SMIYC's component
binarisation, and the first point with TPR >= 0.95), plus any open-set operating points.
Pass 2, from the cache (`TwoPassEvaluator.update_second`): component metrics (sIoU, PPV, F1*)
at the best-F1 threshold, open-IoU and the transferred operating point, per-frame FPR.
`finish` builds the typed `EvaluationReport` of one (merged) data set.

The pass states are picklable and have `merge`, so a distributed run gathers them on one rank,
decides the thresholds there and broadcasts them (see `m2a_training.evaluation.runner`); a
single process just calls `finish()`.

Allowed dependencies: numpy, `m2a_perception.metrics`, `m2a_perception.evaluation`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from m2a_perception.evaluation.cache import FrameCache
from m2a_perception.evaluation.frames import (
    FramePrediction,
    FrameStats,
    FrameTruth,
    frame_anomaly_fpr,
    frame_error,
    open_set_binary_label,
)
from m2a_perception.metrics.component import ComponentAccumulator, ComponentMetrics, ComponentTrack
from m2a_perception.metrics.open_set import (
    OpenSetConfusion,
    OpenSetMetrics,
    OperatingPoint,
    closed_set_target,
    downscale_for_calibration,
    weighted_town_mean,
)
from m2a_perception.metrics.panoptic import (
    PanopticAccumulator,
    PanopticCategory,
    PanopticMetrics,
)
from m2a_perception.metrics.pixel import (
    PixelCurve,
    PixelCurveAccumulator,
    PixelMetrics,
    PixelProtocol,
)
from m2a_perception.metrics.semantic import ConfusionMatrix, SemanticMetrics

# Calibration group of the `--calibrate-on` data set (towns name the other groups).
CALIBRATION_GROUP = 'all'


@dataclass(frozen=True)
class EvaluationSpec:
    """What is computed on one data set, fixed before the first frame.

    Attributes:
        protocol: pixel protocol (its `score_dtype` also rounds the pass-2 comparisons).
        anomaly: the data set has anomaly labels (pixel curve and components).
        component_track: component size limits; None: no component metrics.
        mask_threshold: also the components of `score >= mask_threshold` (the node's published
            mask), in pass 1; None: not computed.
        num_classes: known classes K of the model.
        semantic: None (no semantic metrics); 'closed': a closed-set prediction 0..K-1 against
            the truth, a K x K confusion matrix (unknown truth pixels ignored), kept for the
            open-set metrics of pass 2; 'open': the node's open-set map (K = unknown) against
            the truth, a (K + 1) x (K + 1) confusion matrix.
        open_set_truth_classes: known classes of the semantic truth when it labels unknown
            pixels with that id (StreetHazards), else None.
        calibration_groups: calibration curves to accumulate (`CALIBRATION_GROUP`, towns).
        calibration_protocol: the curve protocol of the calibration groups.
        calibration_scale: resize factor of the calibration maps (DenseHybrid: 0.5).
        town_protocol: StreetHazards t5 <-> t6 cross-calibration applies.
        panoptic_categories: ground-truth categories for PQ; None: no panoptic metrics.
        unknown_category_id: the category of unknown things (open-set panoptic), or None.
        cache_dtype: dtype of the cached score maps ('float16' or 'float32').
        frame_stats: keep per-frame numbers (AP, mIoU, PQ, FPR) for a gallery and a CSV.
    """

    protocol: PixelProtocol
    anomaly: bool = True
    component_track: ComponentTrack | None = None
    mask_threshold: float | None = None
    num_classes: int = 19
    semantic: Literal['closed', 'open'] | None = None
    open_set_truth_classes: int | None = None
    calibration_groups: tuple[str, ...] = ()
    calibration_protocol: PixelProtocol | None = None
    calibration_scale: float = 1.0
    town_protocol: bool = False
    panoptic_categories: Sequence[PanopticCategory] | None = None
    unknown_category_id: int | None = None
    cache_dtype: str = 'float16'
    frame_stats: bool = True

    def __post_init__(self) -> None:
        if self.cache_dtype not in ('float16', 'float32'):
            raise ValueError(f'cache_dtype must be float16 or float32, got {self.cache_dtype!r}')
        if self.calibration_groups and self.calibration_protocol is None:
            raise ValueError('calibration_groups need a calibration_protocol')


@dataclass
class PassOneState:
    """Streaming statistics of one data set after pass 1 (picklable)."""

    pixel: PixelCurveAccumulator | None
    calibration: dict[str, PixelCurveAccumulator]
    semantic: ConfusionMatrix | None
    panoptic: PanopticAccumulator | None
    mask_components: ComponentAccumulator | None = None
    frames: dict[int, FrameStats] = field(default_factory=dict)
    group_counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def merge(self, other: PassOneState) -> None:
        """Fold in another rank's state (frames are kept per rank, not merged)."""
        if self.pixel is not None and other.pixel is not None:
            self.pixel.merge(other.pixel)
        for group, curve in other.calibration.items():
            self.calibration[group].merge(curve)
        if self.semantic is not None and other.semantic is not None:
            self.semantic.merge(other.semantic)
        if self.panoptic is not None and other.panoptic is not None:
            self.panoptic.merge(other.panoptic)
        if self.mask_components is not None and other.mask_components is not None:
            self.mask_components.merge(other.mask_components)
        for group, count in other.group_counts.items():
            self.group_counts[group] = self.group_counts.get(group, 0) + count
        add_seconds(self.seconds, other.seconds)

    def without_frames(self) -> PassOneState:
        """A copy for merging that shares the accumulators but not the per-rank frames."""
        return PassOneState(
            pixel=self.pixel,
            calibration=dict(self.calibration),
            semantic=self.semantic,
            panoptic=self.panoptic,
            mask_components=self.mask_components,
            group_counts=dict(self.group_counts),
            seconds=dict(self.seconds),
        )


@dataclass(frozen=True)
class PassTwoThresholds:
    """The thresholds pass 2 applies to one data set.

    Attributes:
        component: best-pixel-F1 threshold (NaN: no components).
        tpr95: threshold of the first point with TPR >= 0.95 (NaN: per-frame FPR undefined).
        calibrated: an open-set operating point applied to this data set, or None.
        towns: town -> operating point calibrated on the other town (StreetHazards).
    """

    component: float = math.nan
    tpr95: float = math.nan
    calibrated: OperatingPoint | None = None
    towns: dict[str, OperatingPoint] = field(default_factory=dict)


@dataclass
class PassTwoState:
    """Statistics of one data set from the cached maps (picklable)."""

    component: ComponentAccumulator | None = None
    open_set_calibrated: OpenSetConfusion | None = None
    open_set_towns: dict[str, OpenSetConfusion] = field(default_factory=dict)
    transfer_counts: np.ndarray | None = None  # [tp, fn, fp, tn] at the calibrated threshold
    frames: list[FrameStats] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def merge(self, other: PassTwoState) -> None:
        if self.component is not None and other.component is not None:
            self.component.merge(other.component)
        if self.open_set_calibrated is not None and other.open_set_calibrated is not None:
            self.open_set_calibrated.merge(other.open_set_calibrated)
        for town, confusion in other.open_set_towns.items():
            self.open_set_towns[town].merge(confusion)
        if self.transfer_counts is not None and other.transfer_counts is not None:
            self.transfer_counts = self.transfer_counts + other.transfer_counts
        self.frames.extend(other.frames)
        add_seconds(self.seconds, other.seconds)


@dataclass
class EvaluationReport:
    """The metrics of one data set (typed; `None` where not computed).

    Attributes:
        pixel: AuPRC, FPR95, AUROC and the best-F1 / 95 %-TPR thresholds.
        curve: the pixel curve (PR / ROC plots).
        component: sIoU, PPV, F1* of the mask binarised at `thresholds.component`.
        mask_component: the same at `EvaluationSpec.mask_threshold`.
        semantic: the confusion-matrix metrics (closed-set K, or open-set K + 1 classes).
        open_set_calibrated: open-IoU at `thresholds.calibrated`.
        open_set_towns: open-IoU per StreetHazards town, with `open_set_town_frames`.
        open_set_towns_mean: the frame-weighted t5/t6 mean, when both towns were evaluated.
        transfer: TPR / FPR of this data set at `thresholds.calibrated`.
        panoptic: PQ / SQ / RQ.
        frames: per-frame numbers, sorted by index (empty without `frame_stats`).
        thresholds: the pass-2 thresholds applied.
    """

    pixel: PixelMetrics | None = None
    curve: PixelCurve | None = None
    component: ComponentMetrics | None = None
    mask_component: ComponentMetrics | None = None
    semantic: SemanticMetrics | None = None
    open_set_calibrated: OpenSetMetrics | None = None
    open_set_towns: dict[str, OpenSetMetrics] = field(default_factory=dict)
    open_set_town_frames: dict[str, int] = field(default_factory=dict)
    open_set_towns_mean: float | None = None
    transfer: dict[str, float] | None = None
    panoptic: PanopticMetrics | None = None
    frames: list[FrameStats] = field(default_factory=list)
    thresholds: PassTwoThresholds = field(default_factory=PassTwoThresholds)


def add_seconds(total: dict[str, float], more: dict[str, float]) -> None:
    for key, value in more.items():
        total[key] = total.get(key, 0.0) + value


def _lap(seconds: dict[str, float], stage: str, start: float) -> float:
    now = time.perf_counter()
    seconds[stage] = seconds.get(stage, 0.0) + now - start
    return now


def anomaly_thresholds(state: PassOneState) -> tuple[float, float]:
    """(best-pixel-F1, first TPR >= 0.95) thresholds of a (merged) pass-1 state; NaN without
    anomaly pixels or without a pixel curve."""
    if state.pixel is None:
        return math.nan, math.nan
    metrics = state.pixel.compute()
    return metrics.best_f1_threshold, metrics.tpr95_threshold


class TwoPassEvaluator:
    """Streams one data set's frames through both passes.

    Args:
        spec: what to compute.
        cache: where pass 1 keeps the maps for pass 2 (shared by data sets; `name` is the key).
        name: the data set's name (cache key, error messages).
    """

    def __init__(self, spec: EvaluationSpec, cache: FrameCache, name: str) -> None:
        self.spec = spec
        self.cache = cache
        self.name = name
        self.first = self._new_pass_one()
        self.second: PassTwoState | None = None
        self.thresholds: PassTwoThresholds | None = None
        self.indices: list[int] = []

    def _new_pass_one(self) -> PassOneState:
        spec = self.spec
        panoptic = None
        if spec.panoptic_categories is not None:
            panoptic = PanopticAccumulator(spec.panoptic_categories, spec.unknown_category_id)
        semantic = None
        if spec.semantic == 'closed':
            semantic = ConfusionMatrix(spec.num_classes)
        elif spec.semantic == 'open':
            semantic = ConfusionMatrix(spec.num_classes + 1)
        mask_components = None
        if spec.anomaly and spec.mask_threshold is not None and spec.component_track is not None:
            mask_components = ComponentAccumulator(spec.component_track)
        calibration = {}
        if spec.calibration_protocol is not None:
            calibration = {
                group: PixelCurveAccumulator(spec.calibration_protocol)
                for group in spec.calibration_groups
            }
        return PassOneState(
            pixel=PixelCurveAccumulator(spec.protocol) if spec.anomaly else None,
            calibration=calibration,
            semantic=semantic,
            panoptic=panoptic,
            mask_components=mask_components,
        )

    # ---------------------------------------------------------------------------- pass 1

    def update(
        self, index: int, name: str, prediction: FramePrediction, truth: FrameTruth
    ) -> FrameStats:
        """Pass 1 on one frame; writes its maps to the cache.

        Args:
            index: the frame's unique index in the data set (cache key, sort order).
            name: the frame's name (per-frame CSV, gallery).
            prediction: the model's maps, (H, W) like the truth.
            truth: the frame's ground truth.

        Raises:
            ValueError: a label with values outside its range, or shapes that differ.
        """
        start = time.perf_counter()
        spec, state = self.spec, self.first
        score = prediction.score
        stats = FrameStats(index, name)
        arrays: dict[str, np.ndarray] = {'score': score.astype(spec.cache_dtype)}

        if state.pixel is not None and truth.anomaly is not None:
            if spec.frame_stats:
                frame_pixel = PixelCurveAccumulator(spec.protocol)
                frame_pixel.update(score, truth.anomaly)
                stats.anomaly_pixels = int(np.count_nonzero(truth.anomaly == 1))
                if stats.anomaly_pixels:
                    stats.ap = frame_pixel.compute().auprc
                state.pixel.merge(frame_pixel)
            else:
                state.pixel.update(score, truth.anomaly)
            if state.mask_components is not None:
                assert spec.mask_threshold is not None
                state.mask_components.update(
                    score >= np.float32(spec.mask_threshold), truth.anomaly
                )
            arrays['label'] = truth.anomaly

        groups = [g for g in (CALIBRATION_GROUP, truth.group) if g in state.calibration]
        if groups:
            label = self._calibration_label(truth)
            small_score, small_label = score, label
            if spec.calibration_scale != 1.0:
                small_score, small_label = downscale_for_calibration(
                    score, label, spec.calibration_scale
                )
            for group in groups:
                state.calibration[group].update(small_score, small_label)

        if (
            state.semantic is not None
            and prediction.semantic is not None
            and truth.semantic is not None
        ):
            self._update_semantic(prediction.semantic, truth.semantic, stats, arrays)

        if state.panoptic is not None and truth.panoptic_ids is not None:
            assert truth.panoptic_segments is not None and prediction.panoptic is not None
            pred_ids, pred_segments = prediction.panoptic
            frame_panoptic = PanopticAccumulator(
                list(state.panoptic.categories.values()), state.panoptic.unknown_category_id
            )
            frame_panoptic.update(
                truth.panoptic_ids, truth.panoptic_segments, pred_ids, pred_segments
            )
            if spec.frame_stats:
                pq = frame_panoptic.compute().groups['all'].pq
                stats.pq = None if math.isnan(pq) else pq
            state.panoptic.merge(frame_panoptic)
            arrays['panoptic_pred'] = pred_ids.astype(np.int32)
            arrays['panoptic_gt'] = truth.panoptic_ids.astype(np.int32)

        if truth.group is not None:
            state.group_counts[truth.group] = state.group_counts.get(truth.group, 0) + 1
        if spec.frame_stats:
            state.frames[index] = stats
        start = _lap(state.seconds, 'metrics', start)
        self.cache.write(self.name, index, arrays)
        self.indices.append(index)
        _lap(state.seconds, 'cache', start)
        return stats

    def _calibration_label(self, truth: FrameTruth) -> np.ndarray:
        if self.spec.open_set_truth_classes is not None and truth.semantic is not None:
            return open_set_binary_label(truth.semantic, self.spec.open_set_truth_classes)
        if truth.anomaly is None:
            raise ValueError(f'{self.name} has no anomaly labels to calibrate a threshold on')
        return truth.anomaly

    def _update_semantic(
        self,
        prediction: np.ndarray,
        truth: np.ndarray,
        stats: FrameStats,
        arrays: dict[str, np.ndarray],
    ) -> None:
        state = self.first.semantic
        assert state is not None
        if self.spec.semantic == 'open':
            state.update(prediction, truth)
            return
        num_known = state.num_classes
        closed_truth = truth
        if self.spec.open_set_truth_classes is not None:
            closed_truth = closed_set_target(truth, num_known)
        if self.spec.frame_stats:
            frame_matrix = ConfusionMatrix(num_known)
            frame_matrix.update(prediction, closed_truth)
            stats.miou = frame_matrix.compute().miou
            state.merge(frame_matrix)
        else:
            state.update(prediction, closed_truth)
        arrays['semantic_pred'] = prediction
        arrays['semantic_gt'] = truth

    # ---------------------------------------------------------------------------- pass 2

    def start_second_pass(self, thresholds: PassTwoThresholds) -> PassTwoState:
        """Prepare pass 2 with the thresholds chosen on the merged pass-1 state."""
        spec = self.spec
        state = PassTwoState()
        if (
            spec.component_track is not None
            and spec.anomaly
            and math.isfinite(thresholds.component)
        ):
            state.component = ComponentAccumulator(spec.component_track)
        if spec.semantic == 'closed':
            if thresholds.calibrated is not None:
                state.open_set_calibrated = OpenSetConfusion(
                    spec.num_classes, thresholds.calibrated.threshold
                )
            if spec.town_protocol:
                state.open_set_towns = {
                    town: OpenSetConfusion(spec.num_classes, point.threshold)
                    for town, point in thresholds.towns.items()
                }
        if thresholds.calibrated is not None and spec.anomaly:
            state.transfer_counts = np.zeros(4, dtype=np.int64)
        self.second, self.thresholds = state, thresholds
        return state

    def update_second(self, index: int, group: str | None = None) -> FrameStats:
        """Pass 2 on one cached frame (after `start_second_pass`).

        Args:
            index: a frame given to `update`.
            group: the frame's group (its `FrameTruth.group`).

        Returns:
            The frame's stats with the pass-2 numbers and the gallery error filled in.
        """
        state, thresholds = self.second, self.thresholds
        assert state is not None and thresholds is not None, 'start_second_pass first'
        start = time.perf_counter()
        arrays = self.cache.read(self.name, index)
        start = _lap(state.seconds, 'cache', start)
        stats = self.first.frames.get(index) or FrameStats(index, '')
        score_dtype = self.spec.protocol.score_dtype
        score = arrays['score']
        label = arrays.get('label')
        if label is not None:
            if self.spec.frame_stats:
                stats.fpr_at_tpr95_threshold = frame_anomaly_fpr(
                    score, label, thresholds.tpr95, score_dtype
                )
            if state.component is not None:
                state.component.update_from_scores(score, label, thresholds.component, score_dtype)
            if state.transfer_counts is not None and thresholds.calibrated is not None:
                predicted = score > thresholds.calibrated.threshold
                positives, negatives = label == 1, label == 0
                state.transfer_counts += np.array(
                    [
                        np.count_nonzero(predicted & positives),
                        np.count_nonzero(~predicted & positives),
                        np.count_nonzero(predicted & negatives),
                        np.count_nonzero(~predicted & negatives),
                    ],
                    dtype=np.int64,
                )
        if 'semantic_pred' in arrays:
            prediction, truth = arrays['semantic_pred'], arrays['semantic_gt']
            if state.open_set_calibrated is not None:
                state.open_set_calibrated.update(prediction, score, truth)
            if group is not None and group in state.open_set_towns:
                state.open_set_towns[group].update(prediction, score, truth)
        stats.error = frame_error(stats)
        if self.spec.frame_stats:
            state.frames.append(stats)
        _lap(state.seconds, 'metrics', start)
        return stats

    # ---------------------------------------------------------------------------- results

    def finish(
        self, thresholds: PassTwoThresholds | None = None, *, remove_cache: bool = True
    ) -> EvaluationReport:
        """Single process: thresholds from this evaluator's pass 1 (best-F1, TPR 95 %; plus
        `thresholds.calibrated` / `towns` if given), pass 2 over every cached frame, report."""
        component, tpr95 = anomaly_thresholds(self.first)
        given = thresholds or PassTwoThresholds()
        chosen = PassTwoThresholds(component, tpr95, given.calibrated, dict(given.towns))
        self.start_second_pass(chosen)
        try:
            for index in self.indices:
                self.update_second(index)
        finally:
            if remove_cache:
                self.cache.remove(self.name)
        assert self.second is not None
        return build_report(self.first, self.second, chosen)


def build_report(
    one: PassOneState, two: PassTwoState, thresholds: PassTwoThresholds
) -> EvaluationReport:
    """Merged pass states -> the data set's report."""
    report = EvaluationReport(thresholds=thresholds)
    if one.pixel is not None:
        report.pixel = one.pixel.compute()
        report.curve = one.pixel.curve()
    if two.component is not None:
        report.component = two.component.compute()
    if one.mask_components is not None:
        report.mask_component = one.mask_components.compute()
    if one.semantic is not None:
        report.semantic = one.semantic.compute()
    if two.open_set_calibrated is not None:
        report.open_set_calibrated = two.open_set_calibrated.compute()
    if two.open_set_towns:
        report.open_set_towns = {
            town: confusion.compute() for town, confusion in sorted(two.open_set_towns.items())
        }
        counts = {town: one.group_counts.get(town, 0) for town in report.open_set_towns}
        report.open_set_town_frames = counts
        values = {town: metrics.open_miou for town, metrics in report.open_set_towns.items()}
        if set(values) == {'t5', 't6'} and sum(counts.values()) > 0:
            report.open_set_towns_mean = weighted_town_mean(values, counts)
    if two.transfer_counts is not None and thresholds.calibrated is not None:
        tp, fn, fp, tn = (int(v) for v in two.transfer_counts)
        report.transfer = {
            'threshold': thresholds.calibrated.threshold,
            'tpr': tp / (tp + fn) if tp + fn else math.nan,
            'fpr': fp / (fp + tn) if fp + tn else math.nan,
        }
    if one.panoptic is not None:
        report.panoptic = one.panoptic.compute()
    report.frames = sorted(two.frames, key=lambda stats: stats.index)
    return report
