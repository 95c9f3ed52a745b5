"""How the node process starts with integer values for doubles, and how it ends.

Real node processes: Ctrl-C while frames flow must log no ERROR and exit 0; the lifecycle
`shutdown` transition must end the process.
"""

from __future__ import annotations

import pytest
from lifecycle_msgs.msg import Transition
from sensor_msgs.msg import Image

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
