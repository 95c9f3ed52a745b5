"""Fixtures of the ROS tests: a tiny trained-format checkpoint, the probe node and fake
cameras."""

from __future__ import annotations

import os

import pytest

from m2a_perception.ros.processes import ManagedProcess

from .helpers import RosProbe, camera_command, start_process


@pytest.fixture(scope='package', autouse=True)
def private_ros_domain():
    """A ROS domain of this test process's own while the ROS tests run.

    Other sessions on the machine run these tests too, with the same node names and namespaces.
    tests/conftest.py gives each xdist worker domain 40 + n, which two concurrent pytest runs
    share, so their nodes would answer each other's services and topics. Unless a base domain
    is chosen explicitly (M2A_TEST_DOMAIN_BASE), each test process takes a pid-based domain.
    """
    before = os.environ.get('ROS_DOMAIN_ID')
    if 'M2A_TEST_DOMAIN_BASE' not in os.environ:
        os.environ['ROS_DOMAIN_ID'] = str(101 + os.getpid() % 120)
    yield os.environ['ROS_DOMAIN_ID']
    if before is None:
        os.environ.pop('ROS_DOMAIN_ID', None)
    else:
        os.environ['ROS_DOMAIN_ID'] = before


@pytest.fixture(scope='module')
def probe():
    ros_probe = RosProbe()
    yield ros_probe
    ros_probe.close()


@pytest.fixture
def cameras(tmp_path):
    """Start fake cameras (`tests/ros/fake_camera.py` arguments); all stop after the test."""
    started: list[ManagedProcess] = []

    def start(*args: str) -> ManagedProcess:
        process = start_process(f'camera{len(started)}', camera_command(*args), tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
