"""Mask contrastive loss of Mask2Anomaly (paper Eq. 10–12) and its variants (Eq. 26).

Per pixel, the in-distribution likelihood is L(x) = max_k Σ_q softmax(C_q)_k · σ(M_q(x)) over the
K known classes (softmax over K+1 logits, "no object" dropped without renormalising), and the
paper's negative likelihood is l_N = −L (Eq. 10), so l_N ∈ [−Q, 0] and usually [−1, 0].

Variants (`ContrastiveLossConfig.variant`):
- `reference`: the official code's `OOD_LOSS: margin` branch, bit for bit in formula:
  0.5 · (mean_inlier(l_N²) + mean_outlier(max(0, m − l_N)²)). Because l_N ≤ 0 the hinge is always
  active and both terms push L towards 0 (seeds-digest §2.7 item 2); reproduce it for parity.
- `hinge_on_score`: the corrected form (seeds-digest §2.7): with the anomaly score s = 1 + l_N,
  0.5 · (mean_inlier(s²) + mean_outlier(max(0, m − s)²)): inliers towards s = 0 (L = 1),
  outliers at least m above.
- `bce`: Eq. 26. Read literally it takes log(l_N) of a non-positive number, so this follows the
  official code's `OOD_LOSS: bce` branch, which treats l_N as a logit:
  0.5 · (mean_inlier BCE(l_N, 0) + mean_outlier BCE(l_N, 1)).

Shared by all variants, as in the official code: all queries (no matching), the score is
computed at mask resolution and resampled to the outlier mask's size, void pixels count as
inliers (only pasted pixels are outliers), means are pooled over all pixels of the batch, and the
outlier term is skipped when the batch has no outlier pixel. The margin is explicit: the paper's
best is 0.75, while the official config silently used 1.0.

Allowed dependencies: torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

ContrastiveVariant = Literal['reference', 'hinge_on_score', 'bce']
ResampleMode = Literal['stretch', 'crop']
_VARIANTS = ('reference', 'hinge_on_score', 'bce')
_RESAMPLE_MODES = ('stretch', 'crop')


@dataclass(frozen=True)
class ContrastiveLossConfig:
    """Mask contrastive loss settings.

    Attributes:
        variant: 'reference' (official code), 'hinge_on_score' (corrected) or 'bce' (Eq. 26).
        margin: m of Eq. 11 (paper 0.75; the official config used 1.0). Unused by 'bce'.
        resample: how the 1/4-resolution score reaches the outlier mask. 'stretch' is the
            official behaviour: bilinear with align_corners=True from the (padded) mask
            resolution straight to the unpadded outlier-mask size, which stretches the padding
            over the image (about 1 % misalignment at the bottom/right for 380×760 crops).
            'crop' upsamples to the padded input size (align_corners=False, ×4) and crops the
            top-left H×W, which keeps pixels aligned.
        weight: weight of the loss in the total (official OOD_WEIGHT 1.0).
    """

    variant: ContrastiveVariant = 'reference'
    margin: float = 0.75
    resample: ResampleMode = 'stretch'
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.variant not in _VARIANTS:
            raise ValueError(
                f'contrastive variant must be one of {_VARIANTS}, got {self.variant!r}'
            )
        if self.resample not in _RESAMPLE_MODES:
            raise ValueError(f'resample must be one of {_RESAMPLE_MODES}, got {self.resample!r}')
        if self.weight < 0:
            raise ValueError(f'contrastive weight must be non-negative, got {self.weight}')


def compute_negative_likelihood(
    class_logits: torch.Tensor, mask_logits: torch.Tensor
) -> torch.Tensor:
    """l_N = −max_k Σ_q softmax(C_q)_k · σ(M_q) (Eq. 10), in float32.

    Args:
        class_logits: (B, Q, K+1) float class logits, "no object" last.
        mask_logits: (B, Q, h, w) float mask logits.

    Returns:
        (B, h, w) float32 l_N, ≤ 0.
    """
    if class_logits.dim() != 3 or mask_logits.dim() != 4:
        raise ValueError(
            'expected class_logits (B, Q, K+1) and mask_logits (B, Q, h, w), got '
            f'{tuple(class_logits.shape)} and {tuple(mask_logits.shape)}'
        )
    # float32 even under AMP: the sum over queries of products of probabilities.
    with torch.autocast(device_type=mask_logits.device.type, enabled=False):
        class_probs = class_logits.float().softmax(-1)[..., :-1]
        mask_probs = mask_logits.float().sigmoid()
        per_class = torch.einsum('bqk,bqhw->bkhw', class_probs, mask_probs)
    return -per_class.max(dim=1).values


def resample_to_outlier_mask(
    score: torch.Tensor, size: tuple[int, int], mode: ResampleMode
) -> torch.Tensor:
    """Bring a mask-resolution map to the outlier-mask size.

    Args:
        score: (B, h, w) float map at 1/4 of the padded input.
        size: (H, W) of the outlier mask (the unpadded crop).
        mode: 'stretch' (official, align_corners=True straight to (H, W)) or 'crop'
            (×4 with align_corners=False, then the top-left (H, W)).

    Returns:
        (B, H, W) float map.
    """
    if mode == 'stretch':
        return F.interpolate(score[:, None], size=size, mode='bilinear', align_corners=True)[:, 0]
    if mode == 'crop':
        padded = (score.shape[-2] * 4, score.shape[-1] * 4)
        if padded[0] < size[0] or padded[1] < size[1]:
            raise ValueError(f'outlier mask {size} is larger than the padded input {padded}')
        full = F.interpolate(score[:, None], size=padded, mode='bilinear', align_corners=False)
        return full[:, 0, : size[0], : size[1]]
    raise ValueError(f'resample must be one of {_RESAMPLE_MODES}, got {mode!r}')


def _pooled_mean(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor | None:
    """Mean of `values[where]`, or None when `where` selects nothing."""
    if not bool(where.any()):
        return None
    return values[where].mean()


def combine_terms(
    inlier_loss: torch.Tensor, outlier_loss: torch.Tensor, ood_masks: torch.Tensor
) -> torch.Tensor:
    """0.5 · (pooled inlier mean + pooled outlier mean), skipping an empty side.

    Args:
        inlier_loss: (B, H, W) per-pixel loss used where the outlier mask is False.
        outlier_loss: (B, H, W) per-pixel loss used where it is True.
        ood_masks: (B, H, W) bool, True on pasted outlier pixels.

    Returns:
        Scalar loss. The official code skips only the outlier term when it is empty (an
        all-outlier batch would give NaN there); an empty inlier side is skipped as well.
    """
    terms = [
        term
        for term in (
            _pooled_mean(inlier_loss, ~ood_masks),
            _pooled_mean(outlier_loss, ood_masks),
        )
        if term is not None
    ]
    if not terms:
        return inlier_loss.sum() * 0.0
    return 0.5 * torch.stack(terms).sum()


def compute_per_pixel_terms(
    negative_likelihood: torch.Tensor, variant: ContrastiveVariant, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel inlier and outlier losses of a variant.

    Args:
        negative_likelihood: (...) float l_N.
        variant: 'reference', 'hinge_on_score' or 'bce'.
        margin: m of Eq. 11.

    Returns:
        (inlier_loss, outlier_loss), both shaped like the input.
    """
    if variant == 'reference':
        return negative_likelihood.pow(2), torch.clamp(margin - negative_likelihood, min=0).pow(2)
    if variant == 'hinge_on_score':
        anomaly_score = 1.0 + negative_likelihood
        return anomaly_score.pow(2), torch.clamp(margin - anomaly_score, min=0).pow(2)
    if variant == 'bce':
        zeros = torch.zeros_like(negative_likelihood)
        inlier = F.binary_cross_entropy_with_logits(negative_likelihood, zeros, reduction='none')
        outlier = F.binary_cross_entropy_with_logits(
            negative_likelihood, zeros + 1.0, reduction='none'
        )
        return inlier, outlier
    raise ValueError(f'contrastive variant must be one of {_VARIANTS}, got {variant!r}')


