"""Fixtures of the replay tests: a tiny checkpoint, a small synthetic world and packed bags.

Everything is session-scoped and small (64x128 scenes, a handful of frames) so the whole folder
runs in about a minute on two CPU cores; torch uses one thread.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

# rosbags' message-definition parser imports lark, which imports the deprecated `sre_parse`;
# import it once here, quietly, instead of warning in whichever test parses a .msg first.
with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    import lark  # noqa: F401

from m2a_perception.ros.replay.pack import PackOptions, pack_images

SCENE_SIZE = (64, 128)
NUM_ANOMALY_SCENES = 4
NUM_VAL_SCENES = 2
PACK_RATE_HZ = 2.0


@pytest.fixture(scope='session', autouse=True)
def _one_torch_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope='session')
def world(tmp_path_factory):
    from m2a_training.data.synthetic import generate_synthetic_world

    return generate_synthetic_world(
        tmp_path_factory.mktemp('world'),
        num_train=0,
        num_val=NUM_VAL_SCENES,
        num_anomaly_val=NUM_ANOMALY_SCENES,
        num_outlier_images=0,
        size=SCENE_SIZE,
    )


@pytest.fixture(scope='session')
def anomaly_bag(world, tmp_path_factory) -> Path:
    """The synthetic anomaly scenes as /front/image (rgb8) + /front/ground_truth/anomaly."""
    path = tmp_path_factory.mktemp('bags') / 'anomaly'
    pack_images(world.anomaly_root, path, options=PackOptions(rate_hz=PACK_RATE_HZ))
    return path


@pytest.fixture(scope='session')
def node_parameters(tiny_checkpoint) -> dict[str, object]:
    # Overlay on every frame, so every output exists for every frame; maps at the source
    # resolution, where the labels are (the node's default is the model resolution).
    return {
        'model.checkpoint': str(tiny_checkpoint),
        'viz.overlay_rate_hz': 0.0,
        'output_resolution': 'source',
    }


# The node settings the replays above run with, for computations without a bag.
SOURCE_RESOLUTION = {'output_resolution': 'source'}


def write_pngs(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Deterministic test frames (gradients plus noise) as PNG files."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    height, width = size
    rows = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    cols = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    paths = []
    for index in range(count):
        noise = rng.integers(0, 60, (height, width, 3)).astype(np.float32)
        rgb = np.clip(rows * 0.5 + cols * 0.4 + noise + index, 0, 255).astype(np.uint8)
        path = folder / f'frame_{index:03d}.png'
        Image.fromarray(rgb).save(path)
        paths.append(path)
    return paths


def live_domain() -> str:
    """ROS_DOMAIN_ID of the live-replay processes (as tests/ros/conftest.py chooses one).

    With M2A_TEST_DOMAIN_BASE: the worker's own (tests/conftest.py: base + xdist worker number).
    Without it tests/conftest.py gives every concurrent pytest run domain 40 + n, so this test
    process takes a pid-based domain instead.
    """
    if 'M2A_TEST_DOMAIN_BASE' in os.environ:
        return os.environ['ROS_DOMAIN_ID']
    return str(101 + os.getpid() % 120)
