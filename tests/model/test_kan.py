"""KAN layers (model/kan.py) and `mask_embed: kan`: known answers, config, checkpoints."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.interpolate import BSpline

from m2a_perception.config import ModelConfig, TransformerDecoderConfig
from m2a_perception.model import build_model
from m2a_perception.model.kan import (
    KAN,
    KANLinear,
    b_spline_basis,
    kan_linear_cost,
    kan_regularization_loss,
    uniform_knots,
)
from m2a_perception.model.transformer_decoder import MLP
from m2a_perception.weights.checkpoint import load_checkpoint, save_checkpoint


def kan_config(config: ModelConfig, **kan_fields) -> ModelConfig:
    decoder = dataclasses.replace(config.transformer_decoder, mask_embed='kan', **kan_fields)
    return dataclasses.replace(config, name=f'{config.name}_kan', transformer_decoder=decoder)


def test_uniform_knots_extend_the_range_by_the_order():
    knots = uniform_knots(5, 3, (-1.0, 1.0))
    expected = [-2.2, -1.8, -1.4, -1.0, -0.6, -0.2, 0.2, 0.6, 1.0, 1.4, 1.8, 2.2]
    assert knots.dtype == torch.float32 and knots.shape == (12,)
    torch.testing.assert_close(knots, torch.tensor(expected), rtol=0, atol=1e-6)


@pytest.mark.parametrize('order', [1, 2, 3])
def test_basis_equals_scipy_on_non_uniform_knots(order):
    knots = np.array([-2.0, -1.3, -0.9, -0.1, 0.0, 0.45, 1.2, 1.5, 2.6, 3.0])
    x = np.linspace(-1.99, 2.99, 173)
    ours = b_spline_basis(
        torch.tensor(x, dtype=torch.float64)[:, None], torch.tensor(knots), order
    )[:, 0]
    count = len(knots) - order - 1
    assert ours.shape == (173, count)
    for j in range(count):
        element = BSpline.basis_element(knots[j : j + order + 2], extrapolate=False)
        reference = np.nan_to_num(element(x), nan=0.0)
        np.testing.assert_allclose(ours[:, j].numpy(), reference, rtol=0, atol=1e-12)


def test_cubic_basis_at_a_knot_is_one_four_one_sixths():
    knots = uniform_knots(2, 3, (-1.0, 1.0))  # -4 .. 4, step 1
    values = b_spline_basis(torch.tensor([[0.0]]), knots, 3)[0, 0]
    torch.testing.assert_close(values, torch.tensor([0.0, 1 / 6, 4 / 6, 1 / 6, 0.0]))


def test_partition_of_unity_inside_the_grid_range_and_zero_far_outside():
    knots = uniform_knots(5, 3, (-3.0, 3.0))
    inside = torch.linspace(-3.0, 2.999, 501)[:, None]
    sums = b_spline_basis(inside, knots, 3).sum(-1)[:, 0]
    torch.testing.assert_close(sums, torch.ones(501), rtol=0, atol=1e-5)
    outside = torch.tensor([[-7.0], [7.0]])
    assert torch.equal(b_spline_basis(outside, knots, 3), torch.zeros(2, 1, 8))


def test_kan_linear_output_for_hand_set_weights():
    layer = KANLinear(2, 1, grid_size=2, spline_order=1, grid_range=(-1.0, 1.0))
    # Knots -2, -1, 0, 1, 2: three hat functions peaking at -1, 0 and 1.
    with torch.no_grad():
        layer.base_weight.copy_(torch.tensor([[0.5, -1.0]]))
        layer.spline_weight.copy_(torch.tensor([[[1.0, 2.0, 3.0], [4.0, 0.0, -2.0]]]))
        layer.spline_scaler.copy_(torch.tensor([[2.0, 0.5]]))
    x = torch.tensor([[0.5, -0.25]])
    silu = lambda v: v / (1 + math.exp(-v))  # noqa: E731
    base = 0.5 * silu(0.5) - 1.0 * silu(-0.25)
    # x0 = 0.5: bases (0, 0.5, 0.5) -> 2 * (0.5*2 + 0.5*3); x1 = -0.25: (0.25, 0.75, 0).
    spline = 2.0 * (0.5 * 2.0 + 0.5 * 3.0) + 0.5 * (0.25 * 4.0 + 0.75 * 0.0)
    torch.testing.assert_close(layer(x), torch.tensor([[base + spline]]), rtol=0, atol=1e-6)
    assert layer(torch.zeros(4, 3, 2)).shape == (4, 3, 1)


def test_cubic_kan_linear_hand_set_value_at_a_knot():
    layer = KANLinear(1, 1, grid_size=2, spline_order=3, grid_range=(-1.0, 1.0))
    with torch.no_grad():
        layer.base_weight.zero_()
        layer.spline_weight.copy_(torch.tensor([[[9.0, 1.0, 2.0, 3.0, 9.0]]]))
        layer.spline_scaler.fill_(3.0)
    # At x = 0: (1·1 + 4·2 + 1·3) / 6 = 2, times the scaler 3.
    torch.testing.assert_close(layer(torch.zeros(1, 1)), torch.tensor([[6.0]]))


def test_regulariser_value_on_hand_set_weights():
    layer = KANLinear(2, 1, grid_size=1, spline_order=1)
    with torch.no_grad():
        layer.spline_weight.copy_(torch.tensor([[[1.0, -1.0], [3.0, -3.0]]]))
    # l1 = (1, 3), sum 4, p = (1/4, 3/4).
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert layer.regularization_loss().item() == pytest.approx(4.0 + entropy, abs=1e-6)
    assert layer.regularization_loss(0.5, 2.0).item() == pytest.approx(2.0 + 2 * entropy, 1e-6)
    with torch.no_grad():
        layer.spline_weight.copy_(torch.tensor([[[0.0, 0.0], [2.0, -2.0]]]))
    # A zero edge has p = 0 and adds nothing (no NaN): 2 + 0.
    assert layer.regularization_loss().item() == pytest.approx(2.0, abs=1e-7)
    network = torch.nn.Sequential(
        layer, torch.nn.ReLU(), KANLinear(1, 1, grid_size=1, spline_order=1)
    )
    with torch.no_grad():
        network[2].spline_weight.copy_(torch.tensor([[[0.5, 1.5]]]))
    # Second layer: a single edge, l1 = 1, entropy 0.
    assert kan_regularization_loss(network).item() == pytest.approx(3.0, abs=1e-6)
    assert kan_regularization_loss(MLP(4, 4, 4, 3)) is None


def test_kan_linear_cost_counts_the_digest_figures():
    # seeds-digest.md §5.4: 65,536 base + 524,288 spline + 65,536 scaler weights.
    params, macs = kan_linear_cost(256, 256, 5, 3)
    assert params == 65_536 + 524_288 + 65_536
    assert macs == 256 * 256 * 9
    layer = KANLinear(7, 3, grid_size=4, spline_order=2)
    assert sum(p.numel() for p in layer.parameters()) == kan_linear_cost(7, 3, 4, 2)[0]


def test_config_switch_validates_and_round_trips(tiny_config):
    config = kan_config(tiny_config, kan_grid_range=[-3, 3])
    assert config.transformer_decoder.kan_grid_range == (-3.0, 3.0)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert tiny_config.transformer_decoder.mask_embed == 'mlp'
    with pytest.raises(ValueError, match=r"mask_embed must be one of \['mlp', 'kan'\]"):
        TransformerDecoderConfig(mask_embed='spline')
    with pytest.raises(ValueError, match='kan_grid_range must be two finite numbers'):
        TransformerDecoderConfig(kan_grid_range=(1.0, -1.0))
    with pytest.raises(ValueError, match='kan_grid_range must be two finite numbers'):
        TransformerDecoderConfig(kan_grid_range=3.0)
    with pytest.raises(ValueError, match='kan_grid_size = 100000 is outside'):
        TransformerDecoderConfig(kan_grid_size=100_000)


def test_kan_model_swaps_only_the_mask_embedding(tiny_config):
    torch.manual_seed(0)
    mlp_model = build_model(tiny_config).eval()
    config = kan_config(tiny_config)
    torch.manual_seed(0)
    model = build_model(config).eval()
    head = model.sem_seg_head.predictor.mask_embed
    assert isinstance(head, KAN) and len(head.layers) == 3
    prefix = 'sem_seg_head.predictor.mask_embed.'
    others = {k for k in mlp_model.state_dict() if not k.startswith(prefix)}
    assert others == {k for k in model.state_dict() if not k.startswith(prefix)}
    kan_keys = sorted(k.removeprefix(prefix) for k in model.state_dict() if k.startswith(prefix))
    assert kan_keys == sorted(
        f'layers.{i}.{name}'
        for i in range(3)
        for name in ('base_weight', 'spline_weight', 'spline_scaler', 'grid')
    )
    dim = tiny_config.transformer_decoder.hidden_dim
    assert model.state_dict()[prefix + 'layers.0.spline_weight'].shape == (dim, dim, 8)
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 96))
    assert outputs.class_logits.shape == (1, 12, 20)
    assert outputs.mask_logits.shape == (1, 12, 16, 24)
    assert torch.isfinite(outputs.mask_logits).all()


def test_kan_checkpoint_loads_from_its_own_config(tiny_config, tmp_path):
    config = kan_config(tiny_config, kan_grid_range=(-3.0, 3.0), kan_grid_size=4)
    torch.manual_seed(0)
    model = build_model(config).eval()
    path = save_checkpoint(tmp_path / 'kan.safetensors', model.state_dict(), config)
    loaded, loaded_config = load_checkpoint(path)
    assert loaded_config == config
    assert isinstance(loaded.sem_seg_head.predictor.mask_embed, KAN)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for out, ref in zip(loaded(images), model(images), strict=True):
            assert torch.equal(out, ref)
