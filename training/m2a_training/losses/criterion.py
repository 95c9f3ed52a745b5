"""Set criterion of Mask2Former / Mask2Anomaly with deep supervision.

For every decoder output (the final one and each auxiliary one) the queries are matched to the
targets (`matcher.py`), then:
- `loss_ce`: cross-entropy over K+1 classes for all queries (unmatched queries target "no
  object"), class weights 1 and `no_object_weight` (0.1) for "no object", weighted mean;
- `loss_mask` / `loss_dice`: BCE and Dice of the matched masks on `num_points` points chosen by
  PointRend importance sampling (oversample 3.0, importance 0.75), each normalised by the number
  of target masks in the (global) batch;
- `loss_ood` (optional): the mask contrastive loss over all queries (`contrastive.py`);
- `loss_kan_reg` (only for a model with KAN layers, `mask_embed: kan`): efficient-KAN's spline
  regulariser (L1 of the spline weights plus their entropy) over the model's parameters, once
  per step, weighted by `kan_regularization_weight`. A model without KAN layers (the default
  MLP head) gets no such term, so its total is unchanged.
- `loss_centroid`, `loss_centroid_tv`, `loss_centroid_dice` (only for a model with the
  class-agnostic instance head, `instance_head.kind: centroid`): seed 004's centroid
  positional-embedding loss with edge distance sampling, total variation and generalised Dice
  (`instance.py`), on the final output once per step, weighted by `centroid_weight`,
  `centroid_tv_weight`, `centroid_dice_weight`. Without the head there are no such terms.
Terms are named like the official ones (`loss_ce`, then `loss_ce_0`, ... for the auxiliary
outputs in decoder order) and the total uses weights 2 / 5 / 5 / 1 on every output.

Allowed dependencies: torch, scipy (through the matcher).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from m2a_perception.classes import thing_train_ids
from m2a_perception.model.kan import kan_regularization_loss
from m2a_perception.types import (
    InstanceNetworkOutput,
    InstanceTrainingOutput,
    NetworkOutput,
    TrainingOutput,
    instance_embedding_of,
)
from m2a_training.losses.contrastive import ContrastiveLossConfig, compute_mask_contrastive_loss
from m2a_training.losses.instance import compute_instance_losses
from m2a_training.losses.matcher import MatcherConfig, match_predictions
from m2a_training.losses.point_sampling import sample_points, sample_uncertain_points
from m2a_training.losses.targets import MaskTargets


@dataclass(frozen=True)
class CriterionConfig:
    """Loss weights and point sampling (official Mask2Former Cityscapes values).

    Attributes:
        num_classes: K known classes; the class head has K+1 logits.
        no_object_weight: cross-entropy weight of the "no object" class (EOS coefficient).
        class_weight, mask_weight, dice_weight: loss weights (λ_ce 2, λ_bce 5, λ_dice 5); the
            matcher uses the same values as its cost weights.
        num_points: points per mask for BCE and Dice (and for matching).
        oversample_ratio, importance_sample_ratio: PointRend importance sampling.
        deep_supervision: also apply every loss to the auxiliary decoder outputs.
        contrastive: mask contrastive loss settings, or None for stage 1 (no outlier loss).
        kan_regularization_weight: λ1 of Mask2KAN's `L_seg + λ1·L_reg` (the thesis gives no
            value; 1e-4 is the digest's starting point, seeds-digest.md §5.5).
        kan_entropy_weight: weight of the entropy term inside `L_reg` (efficient-KAN: 1).
        centroid_weight, centroid_tv_weight, centroid_dice_weight: weights of the instance-head
            losses (seed 004 gives none; 1 each is our starting point).
        centroid_eds_min_weight, centroid_eds_distance: edge distance sampling w_min and D in
            pixels of the 1/4-resolution embedding (paper: 0 and 20, at 8/14 of its input).
        centroid_thing_ids: class ids whose target masks are instances for the head (default
            the Cityscapes things 11..18).
    """

    num_classes: int = 19
    no_object_weight: float = 0.1
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    deep_supervision: bool = True
    contrastive: ContrastiveLossConfig | None = None
    kan_regularization_weight: float = 1e-4
    kan_entropy_weight: float = 1.0
    centroid_weight: float = 1.0
    centroid_tv_weight: float = 1.0
    centroid_dice_weight: float = 1.0
    centroid_eds_min_weight: float = 0.0
    centroid_eds_distance: float = 20.0
    centroid_thing_ids: tuple[int, ...] = field(default_factory=thing_train_ids)

    def __post_init__(self) -> None:
        if self.num_classes <= 0:
            raise ValueError(f'num_classes must be positive, got {self.num_classes}')
        if self.no_object_weight < 0.0:
            raise ValueError(f'no_object_weight must be >= 0, got {self.no_object_weight}')
        if (
            min(
                self.class_weight,
                self.mask_weight,
                self.dice_weight,
                self.kan_regularization_weight,
                self.kan_entropy_weight,
                self.centroid_weight,
                self.centroid_tv_weight,
                self.centroid_dice_weight,
            )
            < 0
        ):
            raise ValueError('loss weights must be non-negative')
        if not 0.0 <= self.centroid_eds_min_weight <= 1.0:
            raise ValueError(
                f'centroid_eds_min_weight must be in [0, 1], got {self.centroid_eds_min_weight}'
            )
        if not self.centroid_eds_distance > 0:
            raise ValueError(
                f'centroid_eds_distance must be positive, got {self.centroid_eds_distance}'
            )
        object.__setattr__(
            self, 'centroid_thing_ids', tuple(int(i) for i in self.centroid_thing_ids)
        )
        if self.num_points <= 0 or self.oversample_ratio < 1.0:
            raise ValueError('num_points must be > 0 and oversample_ratio >= 1')
        if not 0.0 <= self.importance_sample_ratio <= 1.0:
            raise ValueError('importance_sample_ratio must be in [0, 1]')

    def matcher_config(self) -> MatcherConfig:
        """The matcher's cost weights equal the loss weights (official config)."""
        return MatcherConfig(
            class_weight=self.class_weight,
            mask_weight=self.mask_weight,
            dice_weight=self.dice_weight,
            num_points=self.num_points,
        )


