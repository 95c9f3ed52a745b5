"""6 MB frames between real processes with the shipped Fast DDS profile, under both discovery
settings (default and ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, where LARGE_DATA loses them).

The profile (config/fastdds_large_frames.xml) is what the launch files, `m2a-replay --live` and
the tests load: both processes get `large_frames_environment()` (the profile under the variable
name that this install's Fast DDS reads) and no FASTDDS_BUILTIN_TRANSPORTS. On Jazzy (Fast DDS
2.14 reads only FASTRTPS_DEFAULT_PROFILES_FILE) 8 and 9 of 12 frames arrived with
FASTDDS_... alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from m2a_perception.ros.processes import (
    PROFILE_VARIABLES,
    large_frames_defaults,
    large_frames_environment,
    profile_variables,
    ros_environment,
)

from .helpers import REPO_ROOT, camera_command, ros_env, start_process

pytestmark = pytest.mark.ros

PROFILE = REPO_ROOT / 'config' / 'fastdds_large_frames.xml'
FRAME_COUNTER = Path(__file__).with_name('frame_counter.py')
RATE_HZ = 4.0
FRAMES = 12


def large_frames_domain(environ: Mapping[str, str]) -> int:
    """A domain of this worker's own beside its test domain, for the profiled processes.

    tests/conftest.py gives xdist worker k domain base + k; base + k + 1 would be the next
    worker's, so the step is the worker count (PYTEST_XDIST_WORKER_COUNT, 1 without xdist).
    """
    workers = int(environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
    return int(environ.get('ROS_DOMAIN_ID', '40')) + workers


def profile_env(discovery_range: str | None) -> dict[str, str]:
    env = ros_env()
    for name in ('FASTDDS_BUILTIN_TRANSPORTS', *PROFILE_VARIABLES):
        env.pop(name, None)
    env.update(large_frames_environment())
    env['ROS_DOMAIN_ID'] = str(large_frames_domain(os.environ))
    env.pop('ROS_AUTOMATIC_DISCOVERY_RANGE', None)
    if discovery_range is not None:
        env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = discovery_range
    return env


def test_the_profiled_domain_is_no_other_workers_domain():
    # Two xdist workers from base 150: test domains 150 and 151, profiled domains 152 and 153.
    workers = [{'ROS_DOMAIN_ID': str(150 + k), 'PYTEST_XDIST_WORKER_COUNT': '2'} for k in (0, 1)]
    assert [large_frames_domain(env) for env in workers] == [152, 153]
    assert large_frames_domain({'ROS_DOMAIN_ID': '150'}) == 151  # without xdist, as before


def test_the_profile_variable_is_the_one_this_fast_dds_reads(tmp_path, monkeypatch):
    kilted, jazzy, bare = tmp_path / 'kilted', tmp_path / 'jazzy', tmp_path / 'bare'
    (kilted / 'share' / 'fastdds').mkdir(parents=True)  # Fast DDS 3.x
    (jazzy / 'share' / 'fastrtps').mkdir(parents=True)  # Fast DDS 2.x: reads FASTRTPS_... only
    bare.mkdir()
    monkeypatch.setattr(sys, 'prefix', str(bare))
    assert profile_variables({'AMENT_PREFIX_PATH': f'{bare}:{kilted}'}) == (
        'FASTDDS_DEFAULT_PROFILES_FILE',
    )
    assert profile_variables({'AMENT_PREFIX_PATH': f'{jazzy}:{kilted}'}) == (
        'FASTRTPS_DEFAULT_PROFILES_FILE',
    )
    assert profile_variables({}) == PROFILE_VARIABLES  # unknown install: both names
    monkeypatch.setattr(sys, 'prefix', str(jazzy))  # a venv of Jazzy wheels
    assert profile_variables({}) == ('FASTRTPS_DEFAULT_PROFILES_FILE',)
    shipped = str(PROFILE)
    assert large_frames_environment(environ={}) == {'FASTRTPS_DEFAULT_PROFILES_FILE': shipped}
    assert large_frames_environment('/etc/dds.xml', {'AMENT_PREFIX_PATH': str(kilted)}) == {
        'FASTDDS_DEFAULT_PROFILES_FILE': '/etc/dds.xml'
    }
    # A profile the user names (under either name) wins; otherwise children get the shipped one.
    assert large_frames_defaults({'FASTDDS_DEFAULT_PROFILES_FILE': '/etc/dds.xml'}) == {}
    assert large_frames_defaults({'FASTDDS_DEFAULT_PROFILES_FILE': ''}) == {
        'FASTRTPS_DEFAULT_PROFILES_FILE': shipped
    }
    for name in (*PROFILE_VARIABLES, 'FASTDDS_BUILTIN_TRANSPORTS', 'AMENT_PREFIX_PATH'):
        monkeypatch.delenv(name, raising=False)
    env = ros_environment()
    assert env['FASTRTPS_DEFAULT_PROFILES_FILE'] == shipped
    assert 'FASTDDS_DEFAULT_PROFILES_FILE' not in env
    # LARGE_DATA is no longer forced on child processes (it fails under LOCALHOST discovery).
    assert 'FASTDDS_BUILTIN_TRANSPORTS' not in env
    assert env['M2A_EXIT_WITH_PARENT'] == '1'
    monkeypatch.setenv('FASTDDS_DEFAULT_PROFILES_FILE', '/etc/dds.xml')
    assert ros_environment()['FASTDDS_DEFAULT_PROFILES_FILE'] == '/etc/dds.xml'


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
