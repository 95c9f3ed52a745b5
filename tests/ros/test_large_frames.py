"""6 MB frames between real processes with the shipped Fast DDS profile, under both discovery
settings (default and ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, where LARGE_DATA loses them).

The profile (config/fastdds_large_frames.xml) is what the launch file loads; both processes get
it through FASTDDS_DEFAULT_PROFILES_FILE and no FASTDDS_BUILTIN_TRANSPORTS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import REPO_ROOT, camera_command, ros_env, start_process

pytestmark = pytest.mark.ros

PROFILE = REPO_ROOT / 'config' / 'fastdds_large_frames.xml'
FRAME_COUNTER = Path(__file__).with_name('frame_counter.py')
RATE_HZ = 4.0
FRAMES = 12


def profile_env(discovery_range: str | None) -> dict[str, str]:
    env = ros_env()
    env.pop('FASTDDS_BUILTIN_TRANSPORTS', None)
    env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(PROFILE)
    env['ROS_DOMAIN_ID'] = str(int(os.environ.get('ROS_DOMAIN_ID', '40')) + 1)
    env.pop('ROS_AUTOMATIC_DISCOVERY_RANGE', None)
    if discovery_range is not None:
        env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = discovery_range
    return env


@pytest.mark.parametrize('discovery_range', [None, 'LOCALHOST'], ids=['default', 'localhost'])
def test_6mb_best_effort_frames_arrive_with_the_shipped_profile(tmp_path, discovery_range):
    env = profile_env(discovery_range)
    counter = subprocess.Popen(
        [sys.executable, str(FRAME_COUNTER), '/large/image', str(FRAMES), '20', 'best_effort'],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert counter.stdout is not None
        assert counter.stdout.readline().strip() == 'ready'
        camera = start_process(
            'camera',
            camera_command(
                '--topic',
                '/large/image',
                '--height',
                '1024',
                '--width',
                '2048',
                '--rate',
                str(RATE_HZ),
                '--reliability',
                'best_effort',
            ),
            tmp_path,
            env=env,
        )
        try:
            output, _ = counter.communicate(timeout=40)
        finally:
            camera.stop()
    finally:
        if counter.poll() is None:
            counter.kill()
    result = json.loads(output.strip().splitlines()[-1])
    assert result['sizes'] in ([], [1024 * 2048 * 3])
    assert result['received'] == FRAMES, (result['received'], camera.log_text()[-2000:])
    gaps = [b - a for a, b in zip(result['times'], result['times'][1:], strict=False)]
    # At 4 Hz a gap above 1 s means three frames in a row were lost.
    assert max(gaps) < 1.0, gaps
