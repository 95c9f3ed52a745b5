"""Diagnostics for /diagnostics built from plain diagnostic_msgs (no diagnostic_updater needed).

The node keeps thread-safe monitors (`CameraMonitor`, `ProcessingMonitor`) that the executor and
the worker thread update; a timer takes snapshots and turns them into `DiagnosticStatus`
entries with the pure functions below, so reports keep coming when no frames arrive and the
level logic is tested without ROS.

Allowed dependencies: diagnostic_msgs, builtin_interfaces, `m2a_perception.ros.params`,
`m2a_perception.runtime.slots`.
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from m2a_perception.ros.params import DiagnosticsSettings
from m2a_perception.runtime.frame import StageTimes
from m2a_perception.runtime.slots import SlotCounters

# Levels as ints; the message's `byte` field holds them as one-byte `bytes`.
OK = 0
WARN = 1
ERROR = 2

# Input loss from header stamps: a stamp step over GAP_FACTOR nominal periods is a gap; a
# diagnostics period that lost more than LOSS_WARN_FRACTION of its frames (and at least
# LOSS_WARN_MIN_FRAMES) warns.
GAP_FACTOR = 1.5
LOSS_WARN_FRACTION = 0.2
LOSS_WARN_MIN_FRAMES = 3
STAMP_HISTORY = 64


class BackendState(str, enum.Enum):
    """Life of the inference engine, as reported in diagnostics."""

    UNCONFIGURED = 'unconfigured'
    LOADING = 'loading'
    BUILDING = 'building'
    READY = 'ready'
    FAILED = 'failed'


@dataclass(frozen=True)
class CameraSnapshot:
    """State of one camera input over the last diagnostics period.

    Attributes:
        name: camera name.
        topic: resolved input topic.
        transport: 'raw' or 'compressed'.
        active: subscriptions exist (lifecycle active).
        publishers: publishers matched on the topic; None when not checked.
        incompatible_qos_events: publishers found with QoS incompatible with ours (total).
        incompatible_policy: the last incompatible policy, '' if none.
        rate_hz: frames received per second over the period.
        stamp_age_ms: clock now minus the newest header stamp; None without frames.
        slots: latest-frame slot counters (received, overwritten, stale).
        processed: frames that went through the model.
        skipped: frames not processed because no output had subscribers.
        invalid: rejected frames per reason.
        new_invalid: frames rejected during the period.
        last_error: text of the last rejection or processing error.
        stamp_rate_hz: the publisher's rate from its header stamps (1 / nominal stamp step);
            None before two frames.
        window_frames: frames received during the period.
        window_missed: frames missing during the period, from gaps between header stamps.
        missed_total: frames missing since activation.
    """

    name: str
    topic: str
    transport: str
    active: bool
    publishers: int | None
    incompatible_qos_events: int
    incompatible_policy: str
    rate_hz: float
    stamp_age_ms: float | None
    slots: SlotCounters
    processed: int
    skipped: int
    invalid: Mapping[str, int]
    new_invalid: int
    last_error: str
    stamp_rate_hz: float | None = None
    window_frames: int = 0
    window_missed: int = 0
    missed_total: int = 0


@dataclass(frozen=True)
class ProcessingSnapshot:
    """Processing times over the last diagnostics period.

    Attributes:
        frames: frames processed during the period.
        total_frames: frames processed since activation.
        mean_ms: mean total time per frame in the period (0 without frames).
        max_ms: longest frame in the period.
        over_budget: frames in the period above the budget.
        last: stage breakdown of the newest frame, None before the first.
    """

    frames: int
    total_frames: int
    mean_ms: float
    max_ms: float
    over_budget: int
    last: StageTimes | None


@dataclass(frozen=True)
class BackendSnapshot:
    """Engine state.

    Attributes:
        state: loading, building, ready, failed or unconfigured.
        lifecycle: lifecycle state label.
        backend: 'torch' or 'tensorrt'.
        device: e.g. 'cpu', 'cuda:0'.
        precision: 'fp32' or 'fp16'.
        checkpoint: checkpoint path.
        model: model config name, '' before loading.
        load_time_s: seconds spent loading and warming up, None before.
        error: why the last configure failed, '' otherwise.
    """

    state: BackendState
    lifecycle: str
    backend: str
    device: str
    precision: str
    checkpoint: str
    model: str = ''
    load_time_s: float | None = None
    error: str = ''


class StampGaps:
    """Frames missing between header stamps of one publisher, with no configured rate.

    ROS 2 headers carry no sequence number, so the stamps are the sequence: the nominal step
    is a low percentile of the recent stamp steps (robust to the losses it measures: with
    two thirds of the frames lost, a tenth of the steps is still one period), and a step of
    `GAP_FACTOR` or more nominal steps lost `round(step / nominal) - 1` frames. A stamp that
    goes back (replay restarted, clock reset) restarts the estimate.
    """

    def __init__(self, history: int = STAMP_HISTORY) -> None:
        self._last_ns: int | None = None
        self._steps: deque[int] = deque(maxlen=history)

    @property
    def nominal_step_ns(self) -> int | None:
        if len(self._steps) < 2:
            return None
        ordered = sorted(self._steps)
        return ordered[len(ordered) // 10]

    def on_stamp(self, stamp_ns: int) -> int:
        """Returns how many frames are missing just before this one."""
        last, self._last_ns = self._last_ns, stamp_ns
        if last is None or stamp_ns == last:
            return 0
        if stamp_ns < last:
            self._steps.clear()
            return 0
        step = stamp_ns - last
        self._steps.append(step)
        nominal = self.nominal_step_ns
        if nominal is None or step < GAP_FACTOR * nominal:
            return 0
        return round(step / nominal) - 1


class CameraMonitor:
    """Thread-safe input statistics of one camera (receive side and rejections)."""

    def __init__(self, name: str, topic: str, transport: str) -> None:
        self.name = name
        self.topic = topic
        self.transport = transport
        self._lock = threading.Lock()
        self._received = 0
        self._window_received = 0
        self._window_start: float | None = None
        self._last_stamp_ns: int | None = None
        self._processed = 0
        self._skipped = 0
        self._invalid: dict[str, int] = {}
        self._window_invalid = 0
        self._last_error = ''
        self._qos_events = 0
        self._qos_policy = ''
        self._gaps = StampGaps()
        self._window_missed = 0
        self._missed = 0

    def on_frame(self, stamp_ns: int) -> None:
        """A frame arrived (executor thread)."""
        with self._lock:
            self._received += 1
            self._window_received += 1
            self._last_stamp_ns = stamp_ns
            missed = self._gaps.on_stamp(stamp_ns)
            self._window_missed += missed
            self._missed += missed

    def on_processed(self) -> None:
        with self._lock:
            self._processed += 1

    def on_skipped(self) -> None:
        with self._lock:
            self._skipped += 1

    def on_invalid(self, reason: str, message: str) -> int:
        """Count a rejected frame; returns the total for this reason."""
        with self._lock:
            self._invalid[reason] = self._invalid.get(reason, 0) + 1
            self._window_invalid += 1
            self._last_error = message
            return self._invalid[reason]

    def on_error(self, message: str) -> None:
        """Record a processing failure that is not the frame's fault."""
        with self._lock:
            self._last_error = message

    def on_incompatible_qos(self, total_count: int, policy: str) -> None:
        with self._lock:
            self._qos_events = max(self._qos_events, total_count)
            self._qos_policy = policy

    @property
    def processed(self) -> int:
        with self._lock:
            return self._processed

    @property
    def invalid_total(self) -> int:
        with self._lock:
            return sum(self._invalid.values())

    def snapshot(
        self,
        now_s: float,
        clock_now_ns: int | None,
        active: bool,
        publishers: int | None,
        slots: SlotCounters,
    ) -> CameraSnapshot:
        """Take a snapshot and start a new rate window.

        Args:
            now_s: monotonic time in seconds (for the rate).
            clock_now_ns: node clock time (ROS or sim time) for the stamp age; None if unknown.
            active: subscriptions exist.
            publishers: publisher count on the topic, None if not checked.
            slots: the camera's slot counters.
        """
        with self._lock:
            elapsed = None if self._window_start is None else now_s - self._window_start
            rate = self._window_received / elapsed if elapsed else 0.0
            step = self._gaps.nominal_step_ns
            age = None
            if clock_now_ns is not None and self._last_stamp_ns is not None:
                age = (clock_now_ns - self._last_stamp_ns) / 1e6
            snapshot = CameraSnapshot(
                name=self.name,
                topic=self.topic,
                transport=self.transport,
                active=active,
                publishers=publishers,
                incompatible_qos_events=self._qos_events,
                incompatible_policy=self._qos_policy,
                rate_hz=rate,
                stamp_age_ms=age,
                slots=slots,
                processed=self._processed,
                skipped=self._skipped,
                invalid=dict(self._invalid),
                new_invalid=self._window_invalid,
                last_error=self._last_error,
                stamp_rate_hz=None if step is None else 1e9 / step,
                window_frames=self._window_received,
                window_missed=self._window_missed,
                missed_total=self._missed,
            )
            self._window_start = now_s
            self._window_received = 0
            self._window_missed = 0
            self._window_invalid = 0
            return snapshot


