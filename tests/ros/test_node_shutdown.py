"""How the node process starts with integer values for doubles, and how it ends.

Real node processes: Ctrl-C while frames flow must log no ERROR and exit 0; the lifecycle
`shutdown` transition must end the process; a node whose launcher is killed (SIGTERM or SIGKILL
to `ros2 launch`) must not keep running re-parented.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from lifecycle_msgs.msg import Transition
from sensor_msgs.msg import Image

from m2a_perception.cli.perception_node import parent_to_watch
from m2a_perception.ros.processes import ManagedProcess

from .helpers import (
    STARTUP_TIMEOUT_S,
    WAIT_TIMEOUT_S,
    camera_command,
    node_command,
    start_process,
)

pytestmark = pytest.mark.ros


def _wait_active(probe, node: str, process: ManagedProcess) -> None:
    probe.wait_for(
        lambda: not process.alive() or probe.lifecycle_state(node, STARTUP_TIMEOUT_S) == 'active',
        STARTUP_TIMEOUT_S,
        f'{node} active',
    )
    assert process.alive(), process.log_text()


def test_integer_doubles_are_accepted_and_ctrl_c_with_frames_flowing_is_clean(
    tiny_checkpoint, tmp_path, probe
):
    # What a user writes: integers where the node declares doubles.
    params = tmp_path / 'integers.yaml'
    params.write_text('/**:\n  ros__parameters:\n    max_input_age_ms: 500\n')
    command = node_command(tiny_checkpoint, '/sd', 'diagnostics.period_s:=0.5')
    command += ['--params-file', str(params)]
    node = start_process('node', command, tmp_path)
    camera = start_process(
        'camera', camera_command('--topic', '/sd/front/image', '--rate', '10'), tmp_path
    )
    try:
        scores = probe.record(Image, '/sd/front/anomaly/score')
        _wait_active(probe, '/sd/m2a_perception', node)
        assert probe.parameter_values('/sd/m2a_perception', ['max_input_age_ms']) == {
            'max_input_age_ms': 500
        }
        assert probe.set_parameter('/sd/m2a_perception', 'anomaly.threshold', 1) == (True, '')
        assert probe.set_parameter('/sd/m2a_perception', 'anomaly.threshold', 'x')[0] is False
        probe.wait_for(lambda: len(scores.messages) >= 3, WAIT_TIMEOUT_S, 'three outputs')
        # Ctrl-C while frames flow (the camera keeps publishing).
        assert node.stop(timeout_s=30.0) == 0
    finally:
        camera.stop()
        node.stop()
    log = node.log_text()
    assert '[ERROR]' not in log and 'Traceback' not in log, log


def test_ctrl_c_ends_a_sim_time_node_whose_clock_stopped(tiny_checkpoint, tmp_path, probe):
    # After a replay with --clock ends, /clock stops and no sim-time timer fires any more; the
    # node still has to end on SIGINT (under replay_eval.launch.py it was killed after 25 s).
    command = node_command(tiny_checkpoint, '/st', 'use_sim_time:=true')
    node = start_process('node', command, tmp_path)
    try:
        _wait_active(probe, '/st/m2a_perception', node)
        # Before the fix the process never reacted and was killed: status -9.
        assert node.stop(timeout_s=30.0) == 0, node.log_text()
    finally:
        node.stop()
    log = node.log_text()
    assert '[ERROR]' not in log and 'Traceback' not in log, log


def test_lifecycle_shutdown_ends_the_process(tiny_checkpoint, tmp_path, probe):
    node = start_process('node', node_command(tiny_checkpoint, '/fin'), tmp_path)
    try:
        _wait_active(probe, '/fin/m2a_perception', node)
        assert probe.transition('/fin/m2a_perception', Transition.TRANSITION_ACTIVE_SHUTDOWN)
        assert node.process.wait(30.0) == 0
    finally:
        node.stop()
    assert 'finalized: exiting' in node.log_text()


# A stand-in for `ros2 launch`: starts the command after the pid file, writes the child's pid,
# then waits to be killed. The child inherits this environment (M2A_EXIT_WITH_PARENT=1 from
# `ros_environment`, as launch_ros passes it to the node) and the log.
LAUNCHER = (
    'import pathlib, subprocess, sys, time\n'
    'child = subprocess.Popen(sys.argv[2:])\n'
    'pathlib.Path(sys.argv[1]).write_text(str(child.pid))\n'
    'time.sleep(600)\n'
)


def _process_ended(pid: int) -> bool:
    """Whether `pid` has exited (gone, or a zombie its new parent has not reaped yet)."""
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(')')[2].split()[0] == 'Z'


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc')
@pytest.mark.parametrize('kill_signal', [signal.SIGKILL, signal.SIGTERM], ids=['kill', 'term'])
def test_the_node_ends_when_its_launcher_is_killed(tiny_checkpoint, tmp_path, probe, kill_signal):
    namespace = f'/pd_{kill_signal.name.lower()}'
    pid_file = tmp_path / 'node.pid'
    command = node_command(tiny_checkpoint, namespace)
    launcher = start_process(
        'launcher', [sys.executable, '-c', LAUNCHER, str(pid_file), *command], tmp_path
    )
    try:
        _wait_active(probe, f'{namespace}/m2a_perception', launcher)
        node_pid = int(pid_file.read_text())
        os.kill(launcher.process.pid, kill_signal)
        launcher.process.wait(10.0)
        killed = time.monotonic()
        # Before the fix the node ran on, re-parented, until the group was killed below.
        while not _process_ended(node_pid) and time.monotonic() - killed < 10.0:
            time.sleep(0.1)
        assert _process_ended(node_pid), launcher.log_text()[-3000:]
    finally:
        launcher.stop()  # the whole group: also a node that did not end
    log = launcher.log_text()
    reasons = [line for line in log.splitlines() if 'ended (e.g. `ros2 launch`' in line]
    assert len(reasons) == 1 and f'parent process {launcher.process.pid} ended' in reasons[0], log
    assert '[ERROR]' not in log and 'Traceback' not in log, log


def test_only_a_launchers_child_watches_its_parent():
    launched = {'M2A_EXIT_WITH_PARENT': '1'}
    assert parent_to_watch(launched, 4242) == 4242
    # Started from a shell: `nohup` or a closed terminal must not end the node.
    assert parent_to_watch({}, 4242) is None
    assert parent_to_watch({'M2A_EXIT_WITH_PARENT': '0'}, 4242) is None
    # systemd (or a container's init) starting the node directly: PID 1 never goes away, and
    # the node as PID 1 has parent 0.
    assert parent_to_watch(launched, 1) is None
    assert parent_to_watch(launched, 0) is None
