"""Segmenter end to end on the tiny model, and the m2a-infer command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from m2a_perception.cli import infer
from m2a_perception.pipeline import Segmenter
from m2a_perception.postprocess import PostprocessConfig
from m2a_perception.types import NetworkOutput, SegmentKind
from m2a_perception.weights import save_checkpoint
from tests.postprocess.postprocess_builders import check_segments_match_map

SOURCE = (45, 70)


@pytest.fixture
def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (*SOURCE, 3), dtype=np.uint8)


def test_segmenter_outputs_at_source_resolution(tiny_model, tiny_config, frame):
    segmenter = Segmenter.from_model(tiny_model, tiny_config)
    output = segmenter(frame)
    assert output.output_size == output.source_size == SOURCE
    assert output.anomaly_map.shape == SOURCE
    assert output.anomaly_map.dtype == torch.float32
    assert torch.isfinite(output.anomaly_map).all()
    assert output.semantic.dtype == torch.uint8
    assert int(output.semantic.max()) <= output.unknown_id == 19
    assert output.panoptic.dtype == torch.int32
    check_segments_match_map(output)


def test_segmenter_with_flip_calls_the_backend_twice(tiny_model, tiny_config, frame):
    plain = Segmenter.from_model(tiny_model, tiny_config)
    calls = []

    def backend(images: torch.Tensor) -> NetworkOutput:
        calls.append(images.shape)
        return plain.backend(images)

    config = PostprocessConfig(flip=True, output_resolution='model')
    segmenter = Segmenter(backend, tiny_config.preprocess, config)
    output = segmenter(frame)
    assert len(calls) == 2
    # tiny config: short side 256, so 45x70 becomes 256x398.
    assert output.output_size == (256, 398)
    assert output.source_size == SOURCE


def test_stages_compose_to_the_same_result(tiny_model, tiny_config, frame):
    segmenter = Segmenter.from_model(tiny_model, tiny_config)
    images, record = segmenter.preprocess(frame)
    prediction = segmenter.infer(images, record)
    staged = segmenter.postprocess(prediction, record)
    torch.testing.assert_close(staged.anomaly_map, segmenter(frame).anomaly_map)


def test_infer_cli_writes_heatmap_overlays_and_segments(tmp_path, tiny_model, tiny_config, frame):
    checkpoint = save_checkpoint(
        tmp_path / 'tiny.safetensors', tiny_model.state_dict(), tiny_config
    )
    image_path = tmp_path / 'frame.png'
    Image.fromarray(frame).save(image_path)
    out_dir = tmp_path / 'out'
    argv = [
        str(image_path),
        '--checkpoint',
        str(checkpoint),
        '--out',
        str(out_dir),
        '--device',
        'cpu',
    ]
    assert infer.main(argv) == 0
    for name in ('anomaly_heatmap.png', 'semantic_overlay.png', 'panoptic_overlay.png'):
        with Image.open(out_dir / name) as picture:
            assert picture.mode in ('RGB', 'RGBA')
            if name != 'anomaly_heatmap.png':
                assert picture.size == (SOURCE[1], SOURCE[0])
    segments = json.loads((out_dir / 'segments.json').read_text())
    assert isinstance(segments, list)
    kinds = {kind.value for kind in SegmentKind}
    for segment in segments:
        assert set(segment) >= {'id', 'kind', 'class_id', 'class_score', 'area', 'bbox'}
        assert segment['kind'] in kinds
        x0, y0, x1, y1 = segment['bbox']
        assert 0 <= x0 < x1 <= SOURCE[1]
        assert 0 <= y0 < y1 <= SOURCE[0]


def test_infer_cli_reports_a_bad_checkpoint(tmp_path, frame, capsys):
    image_path = tmp_path / 'frame.png'
    Image.fromarray(frame).save(image_path)
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'not a checkpoint at all')
    argv = [str(image_path), '--checkpoint', str(bad), '--out', str(tmp_path / 'out')]
    assert infer.main(argv) == 2
    assert 'error:' in capsys.readouterr().err
