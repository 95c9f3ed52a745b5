"""Hostile training states and full disks through the real `m2a-train` entry point.

A code-carrying or random `training_state.pt` ends in one sentence naming the file and never
runs code; a disk that fills up while writing a checkpoint ends in "no space left on ... while
writing ...", exit 1, and the previous checkpoint stays the last good one.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from m2a_training import checkpointing
from m2a_training.cli.train import main as train_main

from ..disk import folder_bytes, small_disk
from .train_helpers import CONFIG_DIR, make_tiny_world, tiny_overrides

N = 2


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f'touch {self.marker}',))


pytestmark = pytest.mark.usefixtures('single_thread')


@pytest.fixture(scope='module')
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_world(tmp_path_factory.mktemp('hostile_world'))


def train_cli(world: Path, output: Path, *extra: str, max_iters: int = N) -> int:
    overrides = tiny_overrides(world, output, max_iters=max_iters, period=N)
    return train_main([str(CONFIG_DIR / 'synthetic_stage2.yaml'), *overrides, *extra])


def log_lines(output: Path) -> list[str]:
    return [line for line in (output / 'log.txt').read_text().splitlines() if 'ERROR' in line]


@pytest.mark.parametrize('kind', ['code_pickle', 'code_zip', 'random_bytes'])
def test_resume_from_a_hostile_training_state_is_one_sentence(
    world: Path, tmp_path: Path, kind: str
) -> None:
    output = tmp_path / 'run'
    assert train_cli(world, output) == 0
    state_file = output / 'checkpoints' / checkpointing.checkpoint_name(N) / 'training_state.pt'
    marker = tmp_path / 'code_ran'
    if kind == 'code_pickle':
        state_file.write_bytes(pickle.dumps({'format': _RunsCode(marker)}))
    elif kind == 'code_zip':
        torch.save({'format': _RunsCode(marker)}, state_file)
    else:
        state_file.write_bytes(os.urandom(4096))
    assert train_cli(world, output, '--resume', max_iters=2 * N) == 1
    errors = log_lines(output)
    assert len(errors) == 1, errors
    assert f'{state_file}: ' in errors[0]
    # A bare pickle is not even a torch file; a torch zip referencing os.system is refused.
    expected = 'refused' if kind == 'code_zip' else 'cannot read training state'
    assert expected in errors[0] and 'Traceback' not in (output / 'log.txt').read_text()
    assert not marker.exists()


def test_disk_full_while_writing_a_checkpoint_keeps_the_last_one(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = tmp_path / 'probe'
    assert train_cli(world, probe) == 0
    one_checkpoint = folder_bytes(probe / 'checkpoints')
    with small_disk(tmp_path / 'disk', int(one_checkpoint * 1.6) + (64 << 10)) as disk:
        if disk is None:  # not root: a full disk as the writer sees it
            write = checkpointing.write_training_state
            calls: list[Path] = []

            def fail_second(path: Path, state: dict) -> None:  # type: ignore[type-arg]
                calls.append(path)
                if len(calls) > 1:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                write(path, state)

            monkeypatch.setattr(checkpointing, 'write_training_state', fail_second)
        output = (disk or tmp_path) / 'run'
        assert train_cli(world, output, max_iters=2 * N) == 1
        errors = log_lines(output)
        assert len(errors) == 1, errors
        # The best model (written first) or the checkpoint, whichever the disk cannot hold.
        second = checkpointing.checkpoint_name(2 * N)
        written = rf'{output}/(best_model\.safetensors|checkpoints/{second})'
        assert re.search(rf'ERROR .*: no space left on \S+ while writing {written};', errors[0])
        root = output / 'checkpoints'
        assert checkpointing.find_last_checkpoint(root) == root / checkpointing.checkpoint_name(N)
        assert (
            checkpointing.load_training_state(root / checkpointing.checkpoint_name(N))['iteration']
            == N
        )