@dataclass
class ProcessingMonitor:
    """Thread-safe processing-time statistics against a budget."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _frames: int = 0
    _total: int = 0
    _sum_ms: float = 0.0
    _max_ms: float = 0.0
    _over: int = 0
    _last: StageTimes | None = None

    def record(self, times: StageTimes, budget_ms: float) -> None:
        with self._lock:
            total = times.total_ms
            self._frames += 1
            self._total += 1
            self._sum_ms += total
            self._max_ms = max(self._max_ms, total)
            self._over += int(total > budget_ms)
            self._last = times

    def snapshot(self) -> ProcessingSnapshot:
        """Take a snapshot and start a new window."""
        with self._lock:
            snapshot = ProcessingSnapshot(
                frames=self._frames,
                total_frames=self._total,
                mean_ms=self._sum_ms / self._frames if self._frames else 0.0,
                max_ms=self._max_ms,
                over_budget=self._over,
                last=self._last,
            )
            self._frames, self._sum_ms, self._max_ms, self._over = 0, 0.0, 0.0, 0
            return snapshot

    def reset(self) -> None:
        with self._lock:
            self._frames, self._total, self._sum_ms, self._max_ms, self._over = 0, 0, 0.0, 0.0, 0
            self._last = None


def camera_status(
    node_name: str, snapshot: CameraSnapshot, settings: DiagnosticsSettings
) -> DiagnosticStatus:
    """One camera's status: the worst finding decides the level, all findings are listed."""
    findings: list[tuple[int, str]] = []
    if not snapshot.active:
        findings.append((OK, 'inactive (node not active)'))
    else:
        if snapshot.incompatible_qos_events:
            findings.append(
                (
                    ERROR,
                    f'publisher found but incompatible QoS ({snapshot.incompatible_policy}); '
                    'set input.reliability or the camera QoS',
                )
            )
        if snapshot.publishers == 0:
            findings.append((WARN, f'no publisher on {snapshot.topic}'))
        elif snapshot.slots.received == 0:
            findings.append((WARN, 'no frames received yet'))
        if settings.expected_input_hz > 0 and snapshot.rate_hz < settings.expected_input_hz / 2:
            findings.append(
                (
                    WARN,
                    f'input rate {snapshot.rate_hz:.1f} Hz below expected '
                    f'{settings.expected_input_hz:.1f} Hz',
                )
            )
        lost = snapshot.window_missed
        expected = snapshot.window_frames + lost
        if lost >= LOSS_WARN_MIN_FRAMES and lost > LOSS_WARN_FRACTION * expected:
            findings.append(
                (
                    WARN,
                    f'input loss: {lost} of {expected} frames missing in the last period '
                    f'(gaps in the header stamps of a {snapshot.stamp_rate_hz or 0.0:.1f} Hz '
                    'publisher; see docs/vehicle_deployment.md, troubleshooting)',
                )
            )
        age = snapshot.stamp_age_ms
        if settings.max_stamp_age_ms > 0 and age is not None and age > settings.max_stamp_age_ms:
            findings.append(
                (WARN, f'newest stamp is {age:.0f} ms old (limit {settings.max_stamp_age_ms:.0f})')
            )
        if snapshot.new_invalid:
            findings.append(
                (WARN, f'rejected {snapshot.new_invalid} invalid frame(s): {snapshot.last_error}')
            )
    level = max(level for level, _ in findings) if findings else OK
    message = '; '.join(text for _, text in findings) if findings else 'ok'
    values = {
        'topic': snapshot.topic,
        'transport': snapshot.transport,
        'publishers': '' if snapshot.publishers is None else str(snapshot.publishers),
        'incompatible_qos_events': str(snapshot.incompatible_qos_events),
        'incompatible_qos_policy': snapshot.incompatible_policy,
        'input_rate_hz': f'{snapshot.rate_hz:.2f}',
        'stamp_rate_hz': '' if snapshot.stamp_rate_hz is None else f'{snapshot.stamp_rate_hz:.2f}',
        'frames_missing_in_period': str(snapshot.window_missed),
        'frames_missing': str(snapshot.missed_total),
        'stamp_age_ms': '' if snapshot.stamp_age_ms is None else f'{snapshot.stamp_age_ms:.1f}',
        'frames_received': str(snapshot.slots.received),
        'frames_processed': str(snapshot.processed),
        'frames_skipped_no_subscribers': str(snapshot.skipped),
        'dropped_overwritten': str(snapshot.slots.overwritten),
        'dropped_stale': str(snapshot.slots.stale),
        'dropped_invalid': str(sum(snapshot.invalid.values())),
        'last_error': snapshot.last_error,
    }
    values.update({f'invalid_{reason}': str(n) for reason, n in sorted(snapshot.invalid.items())})
    return make_status(level, f'{node_name}: camera {snapshot.name}', message, node_name, values)


