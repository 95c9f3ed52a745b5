"""Training checkpoints: atomic, resumable, and loadable without unpickling code.

Layout under `<output_dir>/checkpoints/`:

    iter_0000500/model.safetensors    weights + model config (m2a format; metadata also holds the
                                      iteration, seed, git revision and the resolved train config)
    iter_0000500/training_state.pt    optimizer, scheduler, grad scaler, sampler position, RNG
                                      states of every rank, best-so-far (tensors and plain
                                      containers only; read with torch.load(weights_only=True))
    iter_0000500/config.yaml          resolved training config
    iter_0000500/meta.json            iteration, seed, git revision, world size, last metrics
    last_checkpoint                   the name of the newest complete checkpoint

A checkpoint is written into a hidden temporary folder, every file is fsynced, the folder is
renamed into place, and only then is `last_checkpoint` replaced (write + fsync + rename). A kill
at any point leaves the previous checkpoint and the pointer to it intact; leftovers of an
interrupted write are hidden `.tmp` folders, removed by `remove_stale_temporaries`.

The best model (by the validation selection metric) is one self-describing safetensors file,
`<output_dir>/best_model.safetensors`, replaced atomically, with a readable `best_model.json`.

Allowed dependencies: standard library, numpy, torch, m2a_perception.weights.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2a_perception.config import ModelConfig
from m2a_perception.weights import save_checkpoint
from m2a_perception.weights.checkpoint import (
    WriteFailedError,
    atomic_write,
    fsync_directory,
    write_failure,
)

logger = logging.getLogger(__name__)

STATE_FORMAT = 'm2a-training-state'
STATE_VERSION = 1
MODEL_FILE = 'model.safetensors'
STATE_FILE = 'training_state.pt'
CONFIG_FILE = 'config.yaml'
META_FILE = 'meta.json'
POINTER_FILE = 'last_checkpoint'
BEST_MODEL_FILE = 'best_model.safetensors'
BEST_META_FILE = 'best_model.json'
_CHECKPOINT_NAME = re.compile(r'^iter_(\d+)$')
_TMP_PREFIX = '.tmp-'


class TrainingCheckpointError(RuntimeError):
    """A training checkpoint that cannot be resumed from; the message says why."""


def checkpoint_name(iteration: int) -> str:
    return f'iter_{iteration:07d}'


def git_revision(where: Path | None = None) -> str:
    """`git describe --always --dirty` of the source tree, or 'unknown' outside a checkout."""
    folder = where or Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ['git', 'describe', '--always', '--dirty', '--abbrev=40'],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return 'unknown'
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else 'unknown'


# ---------------------------------------------------------------- RNG states as tensors


def capture_rng_state() -> dict[str, Any]:
    """This process's global RNG states (torch, CUDA, numpy, python) as tensors and numbers."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    state: dict[str, Any] = {
        'torch': torch.get_rng_state(),
        'numpy': {
            'name': str(numpy_state[0]),
            'keys': torch.from_numpy(np.asarray(numpy_state[1], dtype=np.int64)),
            'pos': int(numpy_state[2]),
            'has_gauss': int(numpy_state[3]),
            'cached_gaussian': float(numpy_state[4]),
        },
        'python': {
            'version': int(python_state[0]),
            'state': torch.tensor(python_state[1], dtype=torch.int64),
            'gauss_next': python_state[2],
        },
        'cuda': None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng_state` (the CUDA state only if CUDA is in use)."""
    torch.set_rng_state(state['torch'].to(torch.uint8).cpu())
    numpy_state = state['numpy']
    np.random.set_state(
        (
            numpy_state['name'],
            numpy_state['keys'].numpy().astype(np.uint32),
            int(numpy_state['pos']),
            int(numpy_state['has_gauss']),
            float(numpy_state['cached_gaussian']),
        )
    )
    python_state = state['python']
    random.setstate(
        (
            int(python_state['version']),
            tuple(int(v) for v in python_state['state'].tolist()),
            python_state['gauss_next'],
        )
    )
    if state.get('cuda') is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'].to(torch.uint8).cpu())


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- writing


def _fsync_file(path: Path) -> None:
    with path.open('rb') as stream:
        os.fsync(stream.fileno())


def write_training_state(path: Path, state: Mapping[str, Any]) -> None:
    """`torch.save` of tensors and plain containers (a separate function so tests can fail it)."""
    torch.save(dict(state), path)


def save_training_checkpoint(
    root: Path,
    iteration: int,
    *,
    model_state: Mapping[str, torch.Tensor],
    model_config: ModelConfig,
    training_state: Mapping[str, Any],
    config_yaml: str,
    meta: Mapping[str, Any],
    keep_last: int | None = None,
) -> Path:
    """Write checkpoint `iteration` under `root` atomically and point `last_checkpoint` at it.

    Args:
        root: the checkpoints folder.
        iteration: completed iterations.
        model_state: the (unwrapped) model's state dict.
        model_config: its config (stored in the safetensors metadata).
        training_state: optimizer, scheduler, scaler, sampler, RNG and selection state.
        config_yaml: the resolved training config.
        meta: plain JSON facts (seed, git revision, metrics ...).
        keep_last: afterwards delete all but this many newest periodic checkpoints.

    Returns:
        The checkpoint folder.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(iteration)
    staging = Path(tempfile.mkdtemp(prefix=f'{_TMP_PREFIX}{final.name}-', dir=root))
    try:
        # mkdtemp and the atomic writer create private entries; checkpoints are shared results.
        staging.chmod(0o755)
        metadata = {
            'iteration': str(iteration),
            'seed': str(meta.get('seed', '')),
            'git_revision': str(meta.get('git_revision', 'unknown')),
            'train_config': config_yaml,
        }
        save_checkpoint(staging / MODEL_FILE, model_state, model_config, extra_metadata=metadata)
        write_training_state(staging / STATE_FILE, training_state)
        (staging / CONFIG_FILE).write_text(config_yaml)
        (staging / META_FILE).write_text(json.dumps(dict(meta), indent=1, sort_keys=True))
        for path in staging.iterdir():
            path.chmod(0o644)
            _fsync_file(path)
        fsync_directory(staging)
        if final.exists():
            # Re-saving an iteration (a resumed run repeating it): swap, then drop the old one.
            retired = root / f'{_TMP_PREFIX}retired-{final.name}'
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(final, retired)
            os.replace(staging, final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, final)
        fsync_directory(root)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        # Name the checkpoint, not the staging folder; the last complete checkpoint is intact.
        cause = error.__cause__ if isinstance(error, WriteFailedError) else error
        failure = write_failure(final, cause) if cause is not None else None
        if failure is not None:
            raise failure from error
        raise
    atomic_write(root / POINTER_FILE, lambda tmp: tmp.write_text(final.name + '\n'))
    if keep_last is not None:
        prune_checkpoints(root, keep_last)
    return final


def prune_checkpoints(root: Path, keep_last: int) -> list[Path]:
    """Delete all but the `keep_last` newest checkpoints (never the one the pointer names)."""
    current = read_pointer(root)
    found = sorted(
        (int(m.group(1)), p)
        for p in root.iterdir()
        if p.is_dir() and (m := _CHECKPOINT_NAME.match(p.name))
    )
    removed = []
    for _, path in found[: max(len(found) - keep_last, 0)]:
        if path.name != current:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Remove leftovers of interrupted writes in `root`: hidden `.tmp-*` checkpoint folders
    and the hidden `.<name>.*.tmp` files of the atomic file writer."""
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if p.name.startswith(_TMP_PREFIX)]
    stale += [p for p in root.glob('.*.tmp') if p.is_file()]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if stale:
        logger.warning('removed %d leftovers of interrupted writes in %s', len(stale), root)
    return stale


def save_best_model(
    output_dir: Path,
    *,
    model_state: Mapping[str, torch.Tensor],
    model_config: ModelConfig,
    metadata: Mapping[str, str],
) -> Path:
    """Replace `best_model.safetensors` atomically; `best_model.json` mirrors its metadata."""
    path = save_checkpoint(
        output_dir / BEST_MODEL_FILE, model_state, model_config, extra_metadata=metadata
    )
    readable = {k: v for k, v in metadata.items() if k != 'train_config'}
    atomic_write(
        output_dir / BEST_META_FILE,
        lambda tmp: tmp.write_text(json.dumps(readable, indent=1, sort_keys=True)),
    )
    return path


# ---------------------------------------------------------------- reading


def read_pointer(root: Path) -> str | None:
    pointer = root / POINTER_FILE
    if not pointer.is_file():
        return None
    return pointer.read_text().strip() or None


def find_last_checkpoint(root: Path) -> Path | None:
    """The folder `last_checkpoint` names, or None when there is no checkpoint yet.

    Raises:
        TrainingCheckpointError: the pointer names a folder that is missing or incomplete.
    """
    name = read_pointer(root)
    if name is None:
        return None
    folder = root / name
    missing = [f for f in (MODEL_FILE, STATE_FILE) if not (folder / f).is_file()]
    if missing:
        raise TrainingCheckpointError(
            f'{root / POINTER_FILE} names {name}, but {folder} lacks {missing}'
        )
    return folder


def load_training_state(folder: Path) -> dict[str, Any]:
    """The training state of a checkpoint, loaded with `weights_only=True` (no code runs).

    Raises:
        TrainingCheckpointError: unreadable file or not an m2a training state.
    """
    path = folder / STATE_FILE
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refused the file before anything ran.
        if 'GLOBAL' in str(error):
            raise TrainingCheckpointError(
                f'{path}: refused: the training state references Python code or objects other '
                'than tensors and plain containers (never loaded; nothing was run)'
            ) from None
        raise TrainingCheckpointError(
            f'{path}: cannot read training state, the file is corrupt or not a torch file'
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError) as error:
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else type(error).__name__
        raise TrainingCheckpointError(
            f'{path}: cannot read training state, the file is corrupt or not a torch file '
            f'({first_line})'
        ) from None
    if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
        raise TrainingCheckpointError(f'{path}: not an m2a training state')
    if state.get('version') != STATE_VERSION:
        raise TrainingCheckpointError(
            f'{path}: training state version {state.get("version")!r}, this code reads '
            f'{STATE_VERSION}'
        )
    return state


def scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """Scheduler state without the lambdas' attributes (the schedule comes from the config)."""
    state = scheduler.state_dict()
    if 'lr_lambdas' in state:
        state['lr_lambdas'] = [None] * len(state['lr_lambdas'])
    return state
