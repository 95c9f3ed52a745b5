"""Mask2Anomaly network: official structure, parameter counts, shapes, numerics of the blocks."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from m2a_perception.config import ModelConfig, load_model_config
from m2a_perception.model import build_model
from m2a_perception.model.attention import MultiheadAttention, unblock_full_rows
from m2a_perception.model.ms_deform_attn import MSDeformAttn
from m2a_perception.model.position_encoding import sine_position_encoding
from m2a_perception.types import NetworkOutput, TrainingOutput
from tests.model.official_keys import official_checkpoint_keys, official_model_keys


@pytest.fixture(scope='module')
def full_model():
    torch.manual_seed(0)
    return build_model(load_model_config('cityscapes_r50_gma')).eval()


def test_full_config_matches_official_parameter_counts(full_model):
    parameters = list(full_model.parameters())
    total = sum(p.numel() for p in parameters)
    frozen = sum(p.numel() for p in parameters if not p.requires_grad)
    assert round(total / 1e6, 2) == 46.56
    assert round(frozen / 1e6, 1) == 23.5
    # Every frozen parameter is the backbone, and the whole backbone is frozen (FREEZE_AT 5).
    named = dict(full_model.named_parameters())
    assert {k for k, p in named.items() if not p.requires_grad} == {
        k for k in named if k.startswith('backbone.')
    }


def test_full_config_has_exactly_the_official_keys_and_shapes(full_model):
    state = full_model.state_dict()
    expected = official_model_keys()
    assert set(state) == set(expected)
    assert len(official_checkpoint_keys()) == 612
    wrong = {
        k: (tuple(v.shape), expected[k]) for k, v in state.items() if tuple(v.shape) != expected[k]
    }
    assert wrong == {}


def test_tiny_config_differs_from_full_only_in_sizes():
    full, tiny = load_model_config('cityscapes_r50_gma'), load_model_config('tiny')
    assert [f.name for f in dataclasses.fields(full)] == [f.name for f in dataclasses.fields(tiny)]
    tiny_model, full_model = build_model(tiny), build_model(full)
    module_types = lambda m: sorted({type(x).__name__ for x in m.modules()})  # noqa: E731
    assert module_types(tiny_model) == module_types(full_model)


@pytest.mark.parametrize(
    ('name', 'size'), [('tiny', (96, 160)), ('cityscapes_r50_gma', (64, 128))]
)
def test_output_shapes_eval_and_training(name, size):
    config = load_model_config(name)
    model = build_model(config).eval()
    queries, classes = config.transformer_decoder.num_queries, config.num_classes + 1
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        outputs = model(images)
    assert type(outputs) is NetworkOutput
    assert outputs._fields == ('class_logits', 'mask_logits')
    assert outputs.class_logits.shape == (2, queries, classes)
    assert outputs.mask_logits.shape == (2, queries, size[0] // 4, size[1] // 4)
    assert torch.isfinite(outputs.class_logits).all() and torch.isfinite(outputs.mask_logits).all()

    model.train()
    training = model(images)
    assert type(training) is TrainingOutput
    assert training._fields == (
        'class_logits',
        'mask_logits',
        'aux_class_logits',
        'aux_mask_logits',
    )
    layers = config.transformer_decoder.num_layers
    assert training.class_logits.shape == (2, queries, classes)
    assert training.mask_logits.shape == (2, queries, size[0] // 4, size[1] // 4)
    assert training.aux_class_logits.shape == (layers, 2, queries, classes)
    assert training.aux_mask_logits.shape == (layers, 2, queries, size[0] // 4, size[1] // 4)


def test_eval_output_equals_training_output_for_the_same_weights(tiny_model):
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        evaluated = tiny_model(images)
        tiny_model.train()
        trained = tiny_model(images)
    tiny_model.eval()
    assert torch.equal(evaluated.class_logits, trained.class_logits)
    assert torch.equal(evaluated.mask_logits, trained.mask_logits)


def test_input_must_be_padded_to_32(tiny_model):
    with pytest.raises(ValueError, match='multiple of 32'):
        tiny_model(torch.zeros(1, 3, 100, 128))


def test_unknown_config_key_is_an_error():
    with pytest.raises(ValueError, match='unknown keys'):
        ModelConfig.from_dict({'backbone': {'blocks_per_stage': [1, 1, 1, 1], 'depht': 3}})


def test_unblock_full_rows_only_touches_fully_blocked_rows():
    blocked = torch.tensor([[True, True, True], [True, False, True], [False, False, False]])
    expected = torch.tensor([[False, False, False], [True, False, True], [False, False, False]])
    assert torch.equal(unblock_full_rows(blocked), expected)


def test_attention_matches_reference_and_never_produces_nan():
    torch.manual_seed(0)
    attention = MultiheadAttention(16, 4)
    reference = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    reference.load_state_dict(attention.state_dict())
    query, key = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    blocked = torch.rand(2, 4, 5, 7) > 0.5
    blocked[:, :, 0] = True  # a fully blocked row: the guard must rescue it
    guarded = unblock_full_rows(blocked)
    ours = attention(query, key, key, guarded)
    theirs, _ = reference(query, key, key, attn_mask=guarded.flatten(0, 1))
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_sine_position_encoding_matches_formula():
    height, width, feats = 3, 4, 8
    pos = sine_position_encoding(height, width, feats).numpy()
    scale, eps = 2 * math.pi, 1e-6
    for i in range(height):
        for j in range(width):
            y = (i + 1) / (height + eps) * scale
            x = (j + 1) / (width + eps) * scale
            for k in range(feats):
                dim_t = 10000 ** (2 * (k // 2) / feats)
                fn = math.sin if k % 2 == 0 else math.cos
                assert pos[k, i, j] == pytest.approx(fn(y / dim_t), abs=1e-5)
                assert pos[feats + k, i, j] == pytest.approx(fn(x / dim_t), abs=1e-5)


def test_deformable_attention_with_zero_offsets_reads_the_reference_pixel():
    """One level, one point, zero offsets: sampling at pixel centres returns the values exactly."""
    torch.manual_seed(0)
    attention = MSDeformAttn(d_model=8, num_levels=1, num_heads=2, num_points=1)
    torch.nn.init.zeros_(attention.sampling_offsets.bias)
    height, width = 3, 5
    values = torch.randn(1, height * width, 8)
    ys, xs = torch.meshgrid(
        (torch.arange(height) + 0.5) / height, (torch.arange(width) + 0.5) / width, indexing='ij'
    )
    reference = torch.stack((xs.flatten(), ys.flatten()), -1)[None, :, None, :]
    output = attention(torch.randn(1, height * width, 8), reference, values, [(height, width)])
    expected = attention.output_proj(attention.value_proj(values))
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)


def test_deformable_attention_samples_bilinearly_between_pixels():
    """Offset of half a pixel to the right: the result is the mean of two neighbouring pixels."""
    attention = MSDeformAttn(d_model=2, num_levels=1, num_heads=1, num_points=1)
    with torch.no_grad():
        attention.sampling_offsets.bias.copy_(torch.tensor([0.5, 0.0]))
        attention.value_proj.weight.copy_(torch.eye(2))
        attention.value_proj.bias.zero_()
        attention.output_proj.weight.copy_(torch.eye(2))
        attention.output_proj.bias.zero_()
    values = torch.tensor([[[1.0, 10.0], [3.0, 30.0]]])  # a 1x2 map
    reference = torch.tensor([[[[0.25, 0.5]]]])  # centre of the left pixel
    output = attention(torch.zeros(1, 1, 2), reference, values, [(1, 2)])
    np.testing.assert_allclose(output.detach().numpy()[0, 0], [2.0, 20.0], rtol=1e-6)
