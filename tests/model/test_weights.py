"""Checkpoints: our safetensors format, conversion of official layouts, and bad-file errors."""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from m2a_perception.cli.convert_checkpoint import main as convert_main
from m2a_perception.config import load_model_config
from m2a_perception.model import build_model
from m2a_perception.weights import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from m2a_perception.weights.checkpoint import atomic_write
from m2a_perception.weights.convert import (
    ConversionError,
    convert_state_dict,
    read_weights_file,
)
from tests.model.official_keys import official_checkpoint_keys, official_model_keys

MARKER_ENV = 'M2A_TEST_PICKLE_MARKER'


def _official_checkpoint() -> dict[str, torch.Tensor]:
    """An official trainer checkpoint's `model` dict with known values, built from the key table
    of the official layout (`tests/model/official_keys.py`, written from the reference notes and
    not from our converter or model), with the plain-BN counters a trainer checkpoint carries.

    Tensor i of the table holds i + (position mod 97) / 128 (exact in float32): every tensor
    differs from every other one, and a transposed or reshaped copy differs from the original.
    """
    state: dict[str, torch.Tensor] = {}
    for index, (key, shape) in enumerate(official_checkpoint_keys().items()):
        ramp = torch.arange(math.prod(shape)) % 97
        state[key] = (index + ramp / 128).to(torch.float32).reshape(shape)
    for key in list(state):
        if key.startswith('backbone.') and key.endswith('.norm.running_var'):
            state[key.replace('running_var', 'num_batches_tracked')] = torch.tensor(5000)
    return state


def _write_container(state: dict[str, torch.Tensor], container: str, directory: Path) -> Path:
    """Write `state` as detectron2 writes or strips it: trainer `.pth`, bare `.pth` saved from a
    DistributedDataParallel wrapper, or a `.pkl` of numpy arrays."""
    source = directory / f'official.{container.split("_")[0]}'
    if container == 'pth_trainer':
        torch.save({'model': state, 'iteration': 5000, 'trainer': {'iteration': 5000}}, source)
    elif container == 'pth_bare':
        torch.save({f'module.{k}': v for k, v in state.items()}, source)
    else:
        arrays = {k: v.numpy() for k, v in state.items()}
        source.write_bytes(pickle.dumps({'model': arrays, '__author__': 'test'}, protocol=2))
    return source


@pytest.fixture(scope='module')
def full_model():
    torch.manual_seed(1)
    model = build_model(load_model_config('cityscapes_r50_gma')).eval()
    # Randomise the frozen statistics too, so that every tensor's placement matters.
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith('running_var'):
                buffer.uniform_(0.5, 2.0)
            elif name.endswith('running_mean'):
                buffer.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize('container', ['pth_trainer', 'pth_bare', 'pkl_numpy'])
