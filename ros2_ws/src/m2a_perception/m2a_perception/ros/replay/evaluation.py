"""Evaluation of bags that hold the node's outputs (a live recording, or `replay_bag`'s output).

The bag is read with rosbags; the metrics are the core's (`m2a_perception.evaluation.streams`,
the same two-pass evaluator `m2a-eval` uses): `<camera>/anomaly/score` and
`<camera>/panoptic/semantic` against `<camera>/ground_truth/anomaly|semantic`, matched by camera
and header stamp.

Allowed dependencies: numpy, rosbags, the core, `m2a_perception.ros.conversions`,
`m2a_perception.ros.replay`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from m2a_perception.evaluation.streams import EvaluationSettings, GroundTruthEvaluator
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
from m2a_perception.runtime.report import CameraCounters, LatencySummary, ReplayReport

__all__ = [
    'decode_image',
    'evaluate_recorded_bag',
    'output_cameras',
    'stats_stages',
]


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
