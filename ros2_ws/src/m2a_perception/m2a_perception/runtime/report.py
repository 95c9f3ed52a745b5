"""Replay results: latency and throughput statistics, frame counters, metrics, as text and JSON.

Written by the replay (`m2a_perception.ros.replay`); ROS-free, so it lives in the core.

Allowed dependencies: numpy, standard library, `m2a_perception.files`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from m2a_perception.files import atomic_write

# Print order of the latency stages; stages not listed here are printed after them.
STAGES = (
    'convert',
    'preprocess',
    'model',
    'postprocess',
    'handoff',
    'publish',
    'total',
    'end_to_end',
    'queue_wait',
)


@dataclass(frozen=True)
class LatencySummary:
    """Distribution of one timing in milliseconds (NaN fields without samples)."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> LatencySummary:
        array = np.asarray(list(values), dtype=np.float64)
        if array.size == 0:
            nan = float('nan')
            return cls(0, nan, nan, nan, nan, nan)
        p50, p90, p99 = (float(v) for v in np.percentile(array, [50, 90, 99]))
        return cls(int(array.size), float(array.mean()), p50, p90, p99, float(array.max()))


@dataclass
class CameraCounters:
    """Frames of one camera.

    Attributes:
        topic: input topic.
        received: frames read from the bag (or published by the player).
        processed: frames that went through the model and were published.
        invalid: frames rejected per reason (the node's conversion error reasons, plus
            'deserialize' for bytes that are not a message).
        failed: frames whose processing raised.
        dropped_overwritten: frames replaced in the latest-frame slot before processing
            (recorded-rate and live modes).
        dropped_stale: frames older than `max_input_age_ms` when their turn came.
    """

    topic: str
    received: int = 0
    processed: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    dropped_overwritten: int = 0
    dropped_stale: int = 0


