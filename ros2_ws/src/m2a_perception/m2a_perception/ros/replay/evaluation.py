"""Evaluation of replayed frames against ground-truth topics, through `m2a_perception.metrics`.

Ground truth is matched to predictions by camera and header stamp:

- `<camera>/ground_truth/anomaly` (mono8; 0 inlier, 1 anomaly, 255 void) gives the pixel
  metrics (AuPRC, FPR95, AUROC; SMIYC conventions by default), the component metrics (sIoU, PPV,
  F1*) binarised at the best-F1 threshold of the same curve as SMIYC and `m2a-eval` do, and the
  component metrics of the mask the node publishes (`anomaly/mask`: score >= anomaly.threshold);
- `<camera>/ground_truth/semantic` (mono8; train ids 0..K-1, K unknown, 255 void) gives the
  open-set IoU of the published `panoptic/semantic` map (unknown where score >= the threshold).

The best-F1 threshold is known only after the last frame, so binarisation needs a second pass:
score maps and labels are kept in a temporary on-disk cache (float16 for the default protocol,
as `m2a-eval` does), not in memory.

Allowed dependencies: numpy, OpenCV, rosbags, the core metrics, `m2a_perception.ros.conversions`,
`m2a_perception.ros.replay`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from m2a_perception.metrics.component import (
    ANOMALY_TRACK,
    OBSTACLE_TRACK,
    ComponentAccumulator,
)
from m2a_perception.metrics.pixel import PixelCurveAccumulator, get_pixel_protocol
from m2a_perception.metrics.semantic import ConfusionMatrix
from m2a_perception.ros.conversions import image_msg_to_array
from m2a_perception.ros.replay.bag import (
    IMAGE_TYPE,
    BagReader,
    BagReadError,
    CameraSource,
    TopicInfo,
    detect_cameras,
    ground_truth_kinds,
    m2a_typestore,
    stamp_ns,
)
from m2a_perception.ros.replay.report import CameraCounters, LatencySummary, ReplayReport

COMPONENT_TRACKS = {'anomaly': ANOMALY_TRACK, 'obstacle': OBSTACLE_TRACK}
# Unmatched frames kept per camera while waiting for their counterpart (bounds memory when a
# camera has labels for some frames only, or the node dropped frames).
MAX_PENDING = 256


@dataclass(frozen=True)
class EvaluationSettings:
    """How replayed frames are scored.

    Attributes:
        pixel_protocol: 'smiyc' (default), 'smiyc_binned', 'fishyscapes' or 'mask2anomaly'
            (see `m2a_perception.metrics.pixel`).
        component_track: 'anomaly' (RoadAnomaly21 sizes) or 'obstacle' (RoadObstacle21 sizes).
        node_threshold: the node's `anomaly.threshold` (its published mask).
        num_classes: known classes K of the model (19 for Cityscapes).
    """

    pixel_protocol: str = 'smiyc'
    component_track: str = 'anomaly'
    node_threshold: float = 0.5
    num_classes: int = 19

    def __post_init__(self) -> None:
        get_pixel_protocol(self.pixel_protocol)  # raises for unknown names
        if self.component_track not in COMPONENT_TRACKS:
            raise ValueError(
                f'component_track must be one of {tuple(COMPONENT_TRACKS)}, got '
                f'{self.component_track!r}'
            )


@dataclass
class _Pending:
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    score: np.ndarray | None = None
    semantic: np.ndarray | None = None
    predicted: bool = False


class GroundTruthEvaluator:
    """Streams (prediction, ground truth) pairs into the metric accumulators.

    Args:
        settings: protocol, track, threshold, classes.
        expected: camera name -> ground-truth kinds present for it ('anomaly', 'semantic').
    """

    def __init__(
        self, settings: EvaluationSettings, expected: Mapping[str, Sequence[str]]
    ) -> None:
        self.settings = settings
        self.expected = {camera: tuple(kinds) for camera, kinds in expected.items() if kinds}
        self.protocol = get_pixel_protocol(settings.pixel_protocol)
        self.pixel = PixelCurveAccumulator(self.protocol)
        track = COMPONENT_TRACKS[settings.component_track]
        self.node_components = ComponentAccumulator(track)
        self.track = track
        self.num_classes = settings.num_classes
        self.semantic: ConfusionMatrix | None = None
        self.frames_evaluated = 0
        self.frames_with_semantic = 0
        self.frames_without_output = 0
        self.predictions_without_truth = 0
        self.notes: list[str] = []
        self._pending: dict[str, collections.OrderedDict[int, _Pending]] = {
            camera: collections.OrderedDict() for camera in self.expected
        }
        self._cache_dir: Path | None = None
        self._cached = 0

    def set_num_classes(self, num_classes: int) -> None:
        """The model's known classes K (its `unknown_id`); before the first semantic frame."""
        if self.semantic is not None and num_classes != self.num_classes:
            raise ValueError(f'num_classes changed from {self.num_classes} to {num_classes}')
        self.num_classes = num_classes

    @property
    def active(self) -> bool:
        """True if any camera has ground truth."""
        return bool(self.expected)

    def add_ground_truth(self, camera: str, stamp: int, kind: str, label: np.ndarray) -> None:
        """One ground-truth image (copied; the caller may reuse its buffer)."""
        if camera not in self.expected:
            return
        entry = self._entry(camera, stamp)
        entry.truth[kind] = np.array(label, dtype=np.uint8, copy=True)
        self._try_update(camera, stamp, entry)

    def add_prediction(
        self, camera: str, stamp: int, score: np.ndarray, semantic: np.ndarray | None
    ) -> None:
        """One frame's anomaly score (H, W) float32 and open-set semantic map (H, W) uint8."""
        if camera not in self.expected:
            return
        entry = self._entry(camera, stamp)
        entry.score = np.array(score, dtype=np.float32, copy=True)
        entry.semantic = None if semantic is None else np.array(semantic, np.uint8, copy=True)
        entry.predicted = True
        self._try_update(camera, stamp, entry)

    def _entry(self, camera: str, stamp: int) -> _Pending:
        pending = self._pending[camera]
        entry = pending.get(stamp)
        if entry is None:
            entry = pending[stamp] = _Pending()
            while len(pending) > MAX_PENDING:
                _, old = pending.popitem(last=False)
                self._count_unmatched(old)
        return entry

    def _count_unmatched(self, entry: _Pending) -> None:
        if entry.predicted:
            self.predictions_without_truth += 1
        elif entry.truth:
            self.frames_without_output += 1

    def _try_update(self, camera: str, stamp: int, entry: _Pending) -> None:
        if not entry.predicted or set(entry.truth) != set(self.expected[camera]):
            return
        del self._pending[camera][stamp]
        assert entry.score is not None
        self._update(entry.score, entry.semantic, entry.truth, f'{camera} @ {stamp}')

    def _update(
        self,
        score: np.ndarray,
        semantic: np.ndarray | None,
        truth: Mapping[str, np.ndarray],
        where: str,
    ) -> None:
        self.frames_evaluated += 1
        label = truth.get('anomaly')
        if label is not None:
            if score.shape != label.shape:
                self._note(
                    f'the published maps ({score.shape[0]}x{score.shape[1]}) were resized '
                    f'bilinearly to the ground truth ({label.shape[0]}x{label.shape[1]}); for '
                    'numbers comparable with m2a-eval replay with -p output_resolution:=source'
                )
                score = cv2.resize(score, label.shape[::-1], interpolation=cv2.INTER_LINEAR)
            try:
                self.pixel.update(score, label)
            except ValueError as error:
                raise ValueError(f'ground truth anomaly of {where}: {error}') from error
            self.node_components.update(score >= np.float32(self.settings.node_threshold), label)
            self._cache(score, label)
        semantic_truth = truth.get('semantic')
        if semantic_truth is not None and semantic is not None:
            if semantic.shape != semantic_truth.shape:
                semantic = cv2.resize(
                    semantic, semantic_truth.shape[::-1], interpolation=cv2.INTER_NEAREST
                )
            if self.semantic is None:
                self.semantic = ConfusionMatrix(self.num_classes + 1)
            try:
                self.semantic.update(semantic, semantic_truth)
            except ValueError as error:
                raise ValueError(f'ground truth semantic of {where}: {error}') from error
            self.frames_with_semantic += 1

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _cache(self, score: np.ndarray, label: np.ndarray) -> None:
        if self._cache_dir is None:
            self._cache_dir = Path(tempfile.mkdtemp(prefix='m2a-replay-eval-'))
        dtype = np.float16 if self.protocol.score_dtype == 'float16' else np.float32
        np.save(self._cache_dir / f'{self._cached:07d}_score.npy', score.astype(dtype))
        np.save(self._cache_dir / f'{self._cached:07d}_label.npy', label)
        self._cached += 1

    def compute(self) -> dict[str, Any] | None:
        """The metrics as a JSON-ready dict (None if no camera has ground truth); frees the
        cache."""
        if not self.active:
            return None
        try:
            return self._compute()
        finally:
            self.discard()

    def _compute(self) -> dict[str, Any]:
        for pending in self._pending.values():
            for entry in pending.values():
                self._count_unmatched(entry)
            pending.clear()
        result: dict[str, Any] = {
            'frames_evaluated': self.frames_evaluated,
            'frames_without_output': self.frames_without_output,
            'predictions_without_ground_truth': self.predictions_without_truth,
            'settings': {
                'pixel_protocol': self.settings.pixel_protocol,
                'component_track': self.settings.component_track,
                'node_threshold': self.settings.node_threshold,
                'num_classes': self.num_classes,
            },
            'thresholds': {},
        }
        if self._cached:
            pixel = self.pixel.compute()
            result['pixel'] = pixel.as_dict()
            threshold = pixel.best_f1_threshold
            result['thresholds']['components'] = threshold
            if math.isnan(threshold):
                self._note('no anomaly pixels: best-F1 component metrics undefined')
            else:
                components = ComponentAccumulator(self.track)
                assert self._cache_dir is not None
                for index in range(self._cached):
                    score = np.load(self._cache_dir / f'{index:07d}_score.npy')
                    label = np.load(self._cache_dir / f'{index:07d}_label.npy')
                    components.update_from_scores(
                        score, label, threshold, self.protocol.score_dtype
                    )
                result['components'] = components.compute().as_dict()
            result['components_at_node_threshold'] = self.node_components.compute().as_dict()
            result['thresholds']['components_at_node_threshold'] = self.settings.node_threshold
        if self.semantic is not None and self.frames_with_semantic:
            metrics = self.semantic.compute()
            known = np.asarray(metrics.iou[: self.num_classes], dtype=np.float64)
            result['semantic'] = {
                'frames': self.frames_with_semantic,
                'miou_known': float(np.nanmean(known)) if np.isfinite(known).any() else math.nan,
                'iou_unknown': metrics.iou[self.num_classes],
                'confusion': metrics.as_dict(),
            }
        result['notes'] = list(self.notes)
        return result

    def discard(self) -> None:
        """Delete the on-disk cache."""
        if self._cache_dir is not None:
            shutil.rmtree(self._cache_dir, ignore_errors=True)
            self._cache_dir = None
            self._cached = 0

    def __del__(self) -> None:
        self.discard()