def processing_status(
    node_name: str, snapshot: ProcessingSnapshot, settings: DiagnosticsSettings
) -> DiagnosticStatus:
    """Processing time of the last period against `max_processing_time_ms`."""
    budget = settings.max_processing_time_ms
    if snapshot.frames == 0:
        level, message = OK, 'no frames processed in the last period'
    elif snapshot.over_budget:
        level = WARN
        message = (
            f'{snapshot.over_budget} of {snapshot.frames} frame(s) over the {budget:.0f} ms '
            f'budget (max {snapshot.max_ms:.1f} ms)'
        )
    else:
        level, message = OK, f'mean {snapshot.mean_ms:.1f} ms within the {budget:.0f} ms budget'
    values = {
        'frames_in_period': str(snapshot.frames),
        'frames_total': str(snapshot.total_frames),
        'mean_ms': f'{snapshot.mean_ms:.2f}',
        'max_ms': f'{snapshot.max_ms:.2f}',
        'budget_ms': f'{budget:.1f}',
        'over_budget': str(snapshot.over_budget),
    }
    if snapshot.last is not None:
        values.update(
            {
                'last_convert_ms': f'{snapshot.last.convert_ms:.2f}',
                'last_preprocess_ms': f'{snapshot.last.preprocess_ms:.2f}',
                'last_model_ms': f'{snapshot.last.model_ms:.2f}',
                'last_postprocess_ms': f'{snapshot.last.postprocess_ms:.2f}',
                'last_handoff_ms': f'{snapshot.last.handoff_ms:.2f}',
                'last_publish_ms': f'{snapshot.last.publish_ms:.2f}',
                'last_overhead_ms': f'{snapshot.last.overhead_ms:.2f}',
            }
        )
    return make_status(level, f'{node_name}: processing', message, node_name, values)


