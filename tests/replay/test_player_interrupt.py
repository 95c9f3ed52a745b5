"""`bag_player` stopped with Ctrl-C while it plays: exit status 0, no traceback."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from ..ros.helpers import REPO_ROOT, ros_env

pytestmark = pytest.mark.ros


def test_ctrl_c_while_playing_exits_0_without_traceback(anomaly_bag):
    # Slow enough that Ctrl-C arrives between two messages, with the clock running.
    command = [
        sys.executable,
        '-m',
        'm2a_perception.cli.bag_player',
        str(anomaly_bag),
        '--clock',
        '--speed',
        '0.02',
        '--progress',
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=ros_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        seen = []
        for line in process.stdout:  # blocks until the first message is played
            seen.append(line)
            if line.startswith('progress 1/'):
                break
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30.0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10.0)
    log = ''.join(seen) + output
    assert process.returncode == 0, log
    assert 'Traceback' not in log and 'Failed to publish' not in log, log