def decode_image(data: bytes) -> Any:
    """A `sensor_msgs/Image` from CDR bytes (rosbags message; no rclpy needed)."""
    return m2a_typestore().deserialize_cdr(data, IMAGE_TYPE)


# ------------------------------------------------------------------- bags with node outputs


SCORE_SUFFIX = '/anomaly/score'


def output_cameras(topics: Mapping[str, TopicInfo]) -> list[CameraSource]:
    """Cameras of a bag with node outputs: every `<ns>/<name>/anomaly/score` Image topic, with
    its input topic if the bag also holds it."""
    inputs = {}
    with contextlib.suppress(ValueError):
        inputs = {camera.prefix: camera for camera in detect_cameras(topics)}
    cameras = []
    for topic, info in sorted(topics.items()):
        if not topic.endswith(SCORE_SUFFIX) or info.msgtype != IMAGE_TYPE:
            continue
        prefix = topic[: -len(SCORE_SUFFIX)]
        namespace, _, name = prefix.rpartition('/')
        cameras.append(inputs.get(prefix, CameraSource(name, '', 'raw', namespace)))
    return cameras


def evaluate_recorded_bag(
    bag: str | Path,
    settings: EvaluationSettings | None = None,
    mode: str = 'recorded-outputs',
    progress: bool = False,
) -> ReplayReport:
    """Statistics and metrics of a bag that holds the node's outputs (a live recording, or the
    output of `replay_bag`).

    Latencies come from the `stats` topics (InferenceStats), frame counts from the input topics
    and the node's counters, metrics from `anomaly/score` and `panoptic/semantic` against the
    ground-truth topics. The node threshold is read from `panoptic/segments` when present.

    Raises:
        BagReadError: the bag cannot be read (the partial report is attached).
        ValueError: the bag holds no node outputs.
    """
    settings = settings or EvaluationSettings()
    path = Path(bag)
    with BagReader(path) as reader:
        cameras = output_cameras(reader.topics)
        if not cameras:
            raise ValueError(f'{path} holds no node outputs (<camera>/anomaly/score topics)')
        threshold, unknown_id = _panoptic_settings(reader, cameras)
        settings = EvaluationSettings(
            settings.pixel_protocol,
            settings.component_track,
            settings.node_threshold if threshold is None else threshold,
            settings.num_classes if unknown_id is None else unknown_id,
        )
        expected = {c.name: ground_truth_kinds(c, reader.topics) for c in cameras}
        evaluator = GroundTruthEvaluator(settings, expected)
        report = ReplayReport(mode=mode, input_bag=str(path), output_bag=None)
        report.cameras = {c.name: CameraCounters(topic=c.topic) for c in cameras}
        routes: dict[str, tuple[CameraSource, str]] = {}
        for camera in cameras:
            if camera.topic:
                routes[camera.topic] = (camera, 'input')
            routes[camera.output_topic('anomaly/score')] = (camera, 'score')
            routes[camera.output_topic('panoptic/semantic')] = (camera, 'semantic')
            routes[camera.output_topic('stats')] = (camera, 'stats')
            for kind in expected[camera.name]:
                routes[camera.ground_truth_topic(kind)] = (camera, f'truth:{kind}')
        timings: dict[str, list[float]] = {}
        report.output_counts = {t: info.count or 0 for t, info in reader.topics.items()}
        semantic_by_stamp: dict[tuple[str, int], np.ndarray] = {}
        scores: dict[tuple[str, int], np.ndarray] = {}
        first_log = last_log = None
        store = m2a_typestore()
        try:
            for message in _progress(reader.messages(routes), reader.count(routes), progress):
                camera, kind = routes[message.topic]
                counters = report.cameras[camera.name]
                if kind == 'input':
                    counters.received += 1
                    first_log = message.log_time_ns if first_log is None else first_log
                elif kind == 'stats':
                    stats = store.deserialize_cdr(
                        message.data, 'm2a_perception_msgs/msg/InferenceStats'
                    )
                    stages = stats_stages(stats)
                    for stage, value in stages.items():
                        timings.setdefault(stage, []).append(value)
                    timings.setdefault('total', []).append(
                        sum(v for k, v in stages.items() if k not in _NOT_PROCESSING)
                    )
                    counters.processed = max(counters.processed, int(stats.frames_processed))
                    counters.dropped_overwritten = int(stats.frames_dropped_overwritten)
                    counters.dropped_stale = int(stats.frames_dropped_stale)
                    if int(stats.frames_dropped_invalid):
                        counters.invalid = {'invalid': int(stats.frames_dropped_invalid)}
                    last_log = message.log_time_ns
                else:
                    image = decode_image(message.data)
                    key = (camera.name, stamp_ns(image.header))
                    pixels = np.array(image_msg_to_array(image), copy=True)
                    if kind.startswith('truth:'):
                        evaluator.add_ground_truth(key[0], key[1], kind[6:], pixels)
                    elif kind == 'semantic':
                        semantic_by_stamp[key] = pixels
                    else:
                        scores[key] = pixels
                    # The node publishes the score before the semantic map; pair them up.
                    if key in scores and (
                        key in semantic_by_stamp
                        or camera.output_topic('panoptic/semantic') not in reader.topics
                    ):
                        evaluator.add_prediction(
                            key[0], key[1], scores.pop(key), semantic_by_stamp.pop(key, None)
                        )
        except Exception as error:
            evaluator.discard()
            if hasattr(error, 'report'):
                error.report = report
            raise
        for (name, stamp), score in scores.items():
            evaluator.add_prediction(
                name, stamp, score, semantic_by_stamp.pop((name, stamp), None)
            )
        report.add_skipped(reader.skipped)
    report.metrics = evaluator.compute()
    report.latency_ms = {stage: LatencySummary.of(values) for stage, values in timings.items()}
    if first_log is not None and last_log is not None and last_log > first_log:
        report.wall_time_s = (last_log - first_log) / 1e9
        report.throughput_fps = report.frames_processed / report.wall_time_s
        report.notes.append(
            'duration and throughput are measured in bag (sim) time, from the first input to '
            'the last stats message'
        )
    return report


