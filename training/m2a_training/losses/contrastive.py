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
outlier term is skipped when the batch has no outlier pixel. The margin defaults to the official
code's 1.0 (`mask2former/config.py` line 119, `MARGIN = 1.0`, which produced the released
checkpoints); the paper's 0.75 is the named variant `margin: paper`.

Across processes (`torchrun`) the per-pixel sums and counts of both terms are all-reduced before
the division (`pool_across_ranks`), so every world size gives the single-process loss and
gradients: the official code trained on one GPU, whose batch pools all images.

Allowed dependencies: torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

ContrastiveVariant = Literal['reference', 'hinge_on_score', 'bce']
MarginName = Literal['official', 'paper']
# `mask2former/config.py` line 119 of the official code; the paper reports 0.75 as its best.
MARGINS: dict[str, float] = {'official': 1.0, 'paper': 0.75}
ResampleMode = Literal['stretch', 'crop']
_VARIANTS = ('reference', 'hinge_on_score', 'bce')
_RESAMPLE_MODES = ('stretch', 'crop')


@dataclass(frozen=True)
class ContrastiveLossConfig:
    """Mask contrastive loss settings.

    Attributes:
        variant: 'reference' (official code), 'hinge_on_score' (corrected) or 'bce' (Eq. 26).
        margin: m of Eq. 11, a number or a name in `MARGINS`: 'official' (1.0, the default,
            as the official code) or 'paper' (0.75). Stored as the number. Unused by 'bce'.
        resample: how the 1/4-resolution score reaches the outlier mask. 'stretch' is the
            official behaviour: bilinear with align_corners=True from the (padded) mask
            resolution straight to the unpadded outlier-mask size, which stretches the padding
            over the image (about 1 % misalignment at the bottom/right for 380×760 crops).
            'crop' upsamples to the padded input size (align_corners=False, ×4) and crops the
            top-left H×W, which keeps pixels aligned.
        weight: weight of the loss in the total (official OOD_WEIGHT 1.0).
    """

    variant: ContrastiveVariant = 'reference'
    margin: float | MarginName = MARGINS['official']
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
        if isinstance(self.margin, str):
            if self.margin not in MARGINS:
                raise ValueError(
                    f'margin must be a number or one of {sorted(MARGINS)}, got {self.margin!r}'
                )
            object.__setattr__(self, 'margin', MARGINS[self.margin])


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


def pool_across_ranks(totals: torch.Tensor) -> torch.Tensor:
    """Sum per-rank totals over the process group, differentiably; identity in one process.

    The backward of `torch.distributed.nn.functional.all_reduce` all-reduces the incoming
    gradients too, so each rank's local sums receive world_size times the single-process
    gradient; DistributedDataParallel's mean over ranks then gives exactly the single-process
    parameter gradient.

    Args:
        totals: (N,) float tensor of per-rank sums and counts.

    Returns:
        (N,) the sums over all ranks.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return totals
    if torch.distributed.get_world_size() == 1:
        return totals
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(totals)


def combine_terms(
    inlier_loss: torch.Tensor, outlier_loss: torch.Tensor, ood_masks: torch.Tensor
) -> torch.Tensor:
    """0.5 · (pooled inlier mean + pooled outlier mean), skipping an empty side.

    The means pool every pixel of the batch on every rank: per-pixel sums and counts are
    all-reduced (`pool_across_ranks`) before the division, so the value and the gradients do not
    depend on how the batch is split over processes.

    Args:
        inlier_loss: (B, H, W) per-pixel loss used where the outlier mask is False.
        outlier_loss: (B, H, W) per-pixel loss used where it is True.
        ood_masks: (B, H, W) bool, True on pasted outlier pixels.

    Returns:
        Scalar loss. The official code skips only the outlier term when it is empty (an
        all-outlier batch would give NaN there); an empty inlier side is skipped as well. The
        decision uses the global counts, so all ranks take it together.
    """
    outlier = ood_masks.to(inlier_loss.dtype)
    inlier = 1.0 - outlier
    totals = pool_across_ranks(
        torch.stack(
            [
                (inlier_loss * inlier).sum(),
                (outlier_loss * outlier).sum(),
                inlier.sum(),
                outlier.sum(),
            ]
        )
    )
    inlier_sum, outlier_sum, inlier_count, outlier_count = totals.unbind()
    # One host sync for both emptiness tests.
    has_inlier, has_outlier = (totals[2:] > 0).tolist()
    terms = []
    if has_inlier:
        terms.append(inlier_sum / inlier_count)
    if has_outlier:
        terms.append(outlier_sum / outlier_count)
    if not terms:
        return totals[0] * 0.0
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