def backend_status(node_name: str, snapshot: BackendSnapshot) -> DiagnosticStatus:
    """Engine state: ERROR when failed, WARN while not ready, OK when ready."""
    state = snapshot.state
    if state is BackendState.FAILED:
        level, message = ERROR, f'failed: {snapshot.error}'
    elif state is BackendState.READY:
        level, message = OK, f'ready ({snapshot.backend}, {snapshot.precision})'
    elif state is BackendState.UNCONFIGURED:
        level, message = WARN, 'unconfigured (no model loaded)'
    else:
        level, message = WARN, f'{state.value} {snapshot.checkpoint}'
    values = {
        'state': state.value,
        'lifecycle_state': snapshot.lifecycle,
        'backend': snapshot.backend,
        'device': snapshot.device,
        'precision': snapshot.precision,
        'checkpoint': snapshot.checkpoint,
        'model': snapshot.model,
        'load_time_s': '' if snapshot.load_time_s is None else f'{snapshot.load_time_s:.2f}',
        'error': snapshot.error,
    }
    return make_status(level, f'{node_name}: backend', message, node_name, values)


def make_status(
    level: int, name: str, message: str, hardware_id: str, values: Mapping[str, str]
) -> DiagnosticStatus:
    """A DiagnosticStatus with key/value pairs in the given order."""
    status = DiagnosticStatus()
    status.level = bytes([level])
    status.name = name
    status.message = message
    status.hardware_id = hardware_id
    status.values = [KeyValue(key=key, value=value) for key, value in values.items()]
    return status


def diagnostic_array(stamp: Time, statuses: Iterable[DiagnosticStatus]) -> DiagnosticArray:
    """Wrap statuses for publishing on /diagnostics."""
    message = DiagnosticArray()
    message.header.stamp = stamp
    message.status = list(statuses)
    return message


def status_level(status: DiagnosticStatus) -> int:
    """Level as an int (rclpy stores the `byte` field as bytes)."""
    level = status.level
    return level[0] if isinstance(level, (bytes, bytearray)) else int(level)