@dataclass(frozen=True)
class LossOutput:
    """Result of the criterion.

    Attributes:
        total: scalar weighted sum over all terms of all decoder outputs (what to backprop).
        terms: unweighted scalar terms by official name (`loss_ce`, `loss_mask`, `loss_dice`,
            `loss_ood`, and `<name>_<i>` for auxiliary output i).
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


def sigmoid_ce_loss(
    point_logits: torch.Tensor, point_labels: torch.Tensor, num_masks: float
) -> torch.Tensor:
    """BCE averaged over points, summed over masks, divided by `num_masks`.

    Args:
        point_logits: (N, P) float mask logits at P points.
        point_labels: (N, P) float targets in [0, 1].
        num_masks: normaliser (number of target masks in the batch, >= 1).
    """
    loss = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction='none')
    return loss.mean(1).sum() / num_masks


def dice_loss(
    point_logits: torch.Tensor, point_labels: torch.Tensor, num_masks: float
) -> torch.Tensor:
    """Dice loss with +1 smoothing, summed over masks, divided by `num_masks`.

    Args:
        point_logits: (N, P) float mask logits at P points.
        point_labels: (N, P) float targets in [0, 1].
        num_masks: normaliser (number of target masks in the batch, >= 1).
    """
    probs = point_logits.sigmoid()
    numerator = 2.0 * (probs * point_labels).sum(-1)
    denominator = probs.sum(-1) + point_labels.sum(-1)
    return (1.0 - (numerator + 1.0) / (denominator + 1.0)).sum() / num_masks


def compute_class_loss(
    class_logits: torch.Tensor,
    targets: Sequence[MaskTargets],
    indices: Sequence[tuple[torch.Tensor, torch.Tensor]],
    class_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted cross-entropy of all queries; unmatched queries target "no object" (= K).

    Args:
        class_logits: (B, Q, K+1) float class logits.
        targets: B per-image targets.
        indices: B matches (query_indices, target_indices).
        class_weights: (K+1,) float per-class weights (1, ..., 1, no_object_weight).

    Returns:
        Scalar: Σ w_{y}·CE / Σ w_{y} over all B·Q queries (PyTorch's weighted mean).
    """
    batch, num_queries, num_logits = class_logits.shape
    target_classes = torch.full(
        (batch, num_queries), num_logits - 1, dtype=torch.int64, device=class_logits.device
    )
    for b, (query_idx, target_idx) in enumerate(indices):
        labels = targets[b].labels.to(class_logits.device)
        target_classes[b, query_idx.to(class_logits.device)] = labels[target_idx.to(labels.device)]
    return F.cross_entropy(
        class_logits.float().transpose(1, 2), target_classes, weight=class_weights.float()
    )


