"""Point sampling for mask losses: bilinear reads at normalised coordinates.

Mask2Former evaluates its mask losses and matching costs on a few thousand points instead of the
full mask (PointRend's idea): uniformly random points for matching, and for the loss a mix of
the points where the prediction is most uncertain plus uniform ones. Written here with
`F.grid_sample`; the semantics follow detectron2's `point_sample` (align_corners=False, so
coordinate 0 is the left/top edge of the first pixel and 1 the right/bottom edge of the last).

Allowed dependencies: torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_points(maps: torch.Tensor, point_coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly read `maps` at normalised points.

    Args:
        maps: (N, C, H, W) float maps.
        point_coords: (N, P, 2) float (x, y) in [0, 1] relative to the whole map.

    Returns:
        (N, C, P) values; points outside [0, 1] read zero padding.
    """
    if maps.dim() != 4:
        raise ValueError(f'maps must be (N, C, H, W), got {tuple(maps.shape)}')
    if point_coords.dim() != 3 or point_coords.shape[-1] != 2:
        raise ValueError(f'point_coords must be (N, P, 2), got {tuple(point_coords.shape)}')
    grid = 2.0 * point_coords.unsqueeze(2) - 1.0
    return F.grid_sample(maps, grid.to(maps.dtype), align_corners=False).squeeze(3)


def compute_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of binary mask logits: -|logit| (largest at the decision boundary)."""
    return -logits.abs()


def sample_uncertain_points(
    mask_logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PointRend importance sampling of point coordinates (no gradient).

    Draws `int(num_points * oversample_ratio)` uniform candidates per mask, keeps the
    `int(importance_sample_ratio * num_points)` most uncertain ones (by -|logit|) and fills up to
    `num_points` with fresh uniform points.

    Args:
        mask_logits: (N, 1, H, W) float mask logits.
        num_points: points per mask (12544 in the official config).
        oversample_ratio: candidate multiplier, >= 1 (3.0 officially).
        importance_sample_ratio: fraction of points chosen by uncertainty, in [0, 1] (0.75).
        generator: random generator on `mask_logits.device`, or None for the global one.

    Returns:
        (N, num_points, 2) float (x, y) coordinates in [0, 1].
    """
    if mask_logits.dim() != 4 or mask_logits.shape[1] != 1:
        raise ValueError(f'mask_logits must be (N, 1, H, W), got {tuple(mask_logits.shape)}')
    if num_points <= 0 or oversample_ratio < 1.0 or not 0.0 <= importance_sample_ratio <= 1.0:
        raise ValueError(
            'need num_points > 0, oversample_ratio >= 1 and importance_sample_ratio in [0, 1]; '
            f'got {num_points}, {oversample_ratio}, {importance_sample_ratio}'
        )
    num_masks = mask_logits.shape[0]
    device = mask_logits.device
    num_candidates = int(num_points * oversample_ratio)
    candidates = torch.rand(
        num_masks, num_candidates, 2, generator=generator, device=device, dtype=torch.float32
    )
    uncertainty = compute_uncertainty(sample_points(mask_logits.float(), candidates))[:, 0]
    num_uncertain = int(importance_sample_ratio * num_points)
    top = torch.topk(uncertainty, k=num_uncertain, dim=1).indices
    chosen = torch.gather(candidates, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    num_random = num_points - num_uncertain
    if num_random > 0:
        uniform = torch.rand(
            num_masks, num_random, 2, generator=generator, device=device, dtype=torch.float32
        )
        chosen = torch.cat([chosen, uniform], dim=1)
    return chosen
