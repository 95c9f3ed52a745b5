"""Engine building for configure: clear errors, never random or untrained weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2a_perception.model import build_model
from m2a_perception.ros.params import settings_from_parameters
from m2a_perception.runtime.loader import BackendError as EngineError
from m2a_perception.runtime.loader import build_segmenter, warm_up
from m2a_perception.weights import save_checkpoint

pytestmark = pytest.mark.ros


def engine_for(**values):
    settings = settings_from_parameters({f'model.{k}': v for k, v in values.items()})
    return settings.engine.spec(), settings.postprocess


def test_valid_checkpoint_builds_and_warms_up(tiny_checkpoint):
    segmenter, config = build_segmenter(*engine_for(checkpoint=str(tiny_checkpoint)))
    assert config.name == 'tiny'
    warm_up(segmenter, config, iterations=1)
    result = segmenter(np.zeros((40, 60, 3), np.uint8))
    # The default output resolution is the model's: the network input without padding.
    assert (
        tuple(result.anomaly_map.shape) == segmenter.preprocessor.record_for(40, 60).resized_size
    )
    assert result.source_size == (40, 60)


@pytest.mark.parametrize(
    ('values', 'message'),
    [
        ({'checkpoint': ''}, 'model.checkpoint is empty'),
        ({'checkpoint': '/nonexistent/m2a.safetensors'}, 'checkpoint file not found'),
    ],
)
def test_missing_checkpoint(values, message):
    with pytest.raises(EngineError, match=message):
        build_segmenter(*engine_for(**values))


def test_untrained_checkpoint_is_refused(tmp_path, tiny_config):
    path = tmp_path / 'init.safetensors'
    save_checkpoint(
        path, build_model(tiny_config).state_dict(), tiny_config, weights_state='backbone_only'
    )
    with pytest.raises(EngineError, match='refusing to run inference with untrained weights'):
        build_segmenter(*engine_for(checkpoint=str(path)))


def test_corrupt_checkpoint(tmp_path):
    path = tmp_path / 'broken.safetensors'
    path.write_bytes(b'{"not": "safetensors"}' * 4)
    with pytest.raises(EngineError, match='invalid checkpoint'):
        build_segmenter(*engine_for(checkpoint=str(path)))


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the error without CUDA')
def test_cuda_without_gpu(tiny_checkpoint):
    with pytest.raises(EngineError, match='CUDA is not available'):
        build_segmenter(*engine_for(checkpoint=str(tiny_checkpoint), device='cuda'))


def test_tensorrt_needs_an_engine(tiny_checkpoint, tmp_path):
    with pytest.raises(EngineError, match='engine_path is empty'):
        build_segmenter(*engine_for(checkpoint=str(tiny_checkpoint), backend='tensorrt'))
    with pytest.raises(EngineError, match='TensorRT engine not found'):
        build_segmenter(
            *engine_for(
                checkpoint=str(tiny_checkpoint),
                backend='tensorrt',
                engine_path=str(tmp_path / 'x.engine'),
            )
        )