def test_converting_an_official_checkpoint_gives_exactly_its_values(tmp_path, container, capsys):
    official = _official_checkpoint()
    assert len(official) == 612 + 53
    source = _write_container(official, container, tmp_path)
    out = tmp_path / 'converted.safetensors'
    assert convert_main([str(source), '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'source format: mask2anomaly' in printed
    assert 'source tensors: 665' in printed
    assert 'ignored bookkeeping tensors: 53' in printed  # the plain-BN counters
    assert 'expected but unused by the network: 19' in printed  # criterion + 9×2 fusion tensors
    assert 'freshly initialised: 0' in printed

    loaded, config = load_checkpoint(out)
    assert config.name == 'cityscapes_r50_gma'
    network = official_model_keys()
    state = loaded.state_dict()
    assert set(state) == set(network)
    for key in network:
        assert torch.equal(state[key], official[key]), key
    # The same tensors, reached through the modules that use them.
    assert torch.equal(loaded.backbone.stem.conv1.weight, official['backbone.stem.conv1.weight'])
    predictor = loaded.sem_seg_head.predictor
    assert torch.equal(
        predictor.query_feat.weight, official['sem_seg_head.predictor.query_feat.weight']
    )
    assert torch.equal(
        predictor.class_embed.bias, official['sem_seg_head.predictor.class_embed.bias']
    )


@pytest.mark.parametrize(
    ('change', 'message'),
    [
        (
            'missing',
            r'1 expected keys missing: sem_seg_head\.predictor\.query_embed\.weight$',
        ),
        ('extra', r'1 unexpected keys: sem_seg_head\.predictor\.query_extra\.weight$'),
        (
            'shape',
            r'1 shape mismatches: backbone\.res4\.5\.conv2\.weight: source \(256, 256, 1, 1\) '
            r'vs model \(256, 256, 3, 3\)$',
        ),
    ],
)
def test_an_official_checkpoint_with_one_bad_key_is_refused_naming_it(full_model, change, message):
    official = _official_checkpoint()
    if change == 'missing':
        del official['sem_seg_head.predictor.query_embed.weight']
    elif change == 'extra':
        official['sem_seg_head.predictor.query_extra.weight'] = torch.zeros(100, 256)
    else:
        official['backbone.res4.5.conv2.weight'] = torch.zeros(256, 256, 1, 1)
    with pytest.raises(
        ConversionError, match='^mask2anomaly weights do not fit the model: ' + message
    ):
        convert_state_dict(official, full_model.state_dict())


def _torchvision_name(key: str) -> str:
    """detectron2 backbone name -> torchvision ResNet name (the inverse mapping, written here)."""
    key = key.removeprefix('backbone.')
    key = re.sub(r'^res(\d)', lambda m: f'layer{int(m.group(1)) - 1}', key)
    key = key.replace('stem.conv1.norm.', 'bn1.').replace('stem.conv1.', 'conv1.')
    key = key.replace('.shortcut.norm.', '.downsample.1.').replace('.shortcut.', '.downsample.0.')
    return re.sub(r'\.conv(\d)\.norm\.', r'.bn\1.', key)


def test_torchvision_resnet50_loads_into_the_backbone(full_model, tmp_path, capsys):
    backbone = {k: v for k, v in full_model.state_dict().items() if k.startswith('backbone.')}
    torchvision_state = {_torchvision_name(k): v for k, v in backbone.items()}
    assert 'layer1.0.downsample.1.running_mean' in torchvision_state
    assert 'bn1.weight' in torchvision_state and 'layer4.2.bn3.bias' in torchvision_state
    torchvision_state['fc.weight'] = torch.randn(1000, 2048)
    torchvision_state['fc.bias'] = torch.randn(1000)
    torchvision_state['layer1.0.bn1.num_batches_tracked'] = torch.tensor(7)
    source = tmp_path / 'resnet50.pth'
    torch.save(torchvision_state, source)
    out = tmp_path / 'stage1_init.safetensors'
    assert convert_main([str(source), '--out', str(out)]) == 0
    assert 'backbone-only' in capsys.readouterr().out

    contents = read_checkpoint(out)
    assert contents.weights_state == 'backbone_only'
    for key, value in backbone.items():
        assert torch.equal(contents.state_dict[key], value), key
    with pytest.raises(CheckpointError, match='untrained'):
        load_checkpoint(out)
    model, _ = load_checkpoint(out, allow_untrained=True)
    # The backbone is the ResNet's; everything else is the fresh initialisation of --seed 0.
    torch.manual_seed(0)
    fresh = build_model(load_model_config('cityscapes_r50_gma')).state_dict()
    state = model.state_dict()
    assert state.keys() == fresh.keys()
    for key, value in state.items():
        assert torch.equal(value, backbone[key] if key.startswith('backbone.') else fresh[key]), (
            key
        )
    assert not torch.equal(
        state['backbone.stem.conv1.weight'], fresh['backbone.stem.conv1.weight']
    )


def test_mask2former_checkpoint_initialises_both_gma_branches(full_model):
    state = {}
    for key, value in full_model.state_dict().items():
        if 'multihead_attn_background' in key or 'fusion_layer' in key:
            continue
        state[key.replace('multihead_attn_foreground', 'multihead_attn')] = value
    converted, report = convert_state_dict(state, full_model.state_dict())
    assert report.source_format == 'mask2former'
    key = 'sem_seg_head.predictor.transformer_cross_attention_layers.3.multihead_attn_{}'
    key += '.in_proj_weight'
    assert torch.equal(converted[key.format('foreground')], converted[key.format('background')])
    assert len(report.initialised) == 18 and all('fusion_layer' in k for k in report.initialised)
    assert any('not an equivalent model' in note for note in report.notes)


class _RunsCode:
    """Unpickling this calls `_mark_executed`: the payload an attacker would use."""

    def __reduce__(self):
        return (_mark_executed, ())


def _mark_executed() -> None:  # pragma: no cover - must never run
    import os

    Path(os.environ[MARKER_ENV]).write_text('code ran')


def test_pickled_code_is_refused_and_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / 'marker'
    monkeypatch.setenv(MARKER_ENV, str(marker))
    pth = tmp_path / 'evil.pth'
    torch.save({'model': {'w': torch.zeros(1)}, 'payload': _RunsCode()}, pth)
    with pytest.raises(CheckpointError, match='refusing to unpickle'):
        read_weights_file(pth)
    pkl = tmp_path / 'evil.pkl'
    pkl.write_bytes(pickle.dumps({'model': {'w': np.zeros(1)}, 'payload': _RunsCode()}))
    with pytest.raises(CheckpointError, match='refusing to unpickle'):
        read_weights_file(pkl)
    # Our own loader never even tries to unpickle.
    with pytest.raises(CheckpointError, match='pickle-based'):
        load_checkpoint(pth)
    assert not marker.exists()


def test_truncated_files_give_errors_naming_the_file(tiny_model, tiny_config, tmp_path):
    ours = save_checkpoint(tmp_path / 'tiny.safetensors', tiny_model.state_dict(), tiny_config)
    data = ours.read_bytes()
    ours.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r'tiny\.safetensors.*(corrupt|truncated)'):
        load_checkpoint(ours)
    pth = tmp_path / 'official.pth'
    torch.save({'model': tiny_model.state_dict()}, pth)
    pth.write_bytes(pth.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r'official\.pth.*corrupt or truncated'):
        read_weights_file(pth)
    empty = tmp_path / 'empty.safetensors'
    empty.write_bytes(b'')
    with pytest.raises(CheckpointError, match=r'empty\.safetensors.*(truncated|empty)'):
        load_checkpoint(empty)
    with pytest.raises(CheckpointError, match='not found'):
        load_checkpoint(tmp_path / 'missing.safetensors')


def test_wrong_shapes_missing_and_unexpected_keys_each_have_their_own_error(tiny_model):
    reference = tiny_model.state_dict()
    state = dict(reference)
    key = 'sem_seg_head.predictor.class_embed.weight'
    state[key] = torch.zeros(5, 5)
    with pytest.raises(ConversionError, match=r'1 shape mismatches: .*class_embed\.weight'):
        convert_state_dict(state, reference)
    state = {k: v for k, v in reference.items() if 'query_feat' not in k}
    with pytest.raises(ConversionError, match=r'1 expected keys missing: .*query_feat'):
        convert_state_dict(state, reference)
    state = {**reference, 'sem_seg_head.predictor.extra_head.weight': torch.zeros(1)}
    with pytest.raises(ConversionError, match=r'1 unexpected keys: .*extra_head'):
        convert_state_dict(state, reference)


def test_checkpoint_whose_weights_do_not_fit_its_config_is_refused(tiny_model, tmp_path):
    full_config = load_model_config('cityscapes_r50_gma')
    path = save_checkpoint(tmp_path / 'mixed.safetensors', tiny_model.state_dict(), full_config)
    with pytest.raises(CheckpointError, match='do not fit the model config'):
        load_checkpoint(path)


def test_foreign_safetensors_file_is_not_mistaken_for_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / 'foreign.safetensors'
    save_file({'w': torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match='not an m2a checkpoint'):
        load_checkpoint(path)


def test_checkpoint_round_trip_keeps_config_and_metadata(tiny_model, tiny_config, tmp_path):
    path = save_checkpoint(
        tmp_path / 'a.safetensors',
        tiny_model.state_dict(),
        tiny_config,
        extra_metadata={'git_revision': 'abc123'},
    )
    contents = read_checkpoint(path)
    assert contents.config == tiny_config
    assert contents.metadata['git_revision'] == 'abc123'
    model, _ = load_checkpoint(path)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), tiny_model.state_dict().values(), strict=True)
    )


