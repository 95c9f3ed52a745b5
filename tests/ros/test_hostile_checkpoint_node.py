"""Issue 18 item 3 through the real node process: a checkpoint whose config asks for 15000
queries is refused by the config's size limits before the node builds anything.

The node reads the checkpoint on configure (autostart), so the refusal is a "configure failed"
log line within seconds and a peak memory of torch alone, not the 5 GB network.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ..model.test_hostile_checkpoints import forged_checkpoint
from .helpers import STARTUP_TIMEOUT_S, node_command, start_process

pytestmark = pytest.mark.ros


def peak_rss_kb(pid: int) -> int:
    """VmHWM of a running process from /proc (Linux), in kB."""
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmHWM:'):
            return int(line.split()[1])
    raise AssertionError(f'no VmHWM for process {pid}')


def test_node_refuses_a_checkpoint_asking_for_15000_queries_before_building(tmp_path):
    checkpoint = forged_checkpoint(tmp_path, num_queries=15000)
    process = start_process('node', node_command(checkpoint, '/hostile'), tmp_path)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        failed: list[str] = []
        while not failed and process.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
            failed = [ln for ln in process.log_text().splitlines() if 'configure failed' in ln]
        assert process.alive(), process.log_text()
        rss_kb = peak_rss_kb(process.process.pid)
    finally:
        process.stop()
    log = process.log_text()
    assert len(failed) == 1, log[-3000:]
    assert f'{checkpoint}: invalid model config in metadata' in failed[0]
    assert (
        'transformer_decoder.num_queries = 15000 is outside the allowed range [0, 1000]'
        in (failed[0])
    )
    assert 'Traceback' not in log
    assert rss_kb < 1_500_000, rss_kb  # rclpy + torch; never the 5 GB network
