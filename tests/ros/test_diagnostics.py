"""Diagnostic status building: levels, messages and values, without spinning."""

from __future__ import annotations

import numpy as np
import pytest

from m2a_perception.ros.diagnostics import (
    ERROR,
    OK,
    WARN,
    BackendSnapshot,
    BackendState,
    CameraMonitor,
    ProcessingMonitor,
    StageTimes,
    StampGaps,
    backend_status,
    camera_status,
    processing_status,
    status_level,
)
from m2a_perception.ros.params import DiagnosticsSettings
from m2a_perception.runtime.slots import SlotCounters
from m2a_perception.runtime.throttle import KeyedThrottle

pytestmark = pytest.mark.ros

SETTINGS = DiagnosticsSettings(
    period_s=1.0, max_processing_time_ms=100.0, expected_input_hz=10.0, max_stamp_age_ms=500.0
)


def values(status):
    return {kv.key: kv.value for kv in status.values}


def snapshot(monitor, publishers=1, active=True, received=10, clock_ns=None, now=11.0):
    return monitor.snapshot(now, clock_ns, active, publishers, SlotCounters(received=received))


def test_camera_without_publisher_warns():
    monitor = CameraMonitor('idle', '/ns/idle/image', 'raw')
    status = camera_status('m2a', snapshot(monitor, publishers=0, received=0), SETTINGS)
    assert status_level(status) == WARN
    assert 'no publisher on /ns/idle/image' in status.message
    assert status.name == 'm2a: camera idle'
    assert values(status)['publishers'] == '0'


def test_incompatible_qos_is_an_error():
    monitor = CameraMonitor('front', '/front/image', 'raw')
    monitor.on_incompatible_qos(2, 'RELIABILITY')
    status = camera_status('m2a', snapshot(monitor, publishers=1, received=0), SETTINGS)
    assert status_level(status) == ERROR
    assert 'incompatible QoS (RELIABILITY)' in status.message


def test_inactive_camera_is_ok():
    monitor = CameraMonitor('front', '/front/image', 'raw')
    status = camera_status('m2a', snapshot(monitor, publishers=None, active=False), SETTINGS)
    assert status_level(status) == OK and 'inactive' in status.message


def test_rate_stamp_age_and_invalid_frames():
    monitor = CameraMonitor('front', '/front/image', 'raw')
    monitor.snapshot(10.0, None, True, 1, SlotCounters())  # opens the rate window at t=10
    for stamp in range(3):
        monitor.on_frame(stamp * 1_000_000)
    assert monitor.on_invalid('step', 'step 21 is smaller than ...') == 1
    status = camera_status('m2a', snapshot(monitor, clock_ns=1_000_000_000, now=11.0), SETTINGS)
    found = values(status)
    assert status_level(status) == WARN
    assert found['input_rate_hz'] == '3.00'
    assert float(found['stamp_age_ms']) == pytest.approx(998.0)
    assert found['invalid_step'] == '1' and found['dropped_invalid'] == '1'
    assert 'below expected' in status.message and 'rejected 1 invalid' in status.message
    # The next period has no new rejections.
    later = camera_status('m2a', snapshot(monitor, clock_ns=None, now=12.0), SETTINGS)
    assert 'rejected' not in later.message


def test_healthy_camera_is_ok():
    monitor = CameraMonitor('front', '/front/image', 'raw')
    monitor.snapshot(10.0, None, True, 1, SlotCounters())
    for _ in range(10):
        monitor.on_frame(999_900_000)
    status = camera_status('m2a', snapshot(monitor, clock_ns=1_000_000_000), SETTINGS)
    assert status_level(status) == OK and status.message == 'ok'


def test_processing_budget():
    monitor = ProcessingMonitor()
    assert 'no frames' in processing_status('m2a', monitor.snapshot(), SETTINGS).message
    monitor.record(StageTimes(10.0, 50.0, 10.0, 5.0), 100.0)
    ok = processing_status('m2a', monitor.snapshot(), SETTINGS)
    assert status_level(ok) == OK and values(ok)['last_model_ms'] == '50.00'
    monitor.record(StageTimes(10.0, 150.0, 10.0, 5.0), 100.0)
    slow = processing_status('m2a', monitor.snapshot(), SETTINGS)
    assert status_level(slow) == WARN and '1 of 1 frame(s) over the 100 ms budget' in slow.message
    assert values(slow)['frames_total'] == '2'