def test_saving_the_same_weights_twice_gives_the_same_bytes(tiny_model, tiny_config, tmp_path):
    """safetensors writes its metadata in hash-map order; ours is sorted, so a checkpoint's
    sha256 (an engine key's weights hash) depends only on its contents."""
    metadata = {f'field_{index}': str(index) for index in range(12)}
    paths = [
        save_checkpoint(
            tmp_path / f'{name}.safetensors',
            tiny_model.state_dict(),
            tiny_config,
            extra_metadata=metadata,
        )
        for name in ('first', 'second')
    ]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    data = paths[0].read_bytes()
    length = int.from_bytes(data[:8], 'little')
    assert length % 8 == 0
    header = json.loads(data[8 : 8 + length])
    assert list(header['__metadata__']) == sorted(header['__metadata__'])
    assert read_checkpoint(paths[0]).metadata['field_11'] == '11'


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / 'ckpt.bin'
    path.write_bytes(b'old and good')

    def failing_write(tmp: Path) -> None:
        tmp.write_bytes(b'half')
        raise KeyboardInterrupt  # e.g. killed mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, failing_write)
    assert path.read_bytes() == b'old and good'
    assert [p.name for p in tmp_path.iterdir()] == ['ckpt.bin']


def test_safetensors_header_length_with_a_pickle_like_first_byte_loads(
    tiny_model, tiny_config, tmp_path
):
    """The header length's low byte may be 0x80 (the pickle PROTO opcode): still safetensors."""
    for padding in range(256):
        path = save_checkpoint(
            tmp_path / 'padded.safetensors',
            tiny_model.state_dict(),
            tiny_config,
            extra_metadata={'padding': 'x' * padding},
        )
        if path.read_bytes()[0] == 0x80:
            break
    else:  # pragma: no cover - 256 consecutive lengths always hit every low byte
        pytest.fail('could not produce a header length with low byte 0x80')
    model, _ = load_checkpoint(path)
    loaded, saved = model.state_dict(), tiny_model.state_dict()
    assert loaded.keys() == saved.keys()
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name
