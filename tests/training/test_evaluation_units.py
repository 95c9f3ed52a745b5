"""Building blocks of m2a-eval: backend dispatch and static-shape padding, protocol parsing,
Cityscapes panoptic targets, sharding, per-frame errors and table formatting."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from m2a_perception.deploy import tensorrt_backend
from m2a_perception.inference import StaticShapeBackend
from m2a_perception.metrics import PanopticSegment
from m2a_perception.postprocess import PostprocessConfig
from m2a_perception.runtime.loader import BackendError, BackendSpec, engine_kind, load_backend
from m2a_perception.types import NetworkOutput
from m2a_training.cli.evaluate import build_parser, settings_from_args
from m2a_training.distributed import DistributedContext, shard_indices
from m2a_training.evaluate import parse_protocols, postprocess_config
from m2a_training.evaluation.datasets import cityscapes_panoptic_target, parse_dataset_spec
from m2a_training.evaluation.report import Table, percent
from m2a_training.evaluation.runner import (
    FrameStats,
    check_class_ids,
    frame_anomaly_fpr,
    open_set_binary_label,
)
from m2a_training.evaluation.runner import _frame_error as frame_error


class _FixedShapeEngine:
    """Records its input; mask logits hold the input's first channel, subsampled by 4."""

    name = 'fake'
    device = torch.device('cpu')
    input_shape = (1, 3, 64, 96)

    def __init__(self) -> None:
        self.seen: list[tuple[int, ...]] = []

    def __call__(self, images: torch.Tensor) -> NetworkOutput:
        if tuple(images.shape) != self.input_shape:
            raise ValueError('wrong shape')
        self.seen.append(tuple(images.shape))
        return NetworkOutput(torch.zeros(1, 5, 20), images[:, :1, ::4, ::4].repeat(1, 5, 1, 1))


def test_static_shape_backend_pads_and_crops() -> None:
    engine = _FixedShapeEngine()
    backend = StaticShapeBackend(engine, engine.input_shape)
    images = torch.arange(32 * 64, dtype=torch.float32).reshape(1, 1, 32, 64).repeat(1, 3, 1, 1)
    outputs = backend(images)
    assert engine.seen == [(1, 3, 64, 96)]
    assert outputs.class_logits.shape == (1, 5, 20)
    assert outputs.mask_logits.shape == (1, 5, 8, 16)  # cropped back to the input's 1/4
    torch.testing.assert_close(outputs.mask_logits[0, 0], images[0, 0, ::4, ::4])
    full = torch.zeros(1, 3, 64, 96)
    assert backend(full).mask_logits.shape == (1, 5, 16, 24)
    with pytest.raises(ValueError, match=r'frame is 96x96 but the engine was built for 64x96'):
        backend(torch.zeros(1, 3, 96, 96))
    with pytest.raises(ValueError, match='batches of 1'):
        backend(torch.zeros(2, 3, 32, 32))


