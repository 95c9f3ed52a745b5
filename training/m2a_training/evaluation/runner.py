"""Two-pass streaming evaluation: no dataset's score maps are ever held in memory together.

Pass 1 (inference), frame by frame on each rank's shard:
    segmenter(image) -> anomaly map (float32), closed-set semantic map, panoptic ids; the pixel
    curve, the calibration curves, the confusion matrix and the panoptic statistics are updated,
    and the frame's score map (plus labels and semantic prediction) is written to a per-rank
    cache on disk as `.npz`: float16 when only float16 comparisons follow (SMIYC protocols),
    float32 otherwise (exact float32 protocols, open-set thresholds). At 1024x2048 that is about
    6 MB per frame with float16 scores (10 MB float32); each dataset's cache is deleted after
    pass 2 unless asked to keep it.
Merge: rank 0 merges the pass-1 states and decides the thresholds that need the whole dataset:
    the best-pixel-F1 threshold of each pixel curve (SMIYC's component binarisation), the
    95 %-TPR point (gallery), the `--calibrate-on` open-set threshold (DenseHybrid rule: first
    ROC point with TPR > 0.95 on a half-resolution exact float32 curve) and the StreetHazards
    t5 <-> t6 thresholds; they are broadcast to all ranks.
Pass 2 (from the cache, no inference): component metrics (sIoU, PPV, F1*), open-IoU,
    the operating point of the transferred threshold, per-frame errors and each rank's gallery
    candidates (rendered to PNG bytes so that rank 0 can collect them from other nodes).

Re-running inference instead of caching would double the model cost; the cache costs disk and
I/O only (the SMIYC benchmark keeps float16 maps in HDF5 for the same reason).

Allowed dependencies: numpy, torch, tqdm, m2a_perception, m2a_training.evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import logging
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from m2a_perception.classes import VOID_ID
from m2a_perception.metrics.component import ComponentAccumulator, ComponentMetrics
from m2a_perception.metrics.open_set import (
    OpenSetConfusion,
    OpenSetMetrics,
    OperatingPoint,
    calibrate_threshold,
    calibration_town,
    closed_set_target,
    downscale_for_calibration,
    weighted_town_mean,
)
from m2a_perception.metrics.panoptic import PanopticAccumulator, PanopticMetrics, PanopticSegment
from m2a_perception.metrics.pixel import (
    FISHYSCAPES_PROTOCOL,
    PixelCurve,
    PixelCurveAccumulator,
    PixelMetrics,
    PixelProtocol,
    round_scores,
)
from m2a_perception.metrics.semantic import ConfusionMatrix, SemanticMetrics
from m2a_perception.pipeline import Segmenter
from m2a_perception.postprocess import PostprocessConfig, default_refinement_class_ids
from m2a_perception.types import SegmentationOutput, SegmentKind
from m2a_training.distributed import (
    DistributedContext,
    broadcast_from_main,
    gather_to_main,
    shard_indices,
)
from m2a_training.evaluation.datasets import DATASET_ERRORS, EvalDataset, EvalFrame, ModelSupport

LOGGER = logging.getLogger(__name__)

CALIBRATION_GROUP = 'all'


@dataclass(frozen=True)
class EvalOptions:
    """Settings of one evaluation run.

    Attributes:
        protocols: pixel protocol per dataset name.
        cache_dir: folder for the per-rank score cache.
        calibrate_on: dataset whose 95 %-TPR threshold is applied to every dataset, or None.
        calibration_scale: resize factor of the calibration maps (DenseHybrid: 0.5).
        calibration_mantissa_bits: mantissa bits of the exact float32 calibration curve (23 is
            exact; 16 bounds memory on large sets, threshold within a relative 2**-16).
        gallery_size: worst frames rendered per dataset (0: none).
        limit: evaluate only the first `limit` frames of each dataset (None: all).
        num_workers: DataLoader workers decoding frames during pass 1.
        keep_cache: keep the cache after the run.
        progress: show tqdm bars (rank 0 only).
        heatmap_range: colour range of the gallery heatmaps; None: each frame's min..max.
    """

    protocols: dict[str, PixelProtocol]
    cache_dir: Path
    calibrate_on: str | None = None
    calibration_scale: float = 0.5
    calibration_mantissa_bits: int = 16
    gallery_size: int = 8
    limit: int | None = None
    num_workers: int = 0
    keep_cache: bool = False
    progress: bool = True
    heatmap_range: tuple[float, float] | None = (0.0, 1.0)

    def calibration_protocol(self) -> PixelProtocol:
        """Exact float32 curve (scikit-learn's points) with the configured mantissa bits."""
        return dataclasses.replace(
            FISHYSCAPES_PROTOCOL,
            name='calibration',
            float32_mantissa_bits=self.calibration_mantissa_bits,
        )


@dataclass
class DatasetPlan:
    """What is computed on one dataset, fixed before the first frame.

    Attributes:
        dataset: the frames.
        protocol: pixel protocol (anomaly datasets).
        support: what the model supports on this dataset.
        segmenter: the pipeline with this dataset's post-processing.
        cache_dtype: dtype of the cached score maps.
        calibration_groups: calibration curves to accumulate ('all' for `--calibrate-on`, towns
            for the StreetHazards protocol).
        indices: frames of this dataset evaluated by this rank.
        num_frames: frames evaluated by all ranks.
    """

    dataset: EvalDataset
    protocol: PixelProtocol
    support: ModelSupport
    segmenter: Segmenter
    cache_dtype: str
    calibration_groups: tuple[str, ...]
    indices: list[int]
    num_frames: int

    @property
    def name(self) -> str:
        return self.dataset.name

    @property
    def town_protocol(self) -> bool:
        """StreetHazards t5/t6 cross-calibration applies."""
        return self.dataset.groups is not None and self.support.semantic


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


@dataclass
class PassOneState:
    """Streaming statistics of one dataset on one rank after inference (picklable)."""

    pixel: PixelCurveAccumulator | None
    calibration: dict[str, PixelCurveAccumulator]
    semantic: ConfusionMatrix | None
    panoptic: PanopticAccumulator | None
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
        for group, count in other.group_counts.items():
            self.group_counts[group] = self.group_counts.get(group, 0) + count
        _add_seconds(self.seconds, other.seconds)


@dataclass(frozen=True)
class GalleryItem:
    """A rendered gallery panel."""

    error: float
    index: int
    name: str
    png: bytes


@dataclass
class PassTwoState:
    """Statistics of one dataset on one rank from the cached maps (picklable)."""

    component: ComponentAccumulator | None = None
    open_set_calibrated: OpenSetConfusion | None = None
    open_set_towns: dict[str, OpenSetConfusion] = field(default_factory=dict)
    transfer_counts: np.ndarray | None = None  # [tp, fn, fp, tn] at the calibrated threshold
    frames: list[FrameStats] = field(default_factory=list)
    gallery: list[GalleryItem] = field(default_factory=list)
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
        self.gallery.extend(other.gallery)
        _add_seconds(self.seconds, other.seconds)


@dataclass(frozen=True)
class Thresholds:
    """Dataset-level thresholds decided on rank 0 after pass 1.

    Attributes:
        component: dataset -> best-pixel-F1 threshold (SMIYC component binarisation).
        tpr95: dataset -> threshold of the first point with TPR >= 0.95.
        calibrated: the `--calibrate-on` operating point, or None.
        towns: StreetHazards town -> operating point calibrated on the other town.
        notes: dataset -> reasons a threshold could not be chosen.
    """

    component: dict[str, float]
    tpr95: dict[str, float]
    calibrated: OperatingPoint | None
    towns: dict[str, OperatingPoint]
    notes: dict[str, list[str]]


@dataclass
class DatasetResult:
    """Merged results of one dataset (rank 0)."""

    name: str
    title: str
    description: dict[str, object]
    protocol: str | None
    pixel: PixelMetrics | None = None
    curve: PixelCurve | None = None
    component: ComponentMetrics | None = None
    semantic: SemanticMetrics | None = None
    open_set_towns: dict[str, OpenSetMetrics] = field(default_factory=dict)
    open_set_town_frames: dict[str, int] = field(default_factory=dict)
    open_set_towns_mean: float | None = None
    open_set_calibrated: OpenSetMetrics | None = None
    transfer: dict[str, float] | None = None
    panoptic: PanopticMetrics | None = None
    frames: list[FrameStats] = field(default_factory=list)
    gallery: list[GalleryItem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    num_frames: int = 0


@dataclass
class EvaluationResult:
    """Everything the report writes (rank 0)."""

    datasets: dict[str, DatasetResult]
    calibration: dict[str, object] | None
    wall_seconds: float
    world_size: int


def _add_seconds(total: dict[str, float], more: dict[str, float]) -> None:
    for key, value in more.items():
        total[key] = total.get(key, 0.0) + value


class _Timer:
    """Accumulates wall time per stage into a dict."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds
        self._start = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._start
        self._start = now


# --------------------------------------------------------------------------------------------
# Set-up


def evaluation_postprocess_config(
    base: PostprocessConfig, support: ModelSupport, panoptic: bool = True
) -> PostprocessConfig:
    """The post-processing used on one dataset.

    Evaluation always maps outputs to the source resolution (where the labels are) and keeps the
    semantic map closed-set (`anomaly_threshold=None`): open-set thresholds are applied by the
    metrics, with the strict `score > threshold` rule of DenseHybrid.
    """
    with_panoptic = support.panoptic and panoptic
    changes: dict[str, Any] = {
        'anomaly_threshold': None,
        'output_resolution': 'source',
        'semantic': support.semantic,
        'panoptic': with_panoptic,
        'mining': base.mining and with_panoptic,
    }
    if support.thing_class_ids is not None:
        changes['thing_class_ids'] = support.thing_class_ids
    if support.refinement_class_ids is not None and base.refinement_class_ids is None:
        changes['refinement_class_ids'] = support.refinement_class_ids
    return dataclasses.replace(base, **changes)


def check_class_ids(config: PostprocessConfig, num_classes: int, dataset: str) -> None:
    """Fail before the first frame if the post-processing names classes the model lacks.

    Raises:
        ValueError: naming the option to change.
    """
    if config.refinement != 'off':
        ids = config.refinement_class_ids
        if ids is None:
            ids = default_refinement_class_ids(config.refinement)
        if any(i >= num_classes for i in ids):
            raise ValueError(
                f'{dataset}: refinement {config.refinement!r} suppresses class ids {ids}, but the '
                f'model has {num_classes} classes; use --refinement off for this class set'
            )
    if config.panoptic and any(i >= num_classes for i in config.thing_class_ids):
        raise ValueError(
            f'{dataset}: thing class ids {config.thing_class_ids} do not fit {num_classes} '
            'model classes; use --no-panoptic'
        )


def build_plans(
    datasets: Sequence[EvalDataset],
    backend: object,
    preprocess_config: Any,
    num_classes: int,
    base_postprocess: PostprocessConfig,
    options: EvalOptions,
    context: DistributedContext,
    *,
    panoptic: bool = True,
) -> list[DatasetPlan]:
    """Decide per dataset what to compute and build its segmenter (sharing one backend)."""
    plans = []
    for dataset in datasets:
        support = dataset.model_support(num_classes)
        config = evaluation_postprocess_config(base_postprocess, support, panoptic)
        check_class_ids(config, num_classes, dataset.name)
        protocol = options.protocols[dataset.name]
        groups: tuple[str, ...] = ()
        if options.calibrate_on == dataset.name:
            groups = (CALIBRATION_GROUP,)
        if dataset.groups is not None and support.semantic:
            groups += tuple(sorted(set(dataset.groups)))
        float32_needed = (
            protocol.score_dtype == 'float32' or options.calibrate_on is not None or bool(groups)
        )
        num_frames = len(dataset) if options.limit is None else min(len(dataset), options.limit)
        plans.append(
            DatasetPlan(
                dataset=dataset,
                protocol=protocol,
                support=support,
                segmenter=Segmenter(backend, preprocess_config, config),  # type: ignore[arg-type]
                cache_dtype='float32' if float32_needed else 'float16',
                calibration_groups=groups,
                indices=shard_indices(num_frames, context),
                num_frames=num_frames,
            )
        )
    return plans


# --------------------------------------------------------------------------------------------
# Frame-level helpers


def open_set_binary_label(semantic_label: np.ndarray, num_known: int) -> np.ndarray:
    """(H, W) open-set labels -> anomaly labels: K -> 1, ignore -> 255, known -> 0."""
    label = np.zeros(semantic_label.shape, dtype=np.uint8)
    label[semantic_label == num_known] = 1
    label[semantic_label == VOID_ID] = VOID_ID
    return label


def predicted_panoptic(
    output: SegmentationOutput, class_to_category: Sequence[int], unknown_category_id: int | None
) -> tuple[np.ndarray, list[PanopticSegment]]:
    """The output's panoptic ids and segments in dataset categories.

    Unknown things take `unknown_category_id`; without one (closed-set ground truth) they are
    dropped to VOID (segment id 0).
    """
    assert output.panoptic is not None
    ids = output.panoptic.cpu().numpy().astype(np.int64)
    segments = []
    for segment in output.segments:
        if segment.kind is SegmentKind.UNKNOWN_THING:
            if unknown_category_id is None:
                ids[ids == segment.id] = 0
                continue
            category = unknown_category_id
        else:
            category = class_to_category[segment.class_id]
        segments.append(PanopticSegment(segment.id, category))
    return ids, segments


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


class _Cache:
    """Per-rank `.npz` files of the maps pass 2 needs."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, dataset: str, index: int) -> Path:
        return self.root / dataset / f'{index:08d}.npz'

    def write(self, dataset: str, index: int, arrays: dict[str, np.ndarray]) -> None:
        path = self.path(dataset, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)

    def read(self, dataset: str, index: int) -> dict[str, np.ndarray]:
        with np.load(self.path(dataset, index), allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def remove(self, dataset: str) -> None:
        shutil.rmtree(self.root / dataset, ignore_errors=True)


class FrameReadError(ValueError):
    """A frame could not be read (the message is the reader's, e.g. a malformed label)."""


@dataclass(frozen=True)
class _LoadFailure:
    message: str


class _ShardView(torch.utils.data.Dataset):
    """The frames of one rank's shard, for a DataLoader.

    Read errors are returned, not raised: a DataLoader worker would re-raise them as a bare
    RuntimeError (the readers' exceptions need two constructor arguments).
    """

    def __init__(self, dataset: EvalDataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> EvalFrame | _LoadFailure:
        try:
            return self.dataset.load(self.indices[position])
        except DATASET_ERRORS as error:
            return _LoadFailure(str(error))


def _keep(frame: EvalFrame | _LoadFailure) -> EvalFrame | _LoadFailure:
    return frame


def _iterate_frames(plan: DatasetPlan, num_workers: int) -> Iterator[EvalFrame]:
    view = _ShardView(plan.dataset, plan.indices)
    items: Iterator[EvalFrame | _LoadFailure]
    if num_workers <= 0:
        items = (view[position] for position in range(len(view)))
    else:
        items = iter(
            torch.utils.data.DataLoader(
                view, batch_size=None, num_workers=num_workers, collate_fn=_keep
            )
        )
    for item in items:
        if isinstance(item, _LoadFailure):
            raise FrameReadError(f'{plan.name}: {item.message}')
        yield item


def _progress(plan: DatasetPlan, stage: str, options: EvalOptions, context: DistributedContext):
    suffix = f' (rank 0 of {context.world_size})' if context.is_distributed else ''
    return tqdm(
        total=len(plan.indices),
        desc=f'{plan.name} {stage}{suffix}',
        unit='frame',
        disable=not (options.progress and context.is_main),
        dynamic_ncols=True,
    )


# --------------------------------------------------------------------------------------------
# Pass 1


def _new_pass_one(plan: DatasetPlan, options: EvalOptions, num_classes: int) -> PassOneState:
    dataset = plan.dataset
    panoptic = None
    if plan.support.panoptic and plan.segmenter.postprocess_config.panoptic:
        assert dataset.panoptic_categories is not None
        panoptic = PanopticAccumulator(dataset.panoptic_categories, dataset.unknown_category_id)
    return PassOneState(
        pixel=PixelCurveAccumulator(plan.protocol) if dataset.has_anomaly else None,
        calibration={
            group: PixelCurveAccumulator(options.calibration_protocol())
            for group in plan.calibration_groups
        },
        semantic=ConfusionMatrix(num_classes) if plan.support.semantic else None,
        panoptic=panoptic,
    )


def _calibration_label(plan: DatasetPlan, frame: EvalFrame) -> np.ndarray:
    if plan.dataset.semantic_has_anomaly and frame.semantic_label is not None:
        assert plan.dataset.semantic_classes is not None
        return open_set_binary_label(frame.semantic_label, plan.dataset.semantic_classes)
    if frame.anomaly_label is None:
        raise ValueError(f'{plan.name} has no anomaly labels to calibrate a threshold on')
    return frame.anomaly_label


def _pass_one_frame(
    plan: DatasetPlan,
    frame: EvalFrame,
    output: SegmentationOutput,
    state: PassOneState,
    cache: _Cache,
    options: EvalOptions,
    timer: _Timer,
) -> None:
    score = output.anomaly_map.float().cpu().numpy()
    semantic = None if output.semantic is None else output.semantic.cpu().numpy()
    timer.lap('inference')
    stats = FrameStats(frame.index, frame.name)
    arrays: dict[str, np.ndarray] = {'score': score.astype(plan.cache_dtype)}

    if state.pixel is not None and frame.anomaly_label is not None:
        frame_pixel = PixelCurveAccumulator(plan.protocol)
        frame_pixel.update(score, frame.anomaly_label)
        stats.anomaly_pixels = int(np.count_nonzero(frame.anomaly_label == 1))
        if stats.anomaly_pixels:
            stats.ap = frame_pixel.compute().auprc
        state.pixel.merge(frame_pixel)
        arrays['label'] = frame.anomaly_label

    groups = [g for g in (CALIBRATION_GROUP, frame.group) if g in state.calibration]
    if groups:
        label = _calibration_label(plan, frame)
        small_score, small_label = score, label
        if options.calibration_scale != 1.0:
            small_score, small_label = downscale_for_calibration(
                score, label, options.calibration_scale
            )
        for group in groups:
            state.calibration[group].update(small_score, small_label)

    if state.semantic is not None and semantic is not None and frame.semantic_label is not None:
        truth = frame.semantic_label
        num_known = state.semantic.num_classes
        closed_truth = (
            closed_set_target(truth, num_known) if plan.dataset.semantic_has_anomaly else truth
        )
        frame_matrix = ConfusionMatrix(num_known)
        frame_matrix.update(semantic, closed_truth)
        stats.miou = frame_matrix.compute().miou
        state.semantic.merge(frame_matrix)
        arrays['semantic_pred'] = semantic
        arrays['semantic_gt'] = truth

    if state.panoptic is not None and frame.panoptic_ids is not None:
        assert frame.panoptic_segments is not None
        pred_ids, pred_segments = predicted_panoptic(
            output, plan.support.class_to_category, plan.dataset.unknown_category_id
        )
        frame_panoptic = PanopticAccumulator(
            list(state.panoptic.categories.values()), state.panoptic.unknown_category_id
        )
        frame_panoptic.update(frame.panoptic_ids, frame.panoptic_segments, pred_ids, pred_segments)
        pq = frame_panoptic.compute().groups['all'].pq
        stats.pq = None if math.isnan(pq) else pq
        state.panoptic.merge(frame_panoptic)
        arrays['panoptic_pred'] = pred_ids.astype(np.int32)
        arrays['panoptic_gt'] = frame.panoptic_ids.astype(np.int32)

    if frame.group is not None:
        state.group_counts[frame.group] = state.group_counts.get(frame.group, 0) + 1
    state.frames[frame.index] = stats
    timer.lap('metrics')
    cache.write(plan.name, frame.index, arrays)
    timer.lap('cache')


def run_pass_one(
    plan: DatasetPlan,
    options: EvalOptions,
    cache: _Cache,
    context: DistributedContext,
    num_classes: int,
) -> PassOneState:
    """Inference and streaming statistics over this rank's shard of one dataset."""
    state = _new_pass_one(plan, options, num_classes)
    timer = _Timer(state.seconds)
    with _progress(plan, 'pass 1/2 (inference)', options, context) as bar:
        for frame in _iterate_frames(plan, options.num_workers):
            timer.lap('data')
            output = plan.segmenter(frame.image)
            _pass_one_frame(plan, frame, output, state, cache, options, timer)
            bar.update(1)
    state.seconds['frames'] = float(len(plan.indices))
    return state


# --------------------------------------------------------------------------------------------
# Thresholds


def decide_thresholds(
    plans: Sequence[DatasetPlan], merged: dict[str, PassOneState], options: EvalOptions
) -> Thresholds:
    """Thresholds that need a whole dataset (rank 0).

    Raises:
        ValueError: the `--calibrate-on` dataset has no usable anomaly pixels.
    """
    component, tpr95, towns = {}, {}, {}
    notes: dict[str, list[str]] = {}
    calibrated = None
    for plan in plans:
        state = merged[plan.name]
        dataset_notes = notes.setdefault(plan.name, [])
        if state.pixel is not None:
            metrics = state.pixel.compute()
            component[plan.name] = metrics.best_f1_threshold
            tpr95[plan.name] = metrics.tpr95_threshold
            if math.isnan(metrics.best_f1_threshold):
                dataset_notes.append('no anomaly pixels: pixel and component metrics undefined')
        if CALIBRATION_GROUP in state.calibration:
            try:
                calibrated = calibrate_threshold(state.calibration[CALIBRATION_GROUP].curve())
            except ValueError as error:
                raise ValueError(
                    f'cannot calibrate the open-set threshold on {plan.name}: {error}'
                ) from error
        if plan.town_protocol:
            for town in sorted(set(state.calibration) - {CALIBRATION_GROUP}):
                other = calibration_town(town)
                if other not in state.calibration:
                    dataset_notes.append(f'open-IoU^{town} skipped: town {other} not evaluated')
                    continue
                try:
                    towns[town] = calibrate_threshold(state.calibration[other].curve())
                except ValueError as error:
                    dataset_notes.append(
                        f'open-IoU^{town} skipped: calibration on {other}: {error}'
                    )
    return Thresholds(component, tpr95, calibrated, towns, notes)


# --------------------------------------------------------------------------------------------
# Pass 2


def _new_pass_two(plan: DatasetPlan, thresholds: Thresholds, num_classes: int) -> PassTwoState:
    state = PassTwoState()
    dataset = plan.dataset
    track = dataset.component_track
    if track is not None and dataset.has_anomaly:
        threshold = thresholds.component.get(plan.name, math.nan)
        if math.isfinite(threshold):
            state.component = ComponentAccumulator(track)
    if plan.support.semantic:
        if thresholds.calibrated is not None:
            state.open_set_calibrated = OpenSetConfusion(
                num_classes, thresholds.calibrated.threshold
            )
        if plan.town_protocol:
            state.open_set_towns = {
                town: OpenSetConfusion(num_classes, point.threshold)
                for town, point in thresholds.towns.items()
            }
    if thresholds.calibrated is not None and dataset.has_anomaly:
        state.transfer_counts = np.zeros(4, dtype=np.int64)
    return state


def _frame_error(stats: FrameStats) -> float:
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


def _pass_two_frame(
    plan: DatasetPlan,
    index: int,
    arrays: dict[str, np.ndarray],
    stats: FrameStats,
    state: PassTwoState,
    thresholds: Thresholds,
    group: str | None,
) -> None:
    score = arrays['score']
    label = arrays.get('label')
    if label is not None:
        tpr95_threshold = thresholds.tpr95.get(plan.name, math.nan)
        stats.fpr_at_tpr95_threshold = frame_anomaly_fpr(
            score, label, tpr95_threshold, plan.protocol.score_dtype
        )
        if state.component is not None:
            state.component.update_from_scores(
                score, label, thresholds.component[plan.name], plan.protocol.score_dtype
            )
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
    stats.error = _frame_error(stats)


def run_pass_two(
    plan: DatasetPlan,
    pass_one: PassOneState,
    thresholds: Thresholds,
    options: EvalOptions,
    cache: _Cache,
    context: DistributedContext,
    num_classes: int,
    render: Any,
) -> PassTwoState:
    """Threshold-dependent metrics from the cache; renders this rank's worst frames.

    Args:
        render: callable (plan, frame, arrays, stats, thresholds) -> PNG bytes.
    """
    state = _new_pass_two(plan, thresholds, num_classes)
    timer = _Timer(state.seconds)
    worst: list[tuple[float, int]] = []  # min-heap of (error, -index): the k largest errors
    groups = plan.dataset.groups
    with _progress(plan, 'pass 2/2 (metrics)', options, context) as bar:
        for index in plan.indices:
            arrays = cache.read(plan.name, index)
            timer.lap('cache')
            stats = pass_one.frames[index]
            group = None if groups is None else groups[index]
            _pass_two_frame(plan, index, arrays, stats, state, thresholds, group)
            state.frames.append(stats)
            if options.gallery_size > 0:
                item = (stats.error, -index)
                if len(worst) < options.gallery_size:
                    heapq.heappush(worst, item)
                elif item > worst[0]:
                    heapq.heapreplace(worst, item)
            timer.lap('metrics')
            bar.update(1)
    for error, negative_index in sorted(worst, reverse=True):
        index = -negative_index
        frame = plan.dataset.load(index)
        png = render(plan, frame, cache.read(plan.name, index), pass_one.frames[index], thresholds)
        state.gallery.append(GalleryItem(error, index, frame.name, png))
    timer.lap('gallery')
    return state


# --------------------------------------------------------------------------------------------
# Results


def _open_set_results(
    result: DatasetResult, plan: DatasetPlan, merged_two: PassTwoState, merged_one: PassOneState
) -> None:
    if merged_two.open_set_calibrated is not None:
        result.open_set_calibrated = merged_two.open_set_calibrated.compute()
    if merged_two.open_set_towns:
        result.open_set_towns = {
            town: confusion.compute()
            for town, confusion in sorted(merged_two.open_set_towns.items())
        }
        counts = {town: merged_one.group_counts.get(town, 0) for town in result.open_set_towns}
        result.open_set_town_frames = counts
        values = {town: metrics.open_miou for town, metrics in result.open_set_towns.items()}
        if set(values) == {'t5', 't6'} and sum(counts.values()) > 0:
            result.open_set_towns_mean = weighted_town_mean(values, counts)


def build_result(
    plan: DatasetPlan,
    one: PassOneState,
    two: PassTwoState,
    thresholds: Thresholds,
) -> DatasetResult:
    """Merged states -> the dataset's results."""
    dataset = plan.dataset
    result = DatasetResult(
        name=plan.name,
        title=dataset.title,
        description=dataset.describe(),
        protocol=plan.protocol.name if dataset.has_anomaly else None,
        notes=[*plan.support.notes, *thresholds.notes.get(plan.name, [])],
        num_frames=plan.num_frames,
    )
    if one.pixel is not None:
        result.pixel = one.pixel.compute()
        result.curve = one.pixel.curve()
    if two.component is not None:
        result.component = two.component.compute()
    elif dataset.component_track is None and dataset.has_anomaly:
        result.notes.append('component metrics: not defined for this benchmark')
    if one.semantic is not None:
        result.semantic = one.semantic.compute()
    _open_set_results(result, plan, two, one)
    if (
        plan.support.semantic
        and result.open_set_calibrated is None
        and not result.open_set_towns
        and not plan.town_protocol
    ):
        result.notes.append('open-IoU needs an open-set threshold: pass --calibrate-on NAME')
    if two.transfer_counts is not None and thresholds.calibrated is not None:
        tp, fn, fp, tn = (int(v) for v in two.transfer_counts)
        result.transfer = {
            'threshold': thresholds.calibrated.threshold,
            'tpr': tp / (tp + fn) if tp + fn else math.nan,
            'fpr': fp / (fp + tn) if fp + tn else math.nan,
        }
    if one.panoptic is not None:
        result.panoptic = one.panoptic.compute()
    result.frames = sorted(two.frames, key=lambda stats: stats.index)
    result.gallery = sorted(two.gallery, key=lambda item: (-item.error, item.index))
    result.seconds = {**one.seconds}
    for key, value in two.seconds.items():
        result.seconds[f'pass2_{key}'] = value
    return result


class EvaluationError(RuntimeError):
    """A rank failed; raised on every rank so that none waits forever in a collective."""


def _guarded(function: Any, context: DistributedContext) -> tuple[Any, str | None]:
    """Run `function`; in a distributed job turn a failure into a message to gather."""
    if not context.is_distributed:
        return function(), None
    try:
        return function(), None
    except Exception as error:  # any failure must reach the other ranks
        LOGGER.exception('rank %d failed', context.rank)
        return None, f'rank {context.rank}: {type(error).__name__}: {error}'


def _first_error(gathered: list[tuple[Any, str | None]]) -> str | None:
    return next((message for _, message in gathered if message is not None), None)


def run_evaluation(
    plans: Sequence[DatasetPlan],
    options: EvalOptions,
    context: DistributedContext,
    num_classes: int,
    render: Any,
) -> EvaluationResult | None:
    """Both passes over every dataset; the merged result on rank 0, None on other ranks.

    Raises:
        ValueError: calibration impossible (single process).
        EvaluationError: a rank failed or calibration was impossible (distributed; raised on
            every rank).
    """
    start = time.perf_counter()
    cache = _Cache(options.cache_dir / f'rank{context.rank}')
    try:
        pass_one, error = _guarded(
            lambda: {
                plan.name: run_pass_one(plan, options, cache, context, num_classes)
                for plan in plans
            },
            context,
        )
        gathered = gather_to_main((pass_one, error), context)
        merged_one: dict[str, PassOneState] = {}
        decision: tuple[Thresholds | None, str | None] = (None, None)
        if gathered is not None:
            decision = (None, _first_error(gathered))
            if decision[1] is None:
                merged_one = _merge_pass_one(plans, [states for states, _ in gathered])
                decision = _guarded(lambda: decide_thresholds(plans, merged_one, options), context)
        thresholds, message = broadcast_from_main(decision, context)
        if thresholds is None:
            raise EvaluationError(message)

        def second_pass() -> dict[str, PassTwoState]:
            states = {}
            for plan in plans:
                states[plan.name] = run_pass_two(
                    plan,
                    pass_one[plan.name],
                    thresholds,
                    options,
                    cache,
                    context,
                    num_classes,
                    render,
                )
                if not options.keep_cache:
                    cache.remove(plan.name)
            return states

        gathered_two = gather_to_main(_guarded(second_pass, context), context)
    finally:
        if not options.keep_cache:
            shutil.rmtree(cache.root, ignore_errors=True)
            # Succeeds for the last rank to finish; never removes a non-empty (shared) folder.
            with contextlib.suppress(OSError):
                options.cache_dir.rmdir()
    if gathered_two is None:
        return None
    message = _first_error(gathered_two)
    if message is not None:
        raise EvaluationError(message)
    results = {}
    for plan in plans:
        merged_two = gathered_two[0][0][plan.name]
        for states, _ in gathered_two[1:]:
            merged_two.merge(states[plan.name])
        result = build_result(plan, merged_one[plan.name], merged_two, thresholds)
        result.gallery = result.gallery[: options.gallery_size]
        results[plan.name] = result
    calibration = None
    if thresholds.calibrated is not None:
        calibration = {
            'dataset': options.calibrate_on,
            'rule': 'first ROC point with TPR > 0.95 (DenseHybrid), score > threshold',
            'scale': options.calibration_scale,
            'mantissa_bits': options.calibration_mantissa_bits,
            **dataclasses.asdict(thresholds.calibrated),
        }
    return EvaluationResult(
        datasets=results,
        calibration=calibration,
        wall_seconds=time.perf_counter() - start,
        world_size=context.world_size,
    )


def _merge_pass_one(
    plans: Sequence[DatasetPlan], gathered: list[dict[str, PassOneState]]
) -> dict[str, PassOneState]:
    merged = {}
    for plan in plans:
        first = gathered[0][plan.name]
        state = PassOneState(
            pixel=first.pixel,
            calibration=dict(first.calibration),
            semantic=first.semantic,
            panoptic=first.panoptic,
            group_counts=dict(first.group_counts),
            seconds=dict(first.seconds),
        )
        for other in gathered[1:]:
            state.merge(other[plan.name])
        merged[plan.name] = state
    return merged
