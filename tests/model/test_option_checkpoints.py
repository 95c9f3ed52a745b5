"""Checkpoints of every architecture option load through the runtime loader the node and
m2a-eval use, with no option-specific code: the checkpoint's own model config decides."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from m2a_perception.config import load_model_config
from m2a_perception.model import build_model
from m2a_perception.pipeline import Segmenter
from m2a_perception.postprocess import PostprocessConfig
from m2a_perception.runtime.loader import BackendSpec, build_segmenter
from m2a_perception.weights.checkpoint import save_checkpoint


def _kan_tiny():
    config = load_model_config('tiny')
    decoder = dataclasses.replace(config.transformer_decoder, mask_embed='kan')
    return dataclasses.replace(config, name='tiny_kan', transformer_decoder=decoder)


@pytest.mark.parametrize(
    'make_config',
    [
        _kan_tiny,
        lambda: load_model_config('tiny_dinov2'),
        lambda: load_model_config('tiny_centroid'),
    ],
)
def test_option_checkpoint_runs_through_the_node_loader(make_config, tmp_path):
    config = make_config()
    torch.manual_seed(0)
    model = build_model(config).eval()
    path = save_checkpoint(tmp_path / 'option.safetensors', model.state_dict(), config)
    segmenter, loaded_config = build_segmenter(
        BackendSpec(kind='torch', checkpoint=str(path)), PostprocessConfig()
    )
    assert loaded_config == config
    image = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    output = segmenter(image)
    reference = Segmenter.from_model(model, config, 'cpu', PostprocessConfig())(image)
    assert output.anomaly_map.shape == (100, 150)
    assert torch.equal(output.anomaly_map, reference.anomaly_map)
    assert torch.equal(output.semantic, reference.semantic)


def test_centroid_checkpoint_splits_unknowns_through_the_node_loader(tmp_path):
    """`mining_split: centroid_head` runs on a checkpoint with the head; on one without it the
    loader refuses with one sentence naming the fix."""
    from m2a_perception.runtime.loader import BackendError

    config = load_model_config('tiny_centroid')
    torch.manual_seed(0)
    model = build_model(config).eval()
    path = save_checkpoint(tmp_path / 'centroid.safetensors', model.state_dict(), config)
    postprocess = PostprocessConfig(mining_split='centroid_head', mining_threshold=0.0)
    segmenter, _ = build_segmenter(BackendSpec(kind='torch', checkpoint=str(path)), postprocess)
    image = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    output = segmenter(image)
    reference = Segmenter.from_model(model, config, 'cpu', postprocess)(image)
    assert output.segments == reference.segments
    assert torch.equal(output.panoptic, reference.panoptic)

    plain = load_model_config('tiny')
    plain_path = save_checkpoint(
        tmp_path / 'plain.safetensors', build_model(plain).state_dict(), plain
    )
    with pytest.raises(BackendError, match="mining_split 'centroid_head' needs a model with"):
        build_segmenter(BackendSpec(kind='torch', checkpoint=str(plain_path)), postprocess)
