"""Losses of the class-agnostic centroid instance head (seed 004, "A Simple and Generalist
Approach for Panoptic Segmentation"; seeds-digest.md §6, R10).

- `loss_centroid` (Section 3.3.1, Eq. 4): per pixel ½(‖Δ_u‖₂ + ‖Δ_v‖₂) between the predicted
  embedding and concat(γ(u), γ(v)) of the pixel's instance centroid (0 for pixels of no
  instance), averaged with the edge-distance-sampling weights (Section 3.3.2, Eq. 5):
  w = w_min + (1 - w_min)·exp(-d²/D²), d the distance to the nearest instance boundary, and
  Σ w·L / Σ w.
- `loss_centroid_tv` (Appendix B, Eq. 10): total variation, the mean over pixels of
  ‖y_ij - y_{i-1,j}‖₂ + ‖y_ij - y_{i,j-1}‖₂, on every pixel.
- `loss_centroid_dice` (Appendix B, Eq. 12-14): generalised Dice over the labelled instances,
  weights 1/Area, soft membership p_l = exp(-d_u²)·exp(-d_v²) of every pixel (void pixels
  included: whatever they are, they are not one of the labelled instances).

Instances are the target masks of thing classes (`data.target_mode: panoptic` gives one per
instance), resized to the embedding's (1/4) resolution by nearest neighbour. Pasted outliers and
void get no mask, so they count as "no instance".

Allowed dependencies: torch, scipy.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from m2a_perception.model.instance_head import centroid_positional_embedding
from m2a_training.losses.targets import MaskTargets


def instance_id_map(
    targets: MaskTargets, thing_ids: Collection[int], size: tuple[int, int]
) -> torch.Tensor:
    """Instance ids of one image at the embedding resolution.

    Args:
        targets: the image's targets (masks in the padded input frame, any resolution).
        thing_ids: class ids whose masks are instances.
        size: (h, w) of the embedding.

    Returns:
        (h, w) int64: 0 = no instance, 1..N = the thing masks in target order (a later mask
        wins where masks overlap). An instance that vanishes at (h, w) keeps its id unused.
    """
    ids = torch.zeros(size, dtype=torch.int64, device=targets.masks.device)
    things = [i for i, label in enumerate(targets.labels.tolist()) if label in set(thing_ids)]
    if not things:
        return ids
    masks = targets.masks[things].to(torch.float32)[None]
    resized = F.interpolate(masks, size=size, mode='nearest')[0] > 0.5
    for number, mask in enumerate(resized, start=1):
        ids[mask] = number
    return ids


def instance_centroids(ids: torch.Tensor, count: int) -> torch.Tensor:
    """Centres of mass (u, v) in [-1, 1] of instances 1..count of an id map.

    Pixel (row i, column j) of an (h, w) map sits at u = (2j + 1)/w - 1, v = (2i + 1)/h - 1
    (cell centres, align_corners False).

    Returns:
        (count + 1, 2) float32; row 0 and rows of empty instances are 0.
    """
    height, width = ids.shape
    flat = ids.reshape(-1)
    rows = torch.arange(height, device=ids.device, dtype=torch.float32).repeat_interleave(width)
    columns = torch.arange(width, device=ids.device, dtype=torch.float32).repeat(height)
    u = (2.0 * columns + 1.0) / width - 1.0
    v = (2.0 * rows + 1.0) / height - 1.0
    area = torch.bincount(flat, minlength=count + 1).to(torch.float32)
    sums = torch.zeros(count + 1, 2, device=ids.device)
    sums.index_add_(0, flat, torch.stack([u, v], dim=1))
    centroids = sums / area.clamp_min(1.0)[:, None]
    centroids[0] = 0.0
    return centroids


def centroid_targets(ids: torch.Tensor, harmonics: int) -> torch.Tensor:
    """Eq. 2: concat(γ(u), γ(v)) of each pixel's instance centroid, 0 for no instance.

    Args:
        ids: (h, w) int64 instance ids (0 = none).
        harmonics: L.

    Returns:
        (4L, h, w) float32.
    """
    count = int(ids.max()) if ids.numel() else 0
    codes = centroid_positional_embedding(instance_centroids(ids, count), harmonics)
    codes[0] = 0.0
    return codes[ids].permute(2, 0, 1)


def edge_distance_weights(ids: torch.Tensor, min_weight: float, distance: float) -> torch.Tensor:
    """Eq. 5, edge distance sampling: w = w_min + (1 - w_min)·exp(-d²/D²).

    A boundary pixel is one whose right or lower neighbour has another id (instance or none),
    counted on both sides; d is the Euclidean distance in pixels to the nearest boundary pixel
    (0 on it). Without any boundary every pixel gets w_min.

    Args:
        ids: (h, w) int64 instance ids.
        min_weight: w_min (0 in the paper).
        distance: D in pixels of the id map (20 in the paper, at 8/14 of its input).

    Returns:
        (h, w) float32 weights in [w_min, 1].
    """
    boundary = torch.zeros_like(ids, dtype=torch.bool)
    vertical = ids[1:] != ids[:-1]
    horizontal = ids[:, 1:] != ids[:, :-1]
    boundary[1:] |= vertical
    boundary[:-1] |= vertical
    boundary[:, 1:] |= horizontal
    boundary[:, :-1] |= horizontal
    if not bool(boundary.any()):
        return torch.full(ids.shape, float(min_weight), device=ids.device)
    # scipy's exact Euclidean distance transform: distance of each nonzero pixel to the nearest 0.
    host = (~boundary).cpu().numpy()
    d = torch.from_numpy(ndimage.distance_transform_edt(host).astype(np.float32)).to(ids.device)
    return min_weight + (1.0 - min_weight) * torch.exp(-(d**2) / distance**2)


def centroid_distance(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel ‖Δ_u‖₂ and ‖Δ_v‖₂ of Eq. 4.

    Args:
        prediction, target: (4L, ...) embeddings (u half first).

    Returns:
        (2, ...) float: the u distance, then the v distance.
    """
    delta = (prediction - target).float()
    halves = delta.chunk(2, dim=0)
    return torch.stack([torch.linalg.vector_norm(h, dim=0) for h in halves])