@dataclass
class ReplayReport:
    """What a replay did and measured.

    Attributes:
        mode: 'as-fast', 'recorded', 'live' or 'recorded-outputs'.
        input_bag: the bag read.
        output_bag: the bag written (None for 'recorded-outputs').
        cameras: counters per camera name.
        latency_ms: `LatencySummary` per stage over all cameras: the node's stages ('convert',
            'preprocess', 'model', 'postprocess', 'handoff', 'publish'), 'total' (their sum),
            and where frames queue ('recorded' and 'live') 'queue_wait' and 'end_to_end'
            (arrival, live: header stamp, to published).
        wall_time_s: seconds spent replaying (excluding model loading).
        throughput_fps: processed frames per wall-clock second.
        output_counts: messages written per topic.
        metrics: evaluation results (`GroundTruthEvaluator.compute()` of
            `m2a_perception.evaluation.streams`), None without ground truth.
        input_error: why reading stopped early (damaged input), None if the bag was read fully.
        skipped_chunks: damaged input chunks that were skipped (the rest was replayed).
        skipped_messages: input messages in those chunks (None: unknown, their index is
            damaged too).
        skipped: per skipped chunk: file, offset, reason, messages per topic.
        notes: anything the reader of the report should know.
    """

    mode: str
    input_bag: str
    output_bag: str | None
    cameras: dict[str, CameraCounters] = field(default_factory=dict)
    latency_ms: dict[str, LatencySummary] = field(default_factory=dict)
    wall_time_s: float = 0.0
    throughput_fps: float = 0.0
    output_counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    input_error: str | None = None
    skipped_chunks: int = 0
    skipped_messages: int | None = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add_skipped(self, chunks: Iterable[Any]) -> None:
        """Count skipped input chunks (`mcap_io.SkippedChunk`s)."""
        for chunk in chunks:
            self.skipped.append(chunk.as_dict())
            self.skipped_chunks += 1
            count = chunk.message_count
            self.skipped_messages = (
                None
                if count is None or self.skipped_messages is None
                else self.skipped_messages + count
            )

    @property
    def frames_received(self) -> int:
        return sum(c.received for c in self.cameras.values())

    @property
    def frames_processed(self) -> int:
        return sum(c.processed for c in self.cameras.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN written as null)."""
        data = asdict(self)
        data['frames_received'] = self.frames_received
        data['frames_processed'] = self.frames_processed
        return _without_nan(data)

    def write_json(self, path: Path) -> Path:
        """Write the report atomically.

        Raises:
            WriteFailedError: the disk is full (the previous report, if any, is unchanged).
        """
        text = json.dumps(self.as_dict(), indent=2) + '\n'
        atomic_write(path, lambda tmp: tmp.write_text(text))
        return path

    def format_text(self) -> str:
        """Human-readable summary (what the CLI prints)."""
        lines = [
            f'm2a-replay ({self.mode}): {self.frames_processed} of {self.frames_received} '
            f'frame(s) processed from {len(self.cameras)} camera(s) in {self.wall_time_s:.1f} s '
            f'({self.throughput_fps:.2f} frames/s)'
        ]
        for name, counters in self.cameras.items():
            invalid = sum(counters.invalid.values())
            reasons = ', '.join(f'{k} {v}' for k, v in sorted(counters.invalid.items()))
            lines.append(
                f'  camera {name} ({counters.topic}): {counters.received} in, '
                f'{counters.processed} processed, {invalid} invalid'
                + (f' ({reasons})' if reasons else '')
                + f', {counters.failed} failed, {counters.dropped_overwritten} overwritten, '
                f'{counters.dropped_stale} stale'
            )
        if self.latency_ms:
            lines.append('  latency [ms]      count     mean      p50      p90      p99      max')
            order = [*STAGES, *sorted(set(self.latency_ms) - set(STAGES))]
            for stage in order:
                summary = self.latency_ms.get(stage)
                if summary is None or summary.count == 0:
                    continue
                lines.append(
                    f'    {stage:<14}{summary.count:>7} {summary.mean:8.1f} {summary.p50:8.1f} '
                    f'{summary.p90:8.1f} {summary.p99:8.1f} {summary.max:8.1f}'
                )
        if self.metrics:
            lines.extend(format_metrics(self.metrics))
        elif self.metrics is None:
            lines.append(
                '  metrics: no ground-truth topics (<camera>/ground_truth/anomaly|semantic)'
            )
        if self.output_bag:
            total = sum(self.output_counts.values())
            lines.append(
                f'  output bag: {self.output_bag} ({total} messages on '
                f'{len(self.output_counts)} topics)'
            )
        lines.extend(f'  note: {note}' for note in self.notes)
        if self.skipped_chunks:
            lost = self.skipped_messages
            if lost is None:
                lost = 'an unknown number of'
            first = self.skipped[0]
            lines.append(
                f'  INPUT DAMAGED: skipped {self.skipped_chunks} corrupt chunk(s) with {lost} '
                f'message(s), the first at offset {first["offset"]} of {first["file"]}: '
                f'{first["reason"]}'
            )
        if self.input_error:
            lines.append(f'  INPUT ERROR: {self.input_error}')
        return '\n'.join(lines)


def format_metrics(metrics: Mapping[str, Any]) -> list[str]:
    """Text lines of a `GroundTruthEvaluator.compute()` dict."""
    lines = [
        f'  metrics over {metrics.get("frames_evaluated", 0)} labelled frame(s) '
        f'({metrics.get("frames_without_output", 0)} labelled frame(s) without output):'
    ]
    pixel = metrics.get('pixel')
    if pixel:
        lines.append(
            f'    pixel ({pixel["protocol"]}): AuPRC {_pct(pixel["auprc"])}  '
            f'FPR95 {_pct(pixel["fpr95"])}  AUROC {_pct(pixel["auroc"])}  '
            f'({pixel["num_positive_pixels"]} anomaly / {pixel["num_negative_pixels"]} inlier px)'
        )
    thresholds = metrics.get('thresholds', {})
    for key, label in (
        ('components', 'best-F1 threshold'),
        ('components_at_node_threshold', 'node threshold'),
    ):
        component = metrics.get(key)
        if component:
            lines.append(
                f'    components ({component["track"]}, {label} {_num(thresholds.get(key))}): '
                f'sIoU {_pct(component["siou"])}  PPV {_pct(component["ppv"])}  '
                f'F1* {_pct(component["f1_star"])}'
            )
    semantic = metrics.get('semantic')
    if semantic:
        lines.append(
            f'    open-set semantic at the node threshold: mIoU(known) '
            f'{_pct(semantic["miou_known"])}  IoU(unknown) {_pct(semantic["iou_unknown"])}'
        )
    lines.extend(f'    note: {note}' for note in metrics.get('notes', []))
    return lines


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 'n/a'
    return f'{100.0 * float(value):.2f}%'


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 'n/a'
    return f'{float(value):.3f}'


def _without_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(item) for item in value]
    return value
