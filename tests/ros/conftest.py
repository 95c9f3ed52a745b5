"""Fixtures of the ROS tests: a tiny trained-format checkpoint and the probe node."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import RosProbe


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny-config checkpoint (random init, saved as 'trained' so the node accepts it)."""
    import torch

    from m2a_perception.config import load_model_config
    from m2a_perception.model import build_model
    from m2a_perception.weights import save_checkpoint

    torch.manual_seed(0)
    config = load_model_config('tiny')
    path = tmp_path_factory.mktemp('checkpoint') / 'tiny.safetensors'
    save_checkpoint(path, build_model(config).state_dict(), config)
    return path


@pytest.fixture(scope='module')
def probe():
    ros_probe = RosProbe()
    yield ros_probe
    ros_probe.close()
