"""Hungarian matching of predicted masks to ground-truth segments (Mask2Former's matcher).

Per image, the cost of assigning query q to target n is

    class_weight · (−softmax(class_logits_q)[label_n])
    + mask_weight · BCE(mask_q, target_n) + dice_weight · Dice(mask_q, target_n),

with both mask costs evaluated on `num_points` uniformly random points shared by all masks of
the image, in float32, and the assignment solved exactly with scipy's `linear_sum_assignment`.
The official code re-runs the matcher for every decoder output (deep supervision).

Allowed dependencies: numpy, scipy, torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

from m2a_training.losses.point_sampling import sample_points
from m2a_training.losses.targets import MaskTargets


@dataclass(frozen=True)
class MatcherConfig:
    """Weights of the matching cost (official: class 2, BCE 5, dice 5) and its point count."""

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    num_points: int = 12544

    def __post_init__(self) -> None:
        if self.num_points <= 0:
            raise ValueError(f'num_points must be positive, got {self.num_points}')
        if min(self.class_weight, self.mask_weight, self.dice_weight) < 0:
            raise ValueError('matcher cost weights must be non-negative')


def compute_pairwise_sigmoid_ce(
    point_logits: torch.Tensor, point_labels: torch.Tensor
) -> torch.Tensor:
    """Mean binary cross-entropy of every prediction against every target.

    Args:
        point_logits: (Q, P) float mask logits at P points.
        point_labels: (N, P) float targets in [0, 1] at the same points.

    Returns:
        (Q, N) float: entry (q, n) is mean_p BCE(point_logits[q, p], point_labels[n, p]).
    """
    num_points = point_logits.shape[1]
    # BCE(x, t) = softplus(-x)·t + softplus(x)·(1 − t); two matmuls give all pairs at once.
    cost_positive = torch.nn.functional.softplus(-point_logits)
    cost_negative = torch.nn.functional.softplus(point_logits)
    cost = cost_positive @ point_labels.T + cost_negative @ (1.0 - point_labels).T
    return cost / num_points


def compute_pairwise_dice(point_logits: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
    """Dice loss (+1 smoothing) of every prediction against every target.

    Args:
        point_logits: (Q, P) float mask logits at P points.
        point_labels: (N, P) float targets in [0, 1] at the same points.

    Returns:
        (Q, N) float: 1 − (2·Σ σ(x)·t + 1) / (Σ σ(x) + Σ t + 1).
    """
    probs = point_logits.sigmoid()
    numerator = 2.0 * probs @ point_labels.T
    denominator = probs.sum(-1)[:, None] + point_labels.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


def compute_matching_cost(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    targets: MaskTargets,
    config: MatcherConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Cost matrix of one image.

    Args:
        class_logits: (Q, K+1) float class logits, "no object" last.
        mask_logits: (Q, h, w) float mask logits.
        targets: the image's N target segments; masks in the padded input frame.
        config: cost weights and point count.
        generator: random generator on `mask_logits.device`, or None for the global one.

    Returns:
        (Q, N) float32 cost.
    """
    if class_logits.dim() != 2 or mask_logits.dim() != 3:
        raise ValueError(
            'expected class_logits (Q, K+1) and mask_logits (Q, h, w), got '
            f'{tuple(class_logits.shape)} and {tuple(mask_logits.shape)}'
        )
    num_queries = class_logits.shape[0]
    if targets.num_targets == 0:
        return class_logits.new_zeros((num_queries, 0), dtype=torch.float32)
    # Costs in float32 even under AMP (as the official matcher): small probabilities and sums
    # of 12544 terms; autocast would otherwise run the matmuls below in half precision.
    with torch.autocast(device_type=mask_logits.device.type, enabled=False):
        return _compute_matching_cost_fp32(class_logits, mask_logits, targets, config, generator)


def _compute_matching_cost_fp32(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    targets: MaskTargets,
    config: MatcherConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    probs = class_logits.float().softmax(-1)
    cost_class = -probs[:, targets.labels.to(class_logits.device)]
    points = torch.rand(1, config.num_points, 2, generator=generator, device=mask_logits.device)
    point_logits = sample_points(mask_logits.float()[None], points)[0]
    target_masks = targets.masks.to(device=mask_logits.device, dtype=torch.float32)
    point_labels = sample_points(target_masks[None], points)[0]
    cost_mask = compute_pairwise_sigmoid_ce(point_logits, point_labels)
    cost_dice = compute_pairwise_dice(point_logits, point_labels)
    return (
        config.class_weight * cost_class
        + config.mask_weight * cost_mask
        + config.dice_weight * cost_dice
    )


def solve_assignment(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment of rows (queries) to columns (targets).

    Args:
        cost: (Q, N) float cost with Q >= N.

    Returns:
        (query_indices, target_indices), each (min(Q, N),) int64 on the CPU, sorted by query.
    """
    if cost.dim() != 2:
        raise ValueError(f'cost must be (Q, N), got {tuple(cost.shape)}')
    if not torch.isfinite(cost).all():
        raise ValueError('matching cost contains NaN or infinity')
    rows, cols = linear_sum_assignment(cost.detach().cpu().double().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


@torch.no_grad()
def match_predictions(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    targets: Sequence[MaskTargets],
    config: MatcherConfig,
    generator: torch.Generator | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Match one decoder output to the targets of every image in the batch.

    Args:
        class_logits: (B, Q, K+1) float class logits.
        mask_logits: (B, Q, h, w) float mask logits.
        targets: B per-image targets.
        config: cost weights and point count.
        generator: random generator on `mask_logits.device`, or None for the global one.

    Returns:
        B pairs (query_indices, target_indices) of int64 CPU tensors.
    """
    if class_logits.shape[0] != len(targets) or mask_logits.shape[0] != len(targets):
        raise ValueError(
            f'batch of {class_logits.shape[0]} predictions but {len(targets)} target sets'
        )
    return [
        solve_assignment(
            compute_matching_cost(class_logits[b], mask_logits[b], targets[b], config, generator)
        )
        for b in range(len(targets))
    ]
