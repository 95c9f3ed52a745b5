"""Two-pass streaming evaluation: no dataset's score maps are ever held in memory together.

The metrics of both passes are `m2a_perception.evaluation.two_pass.TwoPassEvaluator` (the one the
replay uses too); this module adds the data sets, inference, sharding, the thresholds that span
data sets, and the gallery.

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
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from m2a_perception.evaluation import frames
from m2a_perception.evaluation.cache import FrameCache
from m2a_perception.evaluation.frames import FramePrediction, FrameTruth
from m2a_perception.evaluation.two_pass import (
    CALIBRATION_GROUP,
    EvaluationReport,
    EvaluationSpec,
    PassOneState,
    PassTwoState,
    PassTwoThresholds,
    TwoPassEvaluator,
    anomaly_thresholds,
    build_report,
)
from m2a_perception.metrics.open_set import (
    OperatingPoint,
    calibrate_threshold,
    calibration_town,
)
from m2a_perception.metrics.panoptic import PanopticSegment
from m2a_perception.metrics.pixel import (
    FISHYSCAPES_PROTOCOL,
    PixelProtocol,
)
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

# Names of the core that callers (and the tests) import from here.
FrameStats = frames.FrameStats
frame_anomaly_fpr = frames.frame_anomaly_fpr
open_set_binary_label = frames.open_set_binary_label
_frame_error = frames.frame_error

LOGGER = logging.getLogger(__name__)


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

    def evaluation_spec(self, options: EvalOptions, num_classes: int) -> EvaluationSpec:
        """What the core evaluator computes on this dataset."""
        dataset = self.dataset
        panoptic = self.support.panoptic and self.segmenter.postprocess_config.panoptic
        if panoptic:
            assert dataset.panoptic_categories is not None
        return EvaluationSpec(
            protocol=self.protocol,
            anomaly=dataset.has_anomaly,
            component_track=dataset.component_track,
            num_classes=num_classes,
            semantic='closed' if self.support.semantic else None,
            open_set_truth_classes=dataset.semantic_classes
            if dataset.semantic_has_anomaly
            else None,
            calibration_groups=self.calibration_groups,
            calibration_protocol=options.calibration_protocol(),
            calibration_scale=options.calibration_scale,
            town_protocol=self.town_protocol,
            panoptic_categories=dataset.panoptic_categories if panoptic else None,
            unknown_category_id=dataset.unknown_category_id,
            cache_dtype=self.cache_dtype,
        )


@dataclass(frozen=True)
class GalleryItem:
    """A rendered gallery panel."""

    error: float
    index: int
    name: str
    png: bytes


@dataclass
class RankPassTwo:
    """Pass-2 statistics of one dataset on one rank and its rendered gallery (picklable)."""

    state: PassTwoState
    gallery: list[GalleryItem] = field(default_factory=list)

    def merge(self, other: RankPassTwo) -> None:
        self.state.merge(other.state)
        self.gallery.extend(other.gallery)


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

    def for_dataset(self, name: str, town_protocol: bool) -> PassTwoThresholds:
        """The thresholds pass 2 applies to one dataset."""
        return PassTwoThresholds(
            component=self.component.get(name, math.nan),
            tpr95=self.tpr95.get(name, math.nan),
            calibrated=self.calibrated,
            towns=dict(self.towns) if town_protocol else {},
        )


@dataclass(kw_only=True)
class DatasetResult(EvaluationReport):
    """Merged results of one dataset (rank 0): the core's report plus what the tables and the
    gallery need."""

    name: str
    title: str
    description: dict[str, object]
    protocol: str | None
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


class _Timer:
    """Accumulates wall time per stage into a dict."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds
        self._start = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._start
        self._start = now

    def restart(self) -> None:
        """Start the next lap now (time spent meanwhile is counted elsewhere)."""
        self._start = time.perf_counter()


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


def _frame_truth(frame: EvalFrame) -> FrameTruth:
    labels = (frame.anomaly_label, frame.semantic_label, frame.panoptic_ids)
    return FrameTruth(*labels, frame.panoptic_segments, frame.group)


def _frame_prediction(
    plan: DatasetPlan, evaluator: TwoPassEvaluator, frame: EvalFrame, output: SegmentationOutput
) -> FramePrediction:
    """The output as numpy; panoptic ids in dataset categories where PQ is computed."""
    score = output.anomaly_map.float().cpu().numpy()
    semantic = None if output.semantic is None else output.semantic.cpu().numpy()
    panoptic = None
    if evaluator.first.panoptic is not None and frame.panoptic_ids is not None:
        panoptic = predicted_panoptic(
            output, plan.support.class_to_category, plan.dataset.unknown_category_id
        )
    return FramePrediction(score, semantic, panoptic)


