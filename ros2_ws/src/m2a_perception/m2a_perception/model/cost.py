"""Parameter and multiply-add cost of the network a `ModelConfig` describes (for `m2a-bench`).

Multiply-adds are counted as fvcore does for the Mask2Former family (one multiply-add = one
"FLOP", so the figures are GMACs, comparable with seeds-digest.md): torch's `FlopCounterMode`
counts the matrix products and convolutions of one forward pass on a meta-device model (no memory,
no weights), and its FLOPs are halved. Elementwise work (norms, softmax, the deformable bilinear
sampling, the B-spline basis) is not counted, as in fvcore.

Allowed dependencies: torch, the model package.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from m2a_perception.config import ModelConfig
from m2a_perception.model.build import build_model
from m2a_perception.model.kan import kan_linear_cost

MASK_EMBED_PATH = 'sem_seg_head.predictor.mask_embed'


@dataclass(frozen=True)
class ModelCost:
    """Cost of one network at one input size (batch 1, eval mode).

    Attributes:
        size: (height, width) of the padded input.
        parameters, trainable_parameters: counts of the whole network.
        gmacs: multiply-adds of one forward pass, in units of 1e9.
        mask_embed: 'mlp' or 'kan'.
        mask_embed_parameters: parameters of the mask-embedding head.
        mask_embed_gmacs: its multiply-adds per image: (layers + 1) predictions × queries.
    """

    size: tuple[int, int]
    parameters: int
    trainable_parameters: int
    gmacs: float
    mask_embed: str
    mask_embed_parameters: int
    mask_embed_gmacs: float

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data['size'] = list(self.size)
        return data


def format_model_cost(cost: Mapping[str, Any]) -> str:
    """One line for the bench table from `ModelCost.as_dict()`."""
    height, width = cost['size']
    return (
        f'model cost at {height}x{width}: {cost["parameters"] / 1e6:.3f} M params '
        f'({cost["trainable_parameters"] / 1e6:.3f} M trainable), {cost["gmacs"]:.3f} GMAC; '
        f'mask_embed {cost["mask_embed"]}: {cost["mask_embed_parameters"] / 1e6:.3f} M params, '
        f'{cost["mask_embed_gmacs"]:.4f} GMAC'
    )


def mask_embed_macs_per_query(config: ModelConfig) -> int:
    """Multiply-adds of the 3-layer mask-embedding head for one query vector."""
    decoder = config.transformer_decoder
    dims = [decoder.hidden_dim] * 3 + [config.pixel_decoder.mask_dim]
    pairs = list(itertools.pairwise(dims))
    if decoder.mask_embed == 'kan':
        return sum(
            kan_linear_cost(n, k, decoder.kan_grid_size, decoder.kan_spline_order)[1]
            for n, k in pairs
        )
    return sum(n * k for n, k in pairs)


def model_cost(config: ModelConfig, size: tuple[int, int]) -> ModelCost:
    """Parameters and multiply-adds of `config`'s network on a (1, 3, *size) input.

    Raises:
        ValueError: `size` is not a valid model input (see `Mask2Anomaly.forward`).
    """
    with torch.device('meta'):
        model = build_model(config).eval()
        images = torch.zeros(1, 3, *size)
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # FlopCounterMode's module tracker hooks autograd; with no tensor needing a gradient it
    # has nothing to hook (no_grad alone trips it on parameters that require one).
    model.requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with counter:
        model(images)
    head = model.get_submodule(MASK_EMBED_PATH)
    decoder = config.transformer_decoder
    predictions = decoder.num_layers + 1
    return ModelCost(
        size=(int(size[0]), int(size[1])),
        parameters=parameters,
        trainable_parameters=trainable,
        gmacs=counter.get_total_flops() / 2 / 1e9,
        mask_embed=decoder.mask_embed,
        mask_embed_parameters=sum(p.numel() for p in head.parameters()),
        mask_embed_gmacs=predictions
        * decoder.num_queries
        * mask_embed_macs_per_query(config)
        / 1e9,
    )