def compute_mask_losses(
    mask_logits: torch.Tensor,
    targets: Sequence[MaskTargets],
    indices: Sequence[tuple[torch.Tensor, torch.Tensor]],
    num_masks: float,
    config: CriterionConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point-sampled BCE and Dice of the matched masks.

    Args:
        mask_logits: (B, Q, h, w) float mask logits at 1/4 of the padded input.
        targets: B per-image targets, masks in the padded input frame (any resolution).
        indices: B matches (query_indices, target_indices).
        num_masks: normaliser (global number of target masks, >= 1).
        config: point counts.
        generator: random generator on `mask_logits.device`, or None for the global one.

    Returns:
        (loss_mask, loss_dice) scalars; zero (with a graph) when nothing is matched.
    """
    predicted: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for b, (query_idx, target_idx) in enumerate(indices):
        if query_idx.numel() == 0:
            continue
        predicted.append(mask_logits[b, query_idx.to(mask_logits.device)])
        target_masks = targets[b].masks.to(device=mask_logits.device, dtype=torch.float32)
        labels.append(target_masks[target_idx.to(mask_logits.device)])
    if not predicted:
        zero = mask_logits.sum() * 0.0
        return zero, zero
    # Target masks may differ in size between images only if the caller did not pad them to
    # one frame; point sampling in normalised coordinates handles each image separately.
    point_logits_parts = []
    point_labels_parts = []
    for src, tgt in zip(predicted, labels, strict=True):
        src = src[:, None].float()
        with torch.no_grad():
            coords = sample_uncertain_points(
                src,
                config.num_points,
                config.oversample_ratio,
                config.importance_sample_ratio,
                generator,
            )
            point_labels_parts.append(sample_points(tgt[:, None], coords)[:, 0])
        point_logits_parts.append(sample_points(src, coords)[:, 0])
    point_logits = torch.cat(point_logits_parts)
    point_labels = torch.cat(point_labels_parts)
    return (
        sigmoid_ce_loss(point_logits, point_labels, num_masks),
        dice_loss(point_logits, point_labels, num_masks),
    )


def count_target_masks(targets: Sequence[MaskTargets], device: torch.device) -> float:
    """Number of target masks per process, averaged over the process group, at least 1.

    Under DistributedDataParallel every rank normalises by the same global count (all-reduced
    and divided by the world size), as the official criterion does.
    """
    count = torch.tensor(
        [float(sum(t.num_targets for t in targets))], dtype=torch.float32, device=device
    )
    world_size = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(count)
        world_size = torch.distributed.get_world_size()
    return max(float(count.item()) / world_size, 1.0)


class SetCriterion(nn.Module):
    """Matching + class/mask/dice losses (+ mask contrastive loss) on every decoder output."""

    def __init__(self, config: CriterionConfig) -> None:
        super().__init__()
        self.config = config
        self.matcher_config = config.matcher_config()
        class_weights = torch.ones(config.num_classes + 1)
        class_weights[-1] = config.no_object_weight
        # The official criterion keeps this as a buffer (`criterion.empty_weight`), so it is
        # saved in checkpoints and moves with the module.
        self.register_buffer('empty_weight', class_weights)

    def forward(
        self,
        outputs: NetworkOutput | TrainingOutput | InstanceNetworkOutput | InstanceTrainingOutput,
        targets: Sequence[MaskTargets],
        ood_masks: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        model: nn.Module | None = None,
    ) -> LossOutput:
        """Compute all losses.

        Args:
            outputs: the training-mode model output (`TrainingOutput`: class_logits
                (B, Q, K+1), mask_logits (B, Q, h, w), aux_class_logits (L, B, Q, K+1),
                aux_mask_logits (L, B, Q, h, w)), or a `NetworkOutput` without the auxiliary
                predictions; or their `Instance*` forms (a model with the instance head), whose
                `instance_embedding` gets the instance-head losses.
            targets: B per-image targets, masks in the padded input frame.
            ood_masks: (B, H, W) bool outlier masks of the unpadded crops; required when the
                contrastive loss is configured.
            generator: random generator on the outputs' device for point sampling, or None.
            model: the network that produced `outputs`; its KAN layers (if any) get the KAN
                regulariser. None adds no regulariser.

        Returns:
            The weighted total and the unweighted terms.
        """
        if not isinstance(
            outputs,
            (NetworkOutput, TrainingOutput, InstanceNetworkOutput, InstanceTrainingOutput),
        ):
            raise TypeError(
                f'expected a NetworkOutput or TrainingOutput, got {type(outputs).__name__}'
            )
        class_logits, mask_logits = outputs.class_logits, outputs.mask_logits
        if class_logits.shape[-1] != self.config.num_classes + 1:
            raise ValueError(
                f'class_logits have {class_logits.shape[-1]} logits, expected '
                f'{self.config.num_classes + 1} (K + no object)'
            )
        if self.config.contrastive is not None and ood_masks is None:
            raise ValueError('the contrastive loss is configured but no ood_masks were given')
        predictions = [(class_logits, mask_logits, '')]
        if self.config.deep_supervision and isinstance(
            outputs, (TrainingOutput, InstanceTrainingOutput)
        ):
            aux_class, aux_mask = outputs.aux_class_logits, outputs.aux_mask_logits
            predictions += [
                (aux_class[i], aux_mask[i], f'_{i}') for i in range(aux_class.shape[0])
            ]
        num_masks = count_target_masks(targets, class_logits.device)

        terms: dict[str, torch.Tensor] = {}
        total = class_logits.new_zeros((), dtype=torch.float32)
        for cls, msk, suffix in predictions:
            indices = match_predictions(cls, msk, targets, self.matcher_config, generator)
            loss_ce = compute_class_loss(cls, targets, indices, self.empty_weight)
            loss_mask, loss_dice = compute_mask_losses(
                msk, targets, indices, num_masks, self.config, generator
            )
            terms[f'loss_ce{suffix}'] = loss_ce
            terms[f'loss_mask{suffix}'] = loss_mask
            terms[f'loss_dice{suffix}'] = loss_dice
            total = (
                total
                + self.config.class_weight * loss_ce
                + self.config.mask_weight * loss_mask
                + self.config.dice_weight * loss_dice
            )
            if self.config.contrastive is not None and ood_masks is not None:
                loss_ood = compute_mask_contrastive_loss(
                    cls, msk, ood_masks.to(msk.device), self.config.contrastive
                )
                terms[f'loss_ood{suffix}'] = loss_ood
                total = total + self.config.contrastive.weight * loss_ood
        kan_loss = (
            None
            if model is None
            else kan_regularization_loss(model, entropy_weight=self.config.kan_entropy_weight)
        )
        if kan_loss is not None:
            terms['loss_kan_reg'] = kan_loss
            total = total + self.config.kan_regularization_weight * kan_loss
        embedding = instance_embedding_of(outputs)
        if embedding is not None:
            config = self.config
            centroid, tv, dice = compute_instance_losses(
                embedding,
                targets,
                config.centroid_thing_ids,
                min_weight=config.centroid_eds_min_weight,
                distance=config.centroid_eds_distance,
            )
            terms['loss_centroid'] = centroid
            terms['loss_centroid_tv'] = tv
            terms['loss_centroid_dice'] = dice
            total = (
                total
                + config.centroid_weight * centroid
                + config.centroid_tv_weight * tv
                + config.centroid_dice_weight * dice
            )
        return LossOutput(total=total, terms=terms)
