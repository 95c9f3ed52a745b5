"""Kolmogorov–Arnold layers for the optional KAN mask-embedding head (Mask2KAN, seed 003).

Efficient-KAN style (the layout the Mask2KAN thesis uses): every edge i -> j carries

    phi_ji(x) = w^b_ji · SiLU(x) + s_ji · Σ_k c_jik · B_k(x),

with B_k the cubic (order 3) B-splines on a uniform grid of `grid_size` intervals over
`grid_range`, extended by `spline_order` knots on each side so that the bases sum to one inside
the range. `s` is the standalone spline scaler. Written for export: the Cox–de Boor recursion has a
fixed number of steps (`spline_order`), uses only comparisons, casts and elementwise arithmetic on
constant knots, and has no data-dependent control flow. Data-adaptive grid updates are not
implemented: the knots are a persistent buffer (`grid`), so a checkpoint carries them either way.
See shared/reference/seeds-digest.md §5 and docs/architecture-options.md.

Allowed dependencies: torch.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn


def uniform_knots(
    grid_size: int, spline_order: int, grid_range: tuple[float, float]
) -> torch.Tensor:
    """(grid_size + 2·spline_order + 1,) float32 uniform knots covering `grid_range` plus
    `spline_order` extra intervals on each side (efficient-KAN's grid)."""
    low, high = grid_range
    step = (high - low) / grid_size
    index = torch.arange(-spline_order, grid_size + spline_order + 1, dtype=torch.float64)
    return (index * step + low).float()


def b_spline_basis(x: torch.Tensor, knots: torch.Tensor, spline_order: int) -> torch.Tensor:
    """B-spline basis functions by the Cox–de Boor recursion.

    Args:
        x: (..., I) inputs.
        knots: (I, T) non-decreasing knots per input feature (or (T,) shared by all).
        spline_order: polynomial degree k (3 = cubic).

    Returns:
        (..., I, T - 1 - k) basis values B_{j,k}(x). Degree 0 uses half-open intervals
        [t_j, t_{j+1}), so a point exactly on the last knot gets no basis (as efficient-KAN).
    """
    x = x.unsqueeze(-1)
    bases = ((x >= knots[..., :-1]) & (x < knots[..., 1:])).to(x.dtype)
    for k in range(1, spline_order + 1):
        left = (x - knots[..., : -(k + 1)]) / (knots[..., k:-1] - knots[..., : -(k + 1)])
        right = (knots[..., k + 1 :] - x) / (knots[..., k + 1 :] - knots[..., 1:-k])
        bases = left * bases[..., :-1] + right * bases[..., 1:]
    return bases


class KANLinear(nn.Module):
    """One KAN layer: (..., in_features) -> (..., out_features).

    Parameters (efficient-KAN names): `base_weight` (O, I), `spline_weight` (O, I, G + k),
    `spline_scaler` (O, I); buffer `grid` (I, G + 2k + 1).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        scale_noise: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.grid_size = grid_size
        self.spline_order = spline_order
        knots = uniform_knots(grid_size, spline_order, grid_range)
        self.register_buffer('grid', knots.expand(in_features, -1).contiguous())
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(
            torch.empty(out_features, in_features, grid_size + spline_order)
        )
        self.spline_scaler = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters(scale_noise)

    def reset_parameters(self, scale_noise: float = 0.1) -> None:
        """Kaiming-uniform base weight and scaler (as nn.Linear); small uniform spline noise.

        efficient-KAN fits its noise curve by least squares; uniform coefficients of the same
        magnitude start the spline branch equally close to zero without a solver at init.
        """
        nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.spline_scaler, a=math.sqrt(5))
        with torch.no_grad():
            self.spline_weight.uniform_(-0.5, 0.5).mul_(scale_noise / self.grid_size)

    def scaled_spline_weight(self) -> torch.Tensor:
        """(O, I, G + k) spline coefficients times the standalone scaler."""
        return self.spline_weight * self.spline_scaler.unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., I) -> (..., O)."""
        base = F.linear(F.silu(x), self.base_weight)
        bases = b_spline_basis(x, self.grid, self.spline_order)  # (..., I, G + k)
        spline = F.linear(bases.flatten(-2), self.scaled_spline_weight().flatten(1))  # (..., O)
        return base + spline

    def regularization_loss(
        self, activation_weight: float = 1.0, entropy_weight: float = 1.0
    ) -> torch.Tensor:
        """efficient-KAN's regulariser: L1 of the spline weights plus their entropy.

        l1 = mean_k |spline_weight| (O, I); L = a·Σ l1 + e·(−Σ p log p) with p = l1 / Σ l1.
        A zero p contributes 0 (xlogy), where efficient-KAN would give NaN.
        """
        l1 = self.spline_weight.abs().mean(-1)
        total = l1.sum()
        p = l1 / total
        entropy = -torch.special.xlogy(p, p).sum()
        return activation_weight * total + entropy_weight * entropy


class KAN(nn.Module):
    """`num_layers` KANLinear layers (the drop-in for the 3-layer mask-embedding MLP).

    No activation between layers: each KAN layer carries its own non-linearity. The layers sit
    in `layers` as the MLP's do, so state-dict keys read `mask_embed.layers.N.*`.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int,
        *,
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(
            KANLinear(
                n,
                k,
                grid_size=grid_size,
                spline_order=spline_order,
                grid_range=grid_range,
            )
            for n, k in itertools.pairwise(dims)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def kan_regularization_loss(
    module: nn.Module, activation_weight: float = 1.0, entropy_weight: float = 1.0
) -> torch.Tensor | None:
    """Sum of `KANLinear.regularization_loss` over every KAN layer in `module`; None if none."""
    losses = [
        m.regularization_loss(activation_weight, entropy_weight)
        for m in module.modules()
        if isinstance(m, KANLinear)
    ]
    if not losses:
        return None
    return torch.stack(losses).sum()


def kan_linear_cost(
    in_features: int, out_features: int, grid_size: int, spline_order: int
) -> tuple[int, int]:
    """(parameters, multiply-adds per input row) of one KANLinear.

    Parameters: base O·I + spline O·I·(G + k) + scaler O·I. Multiply-adds: the two matrix
    products O·I·(1 + G + k); the basis and scaling are elementwise and not counted (the same
    convention as fvcore's GMACs for nn.Linear).
    """
    coefficients = grid_size + spline_order
    params = out_features * in_features * (2 + coefficients)
    macs = out_features * in_features * (1 + coefficients)
    return params, macs
