"""Shared pytest set-up: per-worker ROS domains, loud GPU skips, tiny model fixtures."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from m2a_perception.ros.processes import large_frames_defaults

# Each xdist worker gets its own ROS domain so parallel ROS tests never cross-talk
# (shared/reference/environment.md §3). Set before any test imports rclpy.
_WORKER = os.environ.get('PYTEST_XDIST_WORKER', 'gw0')
os.environ['ROS_DOMAIN_ID'] = str(
    int(os.environ.get('M2A_TEST_DOMAIN_BASE', '40')) + int(_WORKER[2:])
)
# Multi-MB frames between processes, under any discovery range: the shipped Fast DDS profile,
# exactly as the launch files and `m2a-replay --live` set it (not LARGE_DATA, which loses them
# under ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST). A profile named by the caller wins.
os.environ.update(large_frames_defaults(os.environ))

# Under xdist the processes a test starts (CLIs, nodes) also run one torch thread, like the
# worker itself (`pytest_configure`); a test that passes its own OMP_NUM_THREADS still wins.
if 'PYTEST_XDIST_WORKER' in os.environ:
    os.environ.setdefault('OMP_NUM_THREADS', '1')


@pytest.fixture(autouse=True)
def _restore_torch_threads():  # type: ignore[no-untyped-def]
    """A test that changes the torch thread count does not leak it into the next test."""
    import sys

    torch = sys.modules.get('torch')
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get('torch')
    if before is not None and torch is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per xdist worker: `make test` runs two workers on two cores.

    Set here, per worker process, not at import of library code; a test that needs another
    count sets its own (and restores it).
    """
    if 'PYTEST_XDIST_WORKER' in os.environ:
        import torch

        torch.set_num_threads(1)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    gpu_items = [item for item in items if 'gpu' in item.keywords]
    for item in gpu_items:
        item.add_marker(
            pytest.mark.skip(reason='GPU TEST SKIPPED: no CUDA device on this machine')
        )
    if gpu_items:
        warnings.warn(
            f'{len(gpu_items)} GPU test(s) will be SKIPPED: no CUDA device on this machine',
            stacklevel=1,
        )


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    skipped = terminalreporter.stats.get('skipped', [])
    gpu_skips = [r for r in skipped if 'GPU TEST SKIPPED' in str(r.longrepr)]
    if gpu_skips:
        terminalreporter.write_sep(
            '!', f'{len(gpu_skips)} GPU TESTS WERE SKIPPED (no CUDA)', red=True
        )


@pytest.fixture(scope='session')
def tiny_config():
    from m2a_perception.config import load_model_config

    return load_model_config('tiny')


@pytest.fixture(scope='session')
def full_config():
    from m2a_perception.config import load_model_config

    return load_model_config('cityscapes_r50_gma')


@pytest.fixture
def tiny_model(tiny_config):
    import torch

    from m2a_perception.model import build_model

    torch.manual_seed(0)
    return build_model(tiny_config).eval()


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory, tiny_config) -> Path:
    """A tiny-config checkpoint (random init, seed 0, saved as trained so the node accepts it)."""
    import torch

    from m2a_perception.model import build_model
    from m2a_perception.weights import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('checkpoint') / 'tiny.safetensors'
    save_checkpoint(path, build_model(tiny_config).state_dict(), tiny_config)
    return path
