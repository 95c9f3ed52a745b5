"""Convert official Mask2Anomaly / Mask2Former / ResNet-50 / DINOv2 weights into the m2a layout.

Inputs are detectron2 checkpoints (`.pth` written by torch.save, `.pkl` pickles of numpy arrays),
either a dict with `model` or a bare state dict, torchvision-layout ResNet-50 state dicts (the
Barlow Twins initialisation) and official DINOv2 ViT state dicts (weights/dinov2.py). Nothing is
ever unpickled beyond tensors, numpy arrays and plain containers: `.pth` goes through
`torch.load(weights_only=True)` and `.pkl` through a restricted unpickler, so a file that carries
code fails with a clear error instead of running it.

Every expected key must be mapped and every shape must match; keys the official files carry but
the network does not use are listed in the report, anything else unexpected is an error.

Allowed dependencies: standard library, numpy, torch, safetensors.
"""

from __future__ import annotations

import io
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from m2a_perception.weights.checkpoint import CheckpointError
from m2a_perception.weights.dinov2 import PREFIX as DINOV2_PREFIX
from m2a_perception.weights.dinov2 import dinov2_name, is_dinov2_layout

# Official checkpoint keys that the network does not use (reported, then dropped).
UNUSED_SOURCE_KEYS = ('criterion.empty_weight',)
# Keys the official network holds but never reads in forward (loaded, and reported).
UNUSED_MODEL_KEY = re.compile(r'\.fusion_layer\.(weight|bias)$')
# Bookkeeping tensors that carry no weights.
IGNORED_KEY = re.compile(r'(^|\.)num_batches_tracked$|^pixel_(mean|std)$')

# Sources that initialise only the backbone (the rest of the network is freshly initialised).
BACKBONE_ONLY_FORMATS = ('torchvision-resnet', 'detectron2-resnet', 'dinov2')

_CROSS_ATTN_M2F = re.compile(
    r'^(.*transformer_cross_attention_layers\.\d+\.)multihead_attn\.(.*)$'
)


class ConversionError(CheckpointError):
    """The source weights do not map onto the model; the message lists every problem."""


@dataclass
class ConversionReport:
    """What a conversion did, for the user to read."""

    source_format: str
    num_source_tensors: int = 0
    renamed: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f'source format: {self.source_format}',
            f'source tensors: {self.num_source_tensors}',
            f'renamed: {len(self.renamed)}',
            f'ignored bookkeeping tensors: {len(self.ignored)}',
            f'expected but unused by the network: {len(self.unused)}'
            + (f' ({_abbreviate(self.unused)})' if self.unused else ''),
            f'not in the source, freshly initialised: {len(self.initialised)}'
            + (f' ({_abbreviate(self.initialised)})' if self.initialised else ''),
        ]
        lines += [f'note: {note}' for note in self.notes]
        return '\n'.join(lines)


def _abbreviate(keys: list[str], limit: int = 4) -> str:
    shown = ', '.join(keys[:limit])
    return shown + (f', ... {len(keys) - limit} more' if len(keys) > limit else '')