def centroid_loss(
    prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4 with EDS: Σ w·½(‖Δ_u‖ + ‖Δ_v‖) and Σ w of one image (the caller divides the sums).

    Args:
        prediction, target: (4L, h, w).
        weights: (h, w).

    Returns:
        The weighted sum and the weight sum, scalars.
    """
    per_pixel = 0.5 * centroid_distance(prediction, target).sum(0)
    return (weights * per_pixel).sum(), weights.sum()


def total_variation_loss(prediction: torch.Tensor) -> torch.Tensor:
    """Eq. 10 averaged over pixels: mean ‖y_ij - y_{i-1,j}‖₂ + mean ‖y_ij - y_{i,j-1}‖₂.

    Args:
        prediction: (4L, h, w) embeddings.

    Returns:
        Scalar; the Euclidean norm is over the embedding channels (the paper's choice for the
        positional-embedding task).
    """
    prediction = prediction.float()
    loss = prediction.new_zeros(())
    if prediction.shape[1] > 1:
        loss = (
            loss + torch.linalg.vector_norm(prediction[:, 1:] - prediction[:, :-1], dim=0).mean()
        )
    if prediction.shape[2] > 1:
        loss = (
            loss
            + torch.linalg.vector_norm(prediction[:, :, 1:] - prediction[:, :, :-1], dim=0).mean()
        )
    return loss


def generalized_dice_loss(
    prediction: torch.Tensor, ids: torch.Tensor, harmonics: int
) -> torch.Tensor | None:
    """Eq. 12-14: 1 - 2·Σ_l w_l Σ r_l p_l / Σ_l w_l Σ (r_l + p_l), w_l = 1/Area_l.

    Args:
        prediction: (4L, h, w) embeddings.
        ids: (h, w) int64 instance ids (0 = none).
        harmonics: L.

    Returns:
        Scalar, or None when the image has no instance.
    """
    count = int(ids.max()) if ids.numel() else 0
    area = torch.bincount(ids.reshape(-1), minlength=count + 1)[1:]
    present = torch.nonzero(area).squeeze(1) + 1
    if present.numel() == 0:
        return None
    codes = centroid_positional_embedding(instance_centroids(ids, count), harmonics)[present]
    # (N, 2, h, w) u and v distances of every pixel to every instance's code.
    distances = torch.stack([centroid_distance(prediction, c[:, None, None]) for c in codes])
    membership = torch.exp(-(distances**2).sum(1))  # p_l = exp(-d_u²)·exp(-d_v²)
    reference = (ids[None] == present[:, None, None]).to(membership.dtype)
    weights = 1.0 / area[present - 1].to(membership.dtype)
    intersection = (weights * (reference * membership).sum((1, 2))).sum()
    total = (weights * (reference + membership).sum((1, 2))).sum()
    return 1.0 - 2.0 * intersection / total


def compute_instance_losses(
    embedding: torch.Tensor,
    targets: Sequence[MaskTargets],
    thing_ids: Collection[int],
    *,
    min_weight: float = 0.0,
    distance: float = 20.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three instance-head losses of a batch.

    Args:
        embedding: (B, 4L, h, w) predicted centroid embeddings.
        targets: B per-image targets.
        thing_ids: class ids whose target masks are instances.
        min_weight, distance: EDS w_min and D (`edge_distance_weights`).

    Returns:
        (loss_centroid, loss_centroid_tv, loss_centroid_dice): the EDS-weighted mean over the
        batch's pixels, the mean TV over images, and the mean Dice over images with instances
        (zero, with a graph, when no image has one).
    """
    batch, channels, height, width = embedding.shape
    if channels % 4:
        raise ValueError(f'the embedding needs 4L channels, got {channels}')
    if len(targets) != batch:
        raise ValueError(f'{len(targets)} targets for a batch of {batch}')
    harmonics = channels // 4
    weighted = embedding.new_zeros((), dtype=torch.float32)
    weight_sum = embedding.new_zeros((), dtype=torch.float32)
    tv = embedding.new_zeros((), dtype=torch.float32)
    dice_terms = []
    for b in range(batch):
        prediction = embedding[b].float()
        ids = instance_id_map(targets[b].to(embedding.device), thing_ids, (height, width))
        weights = edge_distance_weights(ids, min_weight, distance)
        image_sum, image_weight = centroid_loss(
            prediction, centroid_targets(ids, harmonics), weights
        )
        weighted = weighted + image_sum
        weight_sum = weight_sum + image_weight
        tv = tv + total_variation_loss(prediction)
        dice = generalized_dice_loss(prediction, ids, harmonics)
        if dice is not None:
            dice_terms.append(dice)
    # No boundary and w_min 0 leaves no weight: the loss is then 0 (with a graph), not NaN.
    loss_centroid = weighted / weight_sum if float(weight_sum) > 0 else weighted * 0.0
    loss_dice = torch.stack(dice_terms).mean() if dice_terms else embedding.sum() * 0.0
    return loss_centroid, tv / batch, loss_dice
