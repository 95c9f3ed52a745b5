"""Parameter and multiply-add cost of a config (model/cost.py), as m2a-bench prints it."""

from __future__ import annotations

import dataclasses

import pytest

from m2a_perception.model.cost import format_model_cost, mask_embed_macs_per_query, model_cost


def test_mlp_and_kan_heads_cost_what_their_layers_say(tiny_config):
    size = (64, 128)
    mlp = model_cost(tiny_config, size)
    dim, queries, predictions = 32, 12, 4  # tiny: hidden 32, 12 queries, 3 layers + 1
    assert mlp.mask_embed == 'mlp'
    assert mlp.mask_embed_parameters == 3 * (dim * dim + dim)
    assert mask_embed_macs_per_query(tiny_config) == 3 * dim * dim
    assert mlp.mask_embed_gmacs == pytest.approx(predictions * queries * 3 * dim * dim / 1e9)
    assert mlp.trainable_parameters < mlp.parameters  # the backbone is frozen

    decoder = dataclasses.replace(tiny_config.transformer_decoder, mask_embed='kan')
    kan = model_cost(dataclasses.replace(tiny_config, transformer_decoder=decoder), size)
    # KANLinear: base O·I + spline O·I·(5 + 3) + scaler O·I, no bias.
    assert kan.mask_embed_parameters == 3 * dim * dim * 10
    assert kan.parameters - mlp.parameters == kan.mask_embed_parameters - mlp.mask_embed_parameters
    # Everything but the head is the same network, so the counted multiply-adds differ by
    # exactly the analytic head difference: O·I·(1 + 8) against O·I per layer.
    head_delta = predictions * queries * 3 * dim * dim * (9 - 1) / 1e9
    assert kan.gmacs - mlp.gmacs == pytest.approx(head_delta, rel=1e-9)
    assert kan.mask_embed_gmacs - mlp.mask_embed_gmacs == pytest.approx(head_delta, rel=1e-9)
    line = format_model_cost(kan.as_dict())
    assert line.startswith('model cost at 64x128: ') and 'mask_embed kan: 0.031 M params' in line


def test_full_config_cost_matches_the_published_parameter_count(full_config):
    cost = model_cost(full_config, (512, 1024))
    # 46.56 M parameters (see transformer_decoder.py), of which 23.5 M frozen ResNet-50.
    assert round(cost.parameters / 1e6, 2) == 46.56
    assert cost.mask_embed_parameters == 3 * (256 * 256 + 256)