# --------------------------------------------------------------------------------------------
# Reading foreign files safely


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only reconstructs numpy arrays and plain containers."""

    _allowed: frozenset[tuple[str, str]] = frozenset(
        {
            # Protocol-2 pickles written by Python 3 encode raw bytes through _codecs.encode.
            ('_codecs', 'encode'),
            ('collections', 'OrderedDict'),
            ('numpy', 'ndarray'),
            ('numpy', 'dtype'),
            ('numpy.core.multiarray', '_reconstruct'),
            ('numpy._core.multiarray', '_reconstruct'),
            ('numpy.core.multiarray', 'scalar'),
            ('numpy._core.multiarray', 'scalar'),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'global {module}.{name} is not allowed')


def _numpy_safe_globals() -> list[Any]:
    core = getattr(np, '_core', None) or np.core
    return [
        core.multiarray._reconstruct,
        core.multiarray.scalar,
        np.ndarray,
        np.dtype,
        OrderedDict,
    ]


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a foreign weights file into a flat {name: tensor} dict, never running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'{path}: weights file not found')
    raw = path.read_bytes()
    if not raw:
        raise CheckpointError(f'{path}: file is empty')
    try:
        if raw.startswith(b'PK\x03\x04'):
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                loaded = torch.load(io.BytesIO(raw), map_location='cpu', weights_only=True)
        elif raw[0] == 0x80:
            loaded = _ArrayUnpickler(io.BytesIO(raw), encoding='latin1').load()
        else:
            loaded = load_file(str(path))
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f'{path}: refusing to unpickle: the file contains Python objects other than tensors '
            f'and arrays ({error})'
        ) from error
    except (RuntimeError, EOFError, ValueError, SafetensorError, OSError, KeyError) as error:
        raise CheckpointError(f'{path}: corrupt or truncated weights file ({error})') from error
    if isinstance(loaded, Mapping) and isinstance(loaded.get('model'), Mapping):
        loaded = loaded['model']
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f'{path}: expected a state dict or a dict with "model"')
    tensors: dict[str, torch.Tensor] = {}
    for key, value in loaded.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f'{path}: entry {key!r} is a {type(value).__name__}, not a tensor'
            )
        tensors[str(key)] = value
    return tensors


# --------------------------------------------------------------------------------------------
# Name mapping


def detect_source_format(source: Mapping[str, torch.Tensor]) -> str:
    """'dinov2', 'torchvision-resnet', 'detectron2-resnet', 'mask2former' or 'mask2anomaly'."""
    keys = {_strip_module(k) for k in source}
    if is_dinov2_layout(keys):
        return 'dinov2'
    if any(k.startswith(('conv1.', 'layer1.')) for k in keys):
        return 'torchvision-resnet'
    if any(k.startswith(('stem.', 'res2.')) for k in keys):
        return 'detectron2-resnet'
    if any(_CROSS_ATTN_M2F.match(k) for k in keys):
        return 'mask2former'
    return 'mask2anomaly'


def _strip_module(key: str) -> str:
    return key[len('module.') :] if key.startswith('module.') else key


def torchvision_resnet_name(key: str) -> str | None:
    """torchvision ResNet name -> detectron2 name (without `backbone.`); None for the fc head."""
    if key.startswith('fc.'):
        return None
    key = re.sub(r'^layer(\d)', lambda m: f'res{int(m.group(1)) + 1}', key)
    key = re.sub(r'\.downsample\.0\.', '.shortcut.', key)
    key = re.sub(r'\.downsample\.1\.', '.shortcut.norm.', key)
    key = re.sub(r'(^|\.)bn(\d)\.', lambda m: f'{m.group(1)}conv{m.group(2)}.norm.', key)
    if not key.startswith('res'):
        key = 'stem.' + key
    return key


def map_source_keys(
    source: Mapping[str, torch.Tensor], source_format: str, report: ConversionReport
) -> dict[str, torch.Tensor]:
    """Rename source tensors to model names; ignored and unused ones are reported and dropped."""
    mapped: dict[str, torch.Tensor] = {}
    for original, tensor in source.items():
        key = _strip_module(original)
        if IGNORED_KEY.search(key):
            report.ignored.append(original)
            continue
        if key in UNUSED_SOURCE_KEYS:
            report.unused.append(original)
            continue
        if source_format == 'dinov2':
            try:
                renamed = dinov2_name(key)
            except KeyError:
                raise ConversionError(
                    f'{original!r} is not a DINOv2 ViT tensor (expected cls_token, pos_embed, '
                    'register_tokens, mask_token, patch_embed.proj.*, blocks.N.* or norm.*)'
                ) from None
            if renamed is None:
                report.unused.append(original)
                continue
            key = renamed
        elif source_format == 'torchvision-resnet':
            renamed = torchvision_resnet_name(key)
            if renamed is None:
                report.ignored.append(original)
                continue
            key = 'backbone.' + renamed
        elif source_format == 'detectron2-resnet':
            key = 'backbone.' + key
        key = key.replace('predictor.static_query.', 'predictor.query_feat.')
        cross = _CROSS_ATTN_M2F.match(key)
        if cross:
            # Mask2Former has one cross-attention; both GMA branches start from it. This is an
            # initialisation for fine-tuning, not an equivalent network (the branches see
            # complementary masks and their outputs are summed).
            for branch in ('foreground', 'background'):
                target = f'{cross.group(1)}multihead_attn_{branch}.{cross.group(2)}'
                mapped[target] = tensor
                report.renamed.append((original, target))
            continue
        if key != original:
            report.renamed.append((original, key))
        if key in mapped:
            raise ConversionError(f'two source tensors map to {key!r}')
        mapped[key] = tensor
    if source_format == 'mask2former':
        report.notes.append(
            'Mask2Former cross-attention copied into both GMA branches: an initialisation for '
            'Mask2Anomaly fine-tuning, not an equivalent model'
        )
    return mapped


def convert_state_dict(
    source: Mapping[str, torch.Tensor],
    model_state: Mapping[str, torch.Tensor],
    source_format: str | None = None,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map `source` onto the keys and shapes of `model_state` (a freshly built model's state).

    Backbone-only sources (torchvision/detectron2 ResNet) fill the rest from `model_state`, and
    so do keys a Mask2Former checkpoint lacks (`fusion_layer`); all of those are listed in
    `report.initialised`. A full Mask2Anomaly source must provide every key.

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped tensor.
    """
    source_format = source_format or detect_source_format(source)
    report = ConversionReport(source_format=source_format, num_source_tensors=len(source))
    mapped = map_source_keys(source, source_format, report)

    backbone_only = source_format in BACKBONE_ONLY_FORMATS
    expected = set(model_state)
    if source_format == 'dinov2':
        # The pyramid adapter is new: only the ViT itself comes from the checkpoint.
        expected = {k for k in expected if k.startswith(DINOV2_PREFIX)}
    elif backbone_only:
        expected = {k for k in expected if k.startswith('backbone.')}
    may_initialise = {k for k in model_state if k not in expected}
    if source_format == 'mask2former':
        may_initialise |= {k for k in model_state if UNUSED_MODEL_KEY.search(k)}

    missing = sorted(k for k in model_state if k not in mapped and k not in may_initialise)
    unexpected = sorted(k for k in mapped if k not in model_state)
    mismatched = sorted(
        f'{k}: source {tuple(v.shape)} vs model {tuple(model_state[k].shape)}'
        for k, v in mapped.items()
        if k in model_state and tuple(v.shape) != tuple(model_state[k].shape)
    )
    problems = []
    if missing:
        problems.append(f'{len(missing)} expected keys missing: {_abbreviate(missing, 8)}')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected keys: {_abbreviate(unexpected, 8)}')
    if mismatched:
        problems.append(f'{len(mismatched)} shape mismatches: {_abbreviate(mismatched, 5)}')
    if problems:
        raise ConversionError(
            f'{source_format} weights do not fit the model: ' + '; '.join(problems)
        )

    converted: dict[str, torch.Tensor] = {}
    for key, reference in model_state.items():
        if key in mapped:
            converted[key] = mapped[key].to(reference.dtype)
            if UNUSED_MODEL_KEY.search(key):
                report.unused.append(key)
        else:
            converted[key] = reference.detach().clone()
            report.initialised.append(key)
    return converted, report