@pytest.mark.parametrize(
    ('state', 'level'),
    [
        (BackendState.READY, OK),
        (BackendState.LOADING, WARN),
        (BackendState.BUILDING, WARN),
        (BackendState.UNCONFIGURED, WARN),
        (BackendState.FAILED, ERROR),
    ],
)
def test_backend_states(state, level):
    snap = BackendSnapshot(
        state, 'unconfigured', 'torch', 'cpu', 'fp32', '/m.safetensors', error='x'
    )
    status = backend_status('m2a', snap)
    assert status_level(status) == level
    assert values(status)['state'] == state.value
    assert values(status)['precision'] == 'fp32'


def test_keyed_throttle():
    now = [0.0]
    throttle = KeyedThrottle(5.0, clock=lambda: now[0])
    assert throttle.allow(('a', 'step')) == (True, 0)
    assert throttle.allow(('a', 'step')) == (False, 0)
    assert throttle.allow(('a', 'encoding')) == (True, 0), 'other reasons are not hidden'
    now[0] = 6.0
    assert throttle.allow(('a', 'step')) == (True, 1)


def test_stamp_gaps_count_the_missing_frames():
    gaps = StampGaps()
    jitter = np.random.default_rng(0).integers(-3_000_000, 3_000_000, 40)
    stamps = [1_000_000_000_000 + i * 100_000_000 + int(jitter[i]) for i in range(40)]
    kept = [i for i in range(40) if i not in {5, 6, 20}]
    missing = {i: gaps.on_stamp(stamps[i]) for i in kept}
    assert missing[7] == 2 and missing[21] == 1
    assert sum(missing.values()) == 3
    assert abs(1e9 / gaps.nominal_step_ns - 10.0) < 0.5
    # A stamp that goes back (replay restarted) is no gap, and restarts the estimate.
    assert gaps.on_stamp(stamps[0]) == 0 and gaps.nominal_step_ns is None


def test_sustained_loss_warns_without_an_expected_rate():
    settings = DiagnosticsSettings(
        period_s=1.0, max_processing_time_ms=100.0, expected_input_hz=0.0, max_stamp_age_ms=0.0
    )
    # What a vehicle saw: 26 of 71 frames of a 24 Hz camera arrived (all of the first ten, then
    # a lossy link). Before a few steps are known, loss is undercounted, never overcounted.
    rng = np.random.default_rng(4)
    lost_link = rng.choice(np.arange(10, 70), 15, replace=False).tolist()
    arrived = sorted({*range(10), 70, *lost_link})
    assert len(arrived) == 26
    lossy = CameraMonitor('rear', '/rear/image', 'raw')
    lossy.snapshot(10.0, None, True, 1, SlotCounters())
    for index in arrived:
        lossy.on_frame(5_000_000_000 + index * 41_666_667)
    status = camera_status('m2a', snapshot(lossy, received=26, now=12.96), settings)
    assert status_level(status) == WARN
    assert 'input loss: 45 of 71 frames missing' in status.message
    assert values(status)['frames_missing'] == '45'
    assert abs(float(values(status)['stamp_rate_hz']) - 24.0) < 0.1
    # The next period without frames has no new loss.
    assert 'input loss' not in camera_status('m2a', snapshot(lossy, now=14.0), settings).message

    complete = CameraMonitor('front', '/front/image', 'raw')
    complete.snapshot(10.0, None, True, 1, SlotCounters())
    for index in range(71):
        complete.on_frame(5_000_000_000 + index * 41_666_667)
    status = camera_status('m2a', snapshot(complete, received=71, now=12.96), settings)
    assert status_level(status) == OK and values(status)['frames_missing'] == '0'