def test_engine_dispatch_and_clear_errors(tmp_path: Path, monkeypatch) -> None:
    assert engine_kind(Path('m.onnx')) == 'onnxruntime'
    assert engine_kind(Path('m.PLAN')) == 'tensorrt-onnx'
    assert engine_kind(Path('m.ep')) == 'tensorrt'
    with pytest.raises(ValueError, match=r'cannot tell the backend of .m\.pt'):
        engine_kind(Path('m.pt'))
    with pytest.raises(BackendError, match=r'model\.checkpoint is empty'):
        load_backend(BackendSpec(kind='onnxruntime', engine_path=str(tmp_path / 'x.onnx')))
    checkpoint = tmp_path / 'tiny.safetensors'
    _tiny_checkpoint(checkpoint)
    with pytest.raises(BackendError, match='onnxruntime engine not found'):
        load_backend(
            BackendSpec('onnxruntime', str(checkpoint), engine_path=str(tmp_path / 'x.onnx'))
        )
    engine = tmp_path / 'model.plan'
    engine.write_bytes(b'not an engine')
    with pytest.raises(BackendError, match='cannot be checked against the checkpoint'):
        load_backend(BackendSpec('tensorrt-onnx', str(checkpoint), engine_path=str(engine)))
    with pytest.raises(BackendError, match='TensorRT engines run on CUDA devices'):
        load_backend(
            BackendSpec(
                'tensorrt-onnx',
                str(checkpoint),
                engine_path=str(engine),
                engine_policy='build_if_missing',
            )
        )
    # With CUDA present but no TensorRT installed (as here), the error names the package.
    monkeypatch.setattr(tensorrt_backend.torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    (tmp_path / 'model.ep').write_bytes(b'not an engine')
    for kind, module in (('tensorrt-onnx', "'tensorrt'"), ('tensorrt', "'torch_tensorrt'")):
        engine = tmp_path / ('model.plan' if kind == 'tensorrt-onnx' else 'model.ep')
        with pytest.raises(BackendError, match=f'needs the Python module {re.escape(module)}'):
            load_backend(
                BackendSpec(
                    kind,
                    str(checkpoint),
                    engine_path=str(engine),
                    device='cuda',
                    engine_policy='build_if_missing',
                )
            )


def _tiny_checkpoint(path: Path) -> None:
    from m2a_perception.config import load_model_config
    from m2a_perception.model import build_model
    from m2a_perception.weights import save_checkpoint

    config = load_model_config('tiny')
    save_checkpoint(path, build_model(config).state_dict(), config)


def test_parse_protocols_global_then_per_dataset() -> None:
    names = ['smiyc_ra21', 'fs_static']
    # the default is the leaderboard's: SMIYC's binned PixBinaryClass on the SMIYC tracks
    assert {k: p.name for k, p in parse_protocols([], names).items()} == {
        'smiyc_ra21': 'smiyc_binned',
        'fs_static': 'smiyc',
    }
    chosen = parse_protocols(['mask2anomaly', 'fs_static=fishyscapes'], names)
    assert chosen['smiyc_ra21'].name == 'mask2anomaly'
    assert chosen['fs_static'].name == 'fishyscapes'
    with pytest.raises(ValueError, match='not evaluated'):
        parse_protocols(['road_anomaly=smiyc'], names)


def test_parse_dataset_spec() -> None:
    assert parse_dataset_spec('cityscapes=/data/cs=1') == ('cityscapes', Path('/data/cs=1'))
    with pytest.raises(ValueError, match='NAME=PATH'):
        parse_dataset_spec('cityscapes')
    with pytest.raises(ValueError, match="unknown dataset 'cs'"):
        parse_dataset_spec('cs=/x')


def test_cityscapes_panoptic_target_known_answer() -> None:
    # trainIds: road 0 (stuff), car 13 (thing), 255 void. Instance ids: road label id 7,
    # car instances 26000 and 26001, a car group without instance id (label id 26 = crowd).
    semantic = np.array([[0, 0, 13, 13], [13, 13, 13, 255], [0, 13, 13, 255]], np.uint8)
    instance = np.array([[7, 7, 26000, 26000], [26001, 26001, 26, 0], [7, 26, 26, 4]], np.int32)
    ids, segments = cityscapes_panoptic_target(semantic, instance, frozenset(range(11, 19)))
    expected_ids = np.array([[7, 7, 26000, 26000], [26001, 26001, 26, 0], [7, 26, 26, 0]])
    np.testing.assert_array_equal(ids, expected_ids)
    assert segments == (
        PanopticSegment(7, 0, is_crowd=False),
        PanopticSegment(26, 13, is_crowd=True),
        PanopticSegment(26000, 13, is_crowd=False),
        PanopticSegment(26001, 13, is_crowd=False),
    )


def test_shards_are_strided_and_cover_everything() -> None:
    shards = [shard_indices(7, DistributedContext(rank=r, world_size=3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]


def test_frame_helpers_known_answers() -> None:
    score = np.array([[0.9, 0.2, 0.5], [0.7, 0.1, 0.5]], np.float32)
    label = np.array([[1, 0, 0], [255, 0, 0]], np.uint8)
    # Inliers 0.2, 0.5, 0.1, 0.5: two of four are >= 0.5.
    assert frame_anomaly_fpr(score, label, 0.5, 'float16') == 0.5
    assert frame_anomaly_fpr(score, np.full_like(label, 1), 0.5, 'float16') is None
    assert frame_anomaly_fpr(score, label, math.nan, 'float16') is None
    open_label = np.array([[0, 12, 255], [3, 12, 11]], np.uint8)
    np.testing.assert_array_equal(open_set_binary_label(open_label, 12), [[0, 1, 255], [0, 1, 0]])
    assert frame_error(FrameStats(0, 'a', anomaly_pixels=5, ap=0.25)) == 0.75
    assert frame_error(FrameStats(0, 'a', anomaly_pixels=0, fpr_at_tpr95_threshold=0.1)) == 0.1
    assert frame_error(FrameStats(0, 'a', miou=0.6)) == pytest.approx(0.4)
    assert frame_error(FrameStats(0, 'a', pq=0.3)) == pytest.approx(0.7)


def test_table_formatting() -> None:
    assert percent(0.123456) == '12.35'
    assert percent(float('nan')) == '-'
    assert percent(None) == '-'
    table = Table('t', 'Title', ('A', 'B'), (('x', '1.00'),))
    assert table.markdown() == '### Title\n\n| A | B |\n|---|---|\n| x | 1.00 |'


def test_class_ids_are_checked_before_the_first_frame() -> None:
    check_class_ids(PostprocessConfig(), 19, 'cityscapes')
    with pytest.raises(ValueError, match='use --refinement off'):
        check_class_ids(PostprocessConfig(), 5, 'synthetic')
    check_class_ids(PostprocessConfig(refinement='off', panoptic=False), 5, 'synthetic')
    with pytest.raises(ValueError, match='use --no-panoptic'):
        check_class_ids(PostprocessConfig(refinement='off'), 5, 'cityscapes')


def test_scoring_protocol_and_single_switches_from_the_command_line() -> None:
    def config_of(*extra: str) -> PostprocessConfig:
        args = build_parser().parse_args(
            ['--checkpoint', 'x', '--out', 'o', '--dataset', 'synthetic=w', *extra]
        )
        return postprocess_config(settings_from_args(args))

    assert config_of() == PostprocessConfig.for_protocol('official')
    assert config_of('--protocol', 'node') == PostprocessConfig.for_protocol('node')
    alone = config_of('--protocol', 'node', '--scoring-resolution', 'source')
    assert alone == PostprocessConfig.for_protocol('node', scoring_resolution='source')
    assert config_of('--no-flip', '--refinement-min-queries', '1') == (
        PostprocessConfig.for_protocol('official', flip=False, refinement_min_queries=1)
    )
    # Scoring and pixel protocols share the flag without interfering.
    names = ['synthetic']
    mixed = ['node', 'mask2anomaly']
    assert parse_protocols(mixed, names)['synthetic'].name == 'mask2anomaly'
    assert config_of('--protocol', 'node', '--protocol', 'mask2anomaly').flip is False
    # The unknown-instance split of every model option (issue 17), default the paper's.
    assert config_of().mining_split == 'components'
    assert config_of('--mining-split', 'centroid_head') == (
        PostprocessConfig.for_protocol('official', mining_split='centroid_head')
    )
