"""The m2a checkpoint format: one safetensors file holding the weights and the model config.

safetensors stores raw tensors plus a string-to-string metadata header, so loading a checkpoint can
never run code. The metadata carries `format`, `format_version`, the model config as JSON, the
weights' provenance (`weights_state`: 'trained', or 'backbone_only' for a stage-1 initialisation
that must never be used for inference) and free-form user fields. Writes are atomic: a temporary
file in the same folder, fsync, then rename.

Allowed dependencies: standard library, torch, safetensors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from m2a_perception.config import ModelConfig
from m2a_perception.files import (  # noqa: F401 (re-exported: the writers import them from here)
    WriteFailedError,
    atomic_write,
    fsync_directory,
    mount_point,
    write_failure,
)
from m2a_perception.model import Mask2Anomaly, build_model

FORMAT_NAME = 'm2a-mask2anomaly'
FORMAT_VERSION = '1'
WEIGHTS_STATES = ('trained', 'backbone_only')

_ZIP_MAGIC = b'PK\x03\x04'
_PICKLE_PROTOCOL_OPCODE = 0x80


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class CheckpointContents:
    """What `read_checkpoint` returns: tensors, config and metadata, not yet in a model."""

    state_dict: dict[str, torch.Tensor]
    config: ModelConfig
    weights_state: str
    metadata: dict[str, str]


def save_checkpoint(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    config: ModelConfig,
    *,
    weights_state: str = 'trained',
    extra_metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write `state_dict` and `config` to a safetensors checkpoint, atomically.

    The file is byte-for-byte reproducible: the same tensors, config and metadata always give
    the same bytes, so the same sha256 (what engine keys record as `weights_sha256`).
    """
    if weights_state not in WEIGHTS_STATES:
        raise ValueError(f'weights_state must be one of {WEIGHTS_STATES}, got {weights_state!r}')
    metadata = {str(k): str(v) for k, v in (extra_metadata or {}).items()}
    metadata.update(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        model_config=json.dumps(config.to_dict(), sort_keys=True),
        weights_state=weights_state,
    )
    # safetensors refuses shared or non-contiguous storage; detach copies keep the file canonical.
    tensors = {k: v.detach().to('cpu').contiguous().clone() for k, v in state_dict.items()}
    path = Path(path)
    data = _sorted_metadata(save(tensors, metadata=metadata))
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path


def _sorted_metadata(data: bytes) -> bytes:
    """A serialised safetensors file with its metadata keys in sorted order.

    safetensors writes the metadata in hash-map order, which changes from one process to the
    next; sorted, the header is canonical. The header stays compact JSON padded with spaces to
    a multiple of 8 bytes, as safetensors writes it; the tensor bytes are unchanged.
    """
    length = int.from_bytes(data[:8], 'little')
    header = json.loads(data[8 : 8 + length])
    header['__metadata__'] = dict(sorted(header.get('__metadata__', {}).items()))
    text = json.dumps(header, separators=(',', ':'), ensure_ascii=False).encode()
    text += b' ' * (-len(text) % 8)
    return len(text).to_bytes(8, 'little') + text + data[8 + length :]


def _sniff(path: Path) -> None:
    """Reject files that are not safetensors before parsing them, with a precise reason."""
    if not path.exists():
        raise CheckpointError(f'{path}: checkpoint file not found')
    if not path.is_file():
        raise CheckpointError(f'{path}: not a regular file')
    with path.open('rb') as stream:
        head = stream.read(9)
    # safetensors = 8-byte little-endian header length, then the JSON header. Check that first:
    # the length's low byte can be anything, 0x80 (a pickle opcode) included.
    if len(head) == 9 and head[8:9] == b'{':
        return
    if head.startswith(_ZIP_MAGIC) or (head and head[0] == _PICKLE_PROTOCOL_OPCODE):
        raise CheckpointError(
            f'{path}: this is a pickle-based PyTorch/detectron2 file, which can carry code and is '
            'never loaded as an m2a checkpoint; convert it with `m2a-convert-checkpoint`'
        )
    if len(head) < 9:
        raise CheckpointError(f'{path}: file is truncated or empty ({len(head)} bytes)')


def read_checkpoint(path: str | os.PathLike[str]) -> CheckpointContents:
    """Read tensors, config and metadata of an m2a checkpoint without building a model."""
    path = Path(path)
    _sniff(path)
    try:
        state_dict = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework='pt') as handle:
            metadata = dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f'{path}: corrupt or truncated safetensors file ({error})'
        ) from error
    if metadata.get('format') != FORMAT_NAME:
        raise CheckpointError(
            f'{path}: safetensors file is not an m2a checkpoint (metadata format='
            f'{metadata.get("format")!r}); convert it with `m2a-convert-checkpoint`'
        )
    if metadata.get('format_version') != FORMAT_VERSION:
        raise CheckpointError(
            f'{path}: unsupported m2a checkpoint version {metadata.get("format_version")!r} '
            f'(this code reads version {FORMAT_VERSION})'
        )
    try:
        config = ModelConfig.from_dict(json.loads(metadata['model_config']))
    except (KeyError, json.JSONDecodeError, TypeError, ValueError) as error:
        raise CheckpointError(f'{path}: invalid model config in metadata ({error})') from error
    weights_state = metadata.get('weights_state', '')
    if weights_state not in WEIGHTS_STATES:
        raise CheckpointError(f'{path}: unknown weights_state {weights_state!r}')
    return CheckpointContents(state_dict, config, weights_state, metadata)


def check_state_dict(
    path: Path, model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]
) -> None:
    """Raise one CheckpointError listing missing, unexpected and mis-shaped tensors."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}'
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing keys (first: {missing[:5]})')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected keys (first: {unexpected[:5]})')
    if mismatched:
        problems.append(f'{len(mismatched)} shape mismatches (first: {mismatched[:3]})')
    if problems:
        raise CheckpointError(
            f'{path}: weights do not fit the model config: ' + '; '.join(problems)
        )


def load_checkpoint(
    path: str | os.PathLike[str],
    device: torch.device | str = 'cpu',
    *,
    allow_untrained: bool = False,
) -> tuple[Mask2Anomaly, ModelConfig]:
    """Build the model described by the checkpoint, load its weights, and put it in eval mode.

    A checkpoint holding only an initialisation (`weights_state` 'backbone_only') is refused
    unless `allow_untrained` is set (training uses it to start stage 1).
    """
    path = Path(path)
    contents = read_checkpoint(path)
    if contents.weights_state != 'trained' and not allow_untrained:
        raise CheckpointError(
            f'{path}: holds only a {contents.weights_state} initialisation, not a trained model; '
            'refusing to run inference with untrained weights'
        )
    # Shapes first, on a meta-device model (no memory, milliseconds), so that a small file whose
    # config asks for a huge network is refused before anything is allocated.
    with torch.device('meta'):
        skeleton = build_model(contents.config)
    check_state_dict(path, skeleton, contents.state_dict)
    del skeleton
    model = build_model(contents.config)
    model.load_state_dict(contents.state_dict, strict=True)
    return model.to(device).eval(), contents.config
