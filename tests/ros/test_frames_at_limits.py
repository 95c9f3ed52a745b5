"""Frames at the node's size limits between real processes, with the shipped Fast DDS profile.

A 4096x4096 rgb8 Image (exactly `input.max_width` x `input.max_height`, 48 MiB) is processed;
a 70 MB CompressedImage (above the compressed limit, 4096 * 4096 * 4 + 64 KiB bytes) is
rejected before decoding and counted. Without the profile the middleware drops both before
the node (measured: 0 of 3 with the default transports and with LARGE_DATA best effort, see
docs/vehicle_deployment.md), which is why every process here loads it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from m2a_perception.ros.conversions import ImageLimits

from .helpers import STARTUP_TIMEOUT_S, camera_command, node_command, start_process
from .test_large_frames import FRAME_COUNTER, profile_env

pytestmark = pytest.mark.ros

NAMESPACE = '/limits'
PAYLOAD_BYTES = 70_000_000
SIZE = ('--height', '4096', '--width', '4096')


def wait_for_log(process, text: str, timeout_s: float) -> str:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        log = process.log_text()
        if text in log:
            return log
        assert process.alive(), log[-3000:]
        time.sleep(0.2)
    raise TimeoutError(f'no {text!r} in the log after {timeout_s:.0f} s: {log[-3000:]}')


def test_frames_at_the_size_limits_are_processed_or_counted(tiny_checkpoint, tmp_path):
    limits = ImageLimits()
    assert (limits.max_width, limits.max_height) == (4096, 4096)
    assert limits.max_compressed_bytes < PAYLOAD_BYTES
    env = profile_env(None)
    node = start_process(
        'node',
        node_command(
            tiny_checkpoint,
            NAMESPACE,
            'cameras.names:=[front,comp]',
            'cameras.comp.transport:=compressed',
            'viz.overlay_rate_hz:=0.0',
            # One worker serves both cameras: a compressed frame waiting behind a 4096x4096 one
            # must not be dropped as stale before its size is checked.
            'max_input_age_ms:=0.0',
        ),
        tmp_path,
        env=env,
    )
    # Subscribers of both cameras' scores: the node converts (and so checks) a frame only when
    # someone wants its outputs; otherwise it counts it as skipped_no_subscribers.
    counter, demand = (
        subprocess.Popen(
            [sys.executable, str(FRAME_COUNTER), f'{NAMESPACE}/{name}/anomaly/score', '1', '150'],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for name in ('front', 'comp')
    )
    started = []
    try:
        wait_for_log(node, 'active: subscribed to', STARTUP_TIMEOUT_S)
        cameras = {
            'front': (*SIZE, '--topic', f'{NAMESPACE}/front/image'),
            'comp': ('--scenario', 'oversized', '--topic', f'{NAMESPACE}/comp/image/compressed'),
        }
        for name, args in cameras.items():
            command = camera_command(*args, '--rate', '1', '--reliability', 'best_effort')
            started.append(start_process(name, command, tmp_path, env=env))
        # The 70 MB frame reached the node, was refused before decoding, and was counted.
        log = wait_for_log(node, 'camera comp: dropped invalid frame [too_large, 1 so far]', 90)
        assert (
            f'jpeg payload of {PAYLOAD_BYTES} bytes exceeds {limits.max_compressed_bytes}' in log
        )
        # The 48 MiB frame at the limits went through the model: its score map arrived.
        output, _ = counter.communicate(timeout=150)
        assert json.loads(output.strip().splitlines()[-1])['received'] == 1, output
        assert 'camera front: dropped' not in node.log_text()
    finally:
        for process in started:
            process.stop()
        for subscriber in (counter, demand):
            if subscriber.poll() is None:
                subscriber.kill()
        node.stop()