def compute_mask_contrastive_loss(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    ood_masks: torch.Tensor,
    config: ContrastiveLossConfig,
) -> torch.Tensor:
    """Mask contrastive loss of one decoder output (unweighted).

    Args:
        class_logits: (B, Q, K+1) float class logits.
        mask_logits: (B, Q, h, w) float mask logits at 1/4 of the padded input.
        ood_masks: (B, H, W) bool outlier mask M_OOD of the unpadded crops (True = pasted
            outlier pixel; every other pixel, void included, is an inlier).
        config: variant, margin and resampling.

    Returns:
        Scalar float32 loss.
    """
    if ood_masks.dim() != 3 or ood_masks.shape[0] != class_logits.shape[0]:
        raise ValueError(
            f'ood_masks must be (B, H, W) with B = {class_logits.shape[0]}, '
            f'got {tuple(ood_masks.shape)}'
        )
    negative_likelihood = compute_negative_likelihood(class_logits, mask_logits)
    size = (int(ood_masks.shape[-2]), int(ood_masks.shape[-1]))
    negative_likelihood = resample_to_outlier_mask(negative_likelihood, size, config.resample)
    inlier_loss, outlier_loss = compute_per_pixel_terms(
        negative_likelihood, config.variant, config.margin
    )
    return combine_terms(inlier_loss, outlier_loss, ood_masks.to(torch.bool))