def run_pass_one(
    plan: DatasetPlan,
    options: EvalOptions,
    cache: FrameCache,
    context: DistributedContext,
    num_classes: int,
) -> TwoPassEvaluator:
    """Inference and streaming statistics over this rank's shard of one dataset."""
    evaluator = TwoPassEvaluator(plan.evaluation_spec(options, num_classes), cache, plan.name)
    timer = _Timer(evaluator.first.seconds)
    with _progress(plan, 'pass 1/2 (inference)', options, context) as bar:
        for frame in _iterate_frames(plan, options.num_workers):
            timer.lap('data')
            output = plan.segmenter(frame.image)
            prediction = _frame_prediction(plan, evaluator, frame, output)
            timer.lap('inference')
            evaluator.update(frame.index, frame.name, prediction, _frame_truth(frame))
            timer.restart()  # the evaluator timed 'metrics' and 'cache'
            bar.update(1)
    evaluator.first.seconds['frames'] = float(len(plan.indices))
    return evaluator


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
            component[plan.name], tpr95[plan.name] = anomaly_thresholds(state)
            if math.isnan(component[plan.name]):
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


def run_pass_two(
    plan: DatasetPlan,
    evaluator: TwoPassEvaluator,
    thresholds: Thresholds,
    options: EvalOptions,
    context: DistributedContext,
    render: Any,
) -> RankPassTwo:
    """Threshold-dependent metrics from the cache; renders this rank's worst frames.

    Args:
        render: callable (plan, frame, arrays, stats, thresholds) -> PNG bytes.
    """
    state = evaluator.start_second_pass(thresholds.for_dataset(plan.name, plan.town_protocol))
    result = RankPassTwo(state)
    worst: list[tuple[float, int]] = []  # min-heap of (error, -index): the k largest errors
    groups = plan.dataset.groups
    with _progress(plan, 'pass 2/2 (metrics)', options, context) as bar:
        for index in plan.indices:
            group = None if groups is None else groups[index]
            stats = evaluator.update_second(index, group)
            if options.gallery_size > 0:
                item = (stats.error, -index)
                if len(worst) < options.gallery_size:
                    heapq.heappush(worst, item)
                elif item > worst[0]:
                    heapq.heapreplace(worst, item)
            bar.update(1)
    timer = _Timer(state.seconds)
    for error, negative_index in sorted(worst, reverse=True):
        index = -negative_index
        frame = plan.dataset.load(index)
        arrays = evaluator.cache.read(plan.name, index)
        png = render(plan, frame, arrays, evaluator.first.frames[index], thresholds)
        result.gallery.append(GalleryItem(error, index, frame.name, png))
    timer.lap('gallery')
    return result


# --------------------------------------------------------------------------------------------
# Results


def build_result(
    plan: DatasetPlan,
    one: PassOneState,
    two: RankPassTwo,
    thresholds: Thresholds,
) -> DatasetResult:
    """Merged states -> the dataset's results."""
    dataset = plan.dataset
    report = build_report(one, two.state, thresholds.for_dataset(plan.name, plan.town_protocol))
    result = DatasetResult(
        **{item.name: getattr(report, item.name) for item in dataclasses.fields(report)},
        name=plan.name,
        title=dataset.title,
        description=dataset.describe(),
        protocol=plan.protocol.name if dataset.has_anomaly else None,
        notes=[*plan.support.notes, *thresholds.notes.get(plan.name, [])],
        num_frames=plan.num_frames,
    )
    if report.component is None and dataset.component_track is None and dataset.has_anomaly:
        result.notes.append('component metrics: not defined for this benchmark')
    if (
        plan.support.semantic
        and result.open_set_calibrated is None
        and not result.open_set_towns
        and not plan.town_protocol
    ):
        result.notes.append('open-IoU needs an open-set threshold: pass --calibrate-on NAME')
    result.gallery = sorted(two.gallery, key=lambda item: (-item.error, item.index))
    result.seconds = {**one.seconds}
    for key, value in two.state.seconds.items():
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
    cache = FrameCache(options.cache_dir / f'rank{context.rank}')
    try:
        evaluators, error = _guarded(
            lambda: {
                plan.name: run_pass_one(plan, options, cache, context, num_classes)
                for plan in plans
            },
            context,
        )
        pass_one = (
            None
            if evaluators is None
            else {name: evaluator.first.without_frames() for name, evaluator in evaluators.items()}
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

        def second_pass() -> dict[str, RankPassTwo]:
            states = {}
            for plan in plans:
                states[plan.name] = run_pass_two(
                    plan, evaluators[plan.name], thresholds, options, context, render
                )
                if not options.keep_cache:
                    cache.remove(plan.name)
            return states

        gathered_two = gather_to_main(_guarded(second_pass, context), context)
    finally:
        if not options.keep_cache:
            cache.remove_all()
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
        state = gathered[0][plan.name].without_frames()
        for other in gathered[1:]:
            state.merge(other[plan.name])
        merged[plan.name] = state
    return merged
