"""`instance_head: none | centroid` (seed 004 Section 3.3.1): config, shapes, state dict."""

from __future__ import annotations

import math

import pytest
import torch

from m2a_perception.config import InstanceHeadConfig, ModelConfig, load_model_config
from m2a_perception.model import build_model
from m2a_perception.model.instance_head import centroid_positional_embedding
from m2a_perception.types import (
    InstanceNetworkOutput,
    InstanceTrainingOutput,
    NetworkOutput,
    TrainingOutput,
    instance_embedding_of,
    network_output,
)


def test_positional_embedding_is_eq3_for_u_then_v():
    coords = torch.tensor([[0.5, -0.25]])
    code = centroid_positional_embedding(coords, harmonics=2)
    expected = [
        math.sin(math.pi * 0.5),
        math.cos(math.pi * 0.5),
        math.sin(2 * math.pi * 0.5),
        math.cos(2 * math.pi * 0.5),
        math.sin(-math.pi * 0.25),
        math.cos(-math.pi * 0.25),
        math.sin(-2 * math.pi * 0.25),
        math.cos(-2 * math.pi * 0.25),
    ]
    torch.testing.assert_close(code, torch.tensor([expected]), rtol=0, atol=1e-6)


def test_default_config_has_no_head_and_the_official_state_dict():
    config = load_model_config('tiny')
    assert config.instance_head == InstanceHeadConfig(kind='none')
    torch.manual_seed(0)
    model = build_model(config)
    assert not any('instance_head' in key for key in model.state_dict())
    assert not model.sem_seg_head.has_instance_head


def test_head_adds_only_its_own_keys_and_leaves_the_other_weights_unchanged():
    plain, centroid = load_model_config('tiny'), load_model_config('tiny_centroid')
    torch.manual_seed(0)
    reference = build_model(plain).state_dict()
    torch.manual_seed(0)
    with_head = build_model(centroid).state_dict()
    extra = sorted(set(with_head) - set(reference))
    assert set(reference) <= set(with_head)
    assert extra == sorted(
        [
            f'sem_seg_head.instance_head.{block}.{name}'
            for block in ('reduce', 'convs.0', 'convs.1')
            for name in ('weight', 'bias', 'norm.weight', 'norm.bias')
        ]
        + [
            'sem_seg_head.instance_head.projection.weight',
            'sem_seg_head.instance_head.projection.bias',
        ]
    )
    # Built last: the default model's random draws (hence its weights) are the same.
    assert all(torch.equal(reference[key], with_head[key]) for key in reference)
    # mask_dim 32 -> hidden_dim 16 (1×1) -> two 3×3 -> 4L = 16 channels.
    shapes = {
        key.removeprefix('sem_seg_head.instance_head.'): tuple(with_head[key].shape)
        for key in extra
        if key.endswith('.weight') and 'norm' not in key
    }
    assert shapes == {
        'reduce.weight': (16, 32, 1, 1),
        'convs.0.weight': (16, 16, 3, 3),
        'convs.1.weight': (16, 16, 3, 3),
        'projection.weight': (16, 16, 1, 1),
    }


def test_outputs_with_and_without_the_head():
    images = torch.randn(1, 3, 64, 96)
    torch.manual_seed(0)
    plain = build_model(load_model_config('tiny')).eval()
    torch.manual_seed(0)
    model = build_model(load_model_config('tiny_centroid')).eval()
    with torch.no_grad():
        reference, outputs = plain(images), model(images)
    # Without the head: the two-field output of the official model, unchanged.
    assert type(reference) is NetworkOutput
    assert type(outputs) is InstanceNetworkOutput
    assert outputs._fields == ('class_logits', 'mask_logits', 'instance_embedding')
    assert tuple(outputs.instance_embedding.shape) == (1, 16, 16, 24)
    # The head reads the mask features and changes nothing else.
    assert torch.equal(outputs.class_logits, reference.class_logits)
    assert torch.equal(outputs.mask_logits, reference.mask_logits)
    assert instance_embedding_of(reference) is None
    assert instance_embedding_of(outputs) is outputs.instance_embedding

    plain.train()
    model.train()
    assert type(plain(images)) is TrainingOutput
    training = model(images)
    assert type(training) is InstanceTrainingOutput
    # The same function in both modes (GroupNorm has no running statistics).
    torch.testing.assert_close(training.instance_embedding, outputs.instance_embedding)


def test_network_output_is_typed_by_the_number_of_graph_outputs():
    tensors = [torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)]
    assert type(network_output(*tensors[:2])) is NetworkOutput
    assert type(network_output(*tensors)) is InstanceNetworkOutput
    with pytest.raises(ValueError, match='2 or 3 outputs, got 1'):
        network_output(tensors[0])


@pytest.mark.parametrize(
    ('section', 'message'),
    [
        ({'kind': 'centroids'}, 'instance_head.kind must be one of'),
        ({'kind': 'centroid', 'harmonics': 0}, 'harmonics must be >= 1'),
        ({'kind': 'centroid', 'harmonics': 99}, 'outside the allowed range'),
        ({'kind': 'centroid', 'num_convs': 1.5}, 'must be an integer'),
        ({'kind': 'centroid', 'hidden_dim': 12}, 'divisible by pixel_decoder.num_groups'),
    ],
)
def test_bad_instance_head_config_is_one_sentence(section, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict({'instance_head': section})


def test_unknown_instance_head_key_is_an_error():
    with pytest.raises(ValueError, match='unknown keys in instance_head'):
        ModelConfig.from_dict({'instance_head': {'kind': 'centroid', 'harmonic': 4}})


def test_centroid_configs_round_trip_through_to_dict():
    for name in ('tiny_centroid', 'demo_centroid'):
        config = load_model_config(name)
        assert config.instance_head.kind == 'centroid'
        assert config.instance_head.embedding_dim == 16
        assert ModelConfig.from_dict(config.to_dict()) == config