# InferenceStats timings that are not processing stages (not part of 'total').
_NOT_PROCESSING = ('queue_wait', 'end_to_end')


def stats_stages(stats: Any) -> dict[str, float]:
    """'model' -> milliseconds for every `*_ms` field of an InferenceStats (rosbags message),
    so bags of older and newer node versions are both read."""
    return {
        item.name[: -len('_ms')]: float(getattr(stats, item.name))
        for item in dataclasses.fields(stats)
        if item.name.endswith('_ms')
    }


def _panoptic_settings(
    reader: BagReader, cameras: Sequence[CameraSource]
) -> tuple[float | None, int | None]:
    """The node's anomaly threshold and unknown label from its first `panoptic/segments`."""
    topics = [c.output_topic('panoptic/segments') for c in cameras]
    topics = [t for t in topics if t in reader.topics]
    if not topics:
        return None, None
    store = m2a_typestore()
    try:
        for message in reader.messages(topics):
            msg = store.deserialize_cdr(message.data, 'm2a_perception_msgs/msg/OpenSetPanoptic')
            unknown_id = getattr(msg, 'unknown_id', None)  # absent in older bags
            return float(msg.anomaly_threshold), None if unknown_id is None else int(unknown_id)
    except BagReadError:
        pass  # reported by the main pass
    return None, None


def _progress(iterable: Any, total: int | None, enabled: bool) -> Any:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, unit='msg', desc='evaluating', leave=False)
