"""Evaluation of camera streams: predictions and ground truth matched by camera and stamp.

The replay (`m2a-replay`, offline, live and recorded-outputs) feeds each camera's published
maps and ground-truth images here in any order; a frame is evaluated by the `TwoPassEvaluator`
as soon as its prediction and every expected ground-truth kind have arrived:

- `anomaly` (0 inlier, 1 anomaly, 255 void) gives the pixel metrics (AuPRC, FPR95, AUROC;
  SMIYC conventions by default), the component metrics (sIoU, PPV, F1*) binarised at the
  best-F1 threshold of the same curve as SMIYC and `m2a-eval` do (pass 2, from the cache), and
  the component metrics of the mask the node publishes (score >= the node's threshold);
- `semantic` (train ids 0..K-1, K unknown, 255 void) gives the open-set IoU of the node's
  published semantic map (unknown where score >= the threshold).

Allowed dependencies: numpy, OpenCV, the core metrics, `m2a_perception.evaluation`.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from m2a_perception.evaluation.cache import FrameCache
from m2a_perception.evaluation.frames import FramePrediction, FrameTruth
from m2a_perception.evaluation.two_pass import EvaluationSpec, TwoPassEvaluator
from m2a_perception.metrics.component import ANOMALY_TRACK, OBSTACLE_TRACK
from m2a_perception.metrics.pixel import get_pixel_protocol

COMPONENT_TRACKS = {'anomaly': ANOMALY_TRACK, 'obstacle': OBSTACLE_TRACK}
# Unmatched frames kept per camera while waiting for their counterpart (bounds memory when a
# camera has labels for some frames only, or the node dropped frames).
MAX_PENDING = 256
CACHE_NAME = 'frames'


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

    def spec(self, num_classes: int) -> EvaluationSpec:
        """The two-pass evaluation of published maps (float16 cache for float16 protocols, as
        `m2a-eval` does)."""
        protocol = get_pixel_protocol(self.pixel_protocol)
        return EvaluationSpec(
            protocol=protocol,
            component_track=COMPONENT_TRACKS[self.component_track],
            mask_threshold=self.node_threshold,
            num_classes=num_classes,
            semantic='open',
            cache_dtype='float16' if protocol.score_dtype == 'float16' else 'float32',
            frame_stats=False,
        )


@dataclass
class _Pending:
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    score: np.ndarray | None = None
    semantic: np.ndarray | None = None
    predicted: bool = False


class GroundTruthEvaluator:
    """Streams (prediction, ground truth) pairs of camera frames into a `TwoPassEvaluator`.

    Args:
        settings: protocol, track, threshold, classes.
        expected: camera name -> ground-truth kinds present for it ('anomaly', 'semantic').
    """

    def __init__(
        self, settings: EvaluationSettings, expected: Mapping[str, Sequence[str]]
    ) -> None:
        self.settings = settings
        self.expected = {camera: tuple(kinds) for camera, kinds in expected.items() if kinds}
        self.num_classes = settings.num_classes
        self.frames_evaluated = 0
        self.frames_with_anomaly = 0
        self.frames_with_semantic = 0
        self.frames_without_output = 0
        self.predictions_without_truth = 0
        self.notes: list[str] = []
        self._pending: dict[str, collections.OrderedDict[int, _Pending]] = {
            camera: collections.OrderedDict() for camera in self.expected
        }
        self._evaluator: TwoPassEvaluator | None = None

    def set_num_classes(self, num_classes: int) -> None:
        """The model's known classes K (its `unknown_id`); before the first evaluated frame."""
        if self._evaluator is not None and num_classes != self.num_classes:
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
        if self._evaluator is None:
            cache = FrameCache.temporary('m2a-replay-eval-')
            self._evaluator = TwoPassEvaluator(
                self.settings.spec(self.num_classes), cache, CACHE_NAME
            )
        label = truth.get('anomaly')
        if label is not None and score.shape != label.shape:
            self._note(
                f'the published maps ({score.shape[0]}x{score.shape[1]}) were resized '
                f'bilinearly to the ground truth ({label.shape[0]}x{label.shape[1]}); for '
                'numbers comparable with m2a-eval replay with -p output_resolution:=source'
            )
            score = cv2.resize(score, label.shape[::-1], interpolation=cv2.INTER_LINEAR)
        semantic_truth = truth.get('semantic')
        if semantic_truth is None:
            semantic = None
        elif semantic is not None and semantic.shape != semantic_truth.shape:
            semantic = cv2.resize(
                semantic, semantic_truth.shape[::-1], interpolation=cv2.INTER_NEAREST
            )
        index = self.frames_evaluated
        try:
            self._evaluator.update(
                index,
                where,
                FramePrediction(score, semantic),
                FrameTruth(anomaly=label, semantic=semantic_truth),
            )
        except ValueError as error:
            raise ValueError(f'ground truth of {where}: {error}') from error
        self.frames_evaluated += 1
        self.frames_with_anomaly += label is not None
        self.frames_with_semantic += semantic is not None

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

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
        if self._evaluator is not None:
            report = self._evaluator.finish()
            if self.frames_with_anomaly and report.pixel is not None:
                result['pixel'] = report.pixel.as_dict()
                threshold = report.thresholds.component
                result['thresholds']['components'] = threshold
                if math.isnan(threshold):
                    self._note('no anomaly pixels: best-F1 component metrics undefined')
                elif report.component is not None:
                    result['components'] = report.component.as_dict()
                assert report.mask_component is not None
                result['components_at_node_threshold'] = report.mask_component.as_dict()
                result['thresholds']['components_at_node_threshold'] = self.settings.node_threshold
            if report.semantic is not None and self.frames_with_semantic:
                known = np.asarray(report.semantic.iou[: self.num_classes], dtype=np.float64)
                result['semantic'] = {
                    'frames': self.frames_with_semantic,
                    'miou_known': float(np.nanmean(known))
                    if np.isfinite(known).any()
                    else math.nan,
                    'iou_unknown': report.semantic.iou[self.num_classes],
                    'confusion': report.semantic.as_dict(),
                }
        result['notes'] = list(self.notes)
        return result

    def discard(self) -> None:
        """Delete the on-disk cache."""
        evaluator = getattr(self, '_evaluator', None)  # None if __init__ raised
        if evaluator is not None:
            evaluator.cache.remove_all()

    def __del__(self) -> None:
        self.discard()
