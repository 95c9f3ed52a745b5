"""Issue 17 through the real node process: `panoptic.mining_split` selects the unknown-instance
split, and `centroid_head` is checked against the checkpoint's model at configure (a model
without the instance head is one "configure failed" sentence; one with it configures)."""

from __future__ import annotations

import time

import pytest
import torch

from m2a_perception.config import load_model_config
from m2a_perception.model import build_model
from m2a_perception.weights.checkpoint import save_checkpoint

from .helpers import STARTUP_TIMEOUT_S, node_command, start_process

pytestmark = pytest.mark.ros

CENTROID_SPLIT = ('panoptic.mining_split:=centroid_head',)


def _checkpoint(tmp_path, config_name: str):
    config = load_model_config(config_name)
    torch.manual_seed(0)
    return save_checkpoint(
        tmp_path / f'{config_name}.safetensors', build_model(config).state_dict(), config
    )


def _first_outcome(process) -> str:
    """The node's first 'configured' or 'configure failed' log line."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while process.alive() and time.monotonic() < deadline:
        for line in process.log_text().splitlines():
            if 'configure failed' in line or ']: configured: cameras' in line:
                return line
        time.sleep(0.2)
    raise AssertionError(f'no configure outcome: {process.log_text()[-3000:]}')


@pytest.mark.parametrize(('config_name', 'configured'), [('tiny', False), ('tiny_centroid', True)])
def test_centroid_split_is_checked_against_the_checkpoint_at_configure(
    tmp_path, config_name, configured
):
    checkpoint = _checkpoint(tmp_path, config_name)
    command = node_command(checkpoint, f'/split_{config_name}', *CENTROID_SPLIT)
    process = start_process('node', command, tmp_path)
    try:
        outcome = _first_outcome(process)
        assert process.alive(), process.log_text()[-3000:]
    finally:
        process.stop()
    log = process.log_text()
    assert 'Traceback' not in log
    if configured:
        assert 'configured: cameras' in outcome, log[-3000:]
        assert 'configure failed' not in log
    else:
        assert 'configure failed' in outcome
        assert "mining_split 'centroid_head' needs a model with" in outcome
        assert log.count('configure failed') == 1
