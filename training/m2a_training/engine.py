"""One optimisation step of Mask2Anomaly training (single process; the trainer builds on it).

Official recipe pieces used here: AdamW over the trainable parameters only (a frozen backbone
never enters the optimiser), weight decay 0.05 except 0 for normalisation layers and embeddings,
and full-model gradient clipping to L2 norm 0.01 (Mask2Former's CLIP_TYPE full_model,
CLIP_VALUE 0.01), and optionally mixed precision with a gradient scaler (detectron2's AMPTrainer:
autocast over the forward pass and the losses, unscale before clipping). A non-finite loss raises
instead of stepping, so a run can stop with the last good checkpoint intact; under
DistributedDataParallel every rank takes that decision together, so no rank is left waiting in a
collective.

Allowed dependencies: torch, m2a_training.losses, m2a_training.data.cityscapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from m2a_training.data.cityscapes import TrainingBatch
from m2a_training.losses.criterion import SetCriterion

_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


@dataclass(frozen=True)
class StepResult:
    """Outcome of one step: the weighted loss, its unweighted terms and the pre-clip norm."""

    loss: float
    terms: dict[str, float]
    grad_norm: float


def build_optimizer(
    model: nn.Module, *, lr: float = 1e-4, weight_decay: float = 0.05
) -> torch.optim.AdamW:
    """AdamW over trainable parameters; no weight decay on norm layers and embeddings.

    Args:
        model: the network; parameters with requires_grad False are left out.
        lr: base learning rate (stage 1: 1e-4, stage 2: 1e-5).
        weight_decay: decay of all other parameters (0.05).

    Returns:
        The optimiser with two parameter groups (decayed, not decayed).
    """
    decayed: list[nn.Parameter] = []
    undecayed: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        no_decay = isinstance(module, (*_NORM_TYPES, nn.Embedding))
        for parameter in module.parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            (undecayed if no_decay else decayed).append(parameter)
    if not decayed and not undecayed:
        raise ValueError('the model has no trainable parameters')
    return torch.optim.AdamW(
        [
            {'params': decayed, 'weight_decay': weight_decay},
            {'params': undecayed, 'weight_decay': 0.0},
        ],
        lr=lr,
    )


def train_step(
    model: nn.Module,
    criterion: SetCriterion,
    optimizer: torch.optim.Optimizer,
    batch: TrainingBatch,
    *,
    max_grad_norm: float | None = 0.01,
    generator: torch.Generator | None = None,
    scaler: torch.amp.GradScaler | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> StepResult:
    """Forward, loss, backward, clip and step on one batch.

    Args:
        model: Mask2Anomaly in training mode, returning the four training outputs (possibly
            wrapped in DistributedDataParallel).
        criterion: the set criterion (with the contrastive loss in stage 2).
        optimizer: e.g. from `build_optimizer`.
        batch: a collated batch on the model's device.
        max_grad_norm: full-model gradient clipping norm, or None to disable.
        generator: random generator for the criterion's point sampling.
        scaler: gradient scaler for float16 mixed precision; it may skip the optimiser step
            when the scaled gradients overflow (that is not an error).
        autocast_dtype: run the forward pass and the losses under autocast with this dtype;
            None runs in the parameters' dtype.

    Returns:
        The loss, its terms and the gradient norm before clipping.

    Raises:
        FloatingPointError: the outputs or the loss are NaN or infinite (the parameters are
            left untouched).
    """
    model.train()
    device = batch.images.device
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        outputs = model(batch.images)
        # Non-finite predictions would otherwise surface as an obscure matcher error.
        finite = all(
            bool(torch.isfinite(logits).all())
            for logits in (outputs.class_logits, outputs.mask_logits)
        )
        if not _finite_on_all_ranks(finite, device):
            raise FloatingPointError(
                f'non-finite model outputs (images {batch.names} on this rank: '
                f'{"finite" if finite else "non-finite"}); no optimiser step was taken'
            )
        losses = criterion(outputs, batch.targets, batch.ood_masks, generator, model=model)
    loss_value = float(losses.total.detach())
    if not _finite_on_all_ranks(math.isfinite(loss_value), device):
        bad = sorted(k for k, v in losses.terms.items() if not torch.isfinite(v))
        raise FloatingPointError(
            f'non-finite training loss (this rank: {loss_value}, non-finite terms {bad}, '
            f'images {batch.names}); no optimiser step was taken'
        )
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(losses.total).backward()
        # Clip the true gradients, not the scaled ones, as Mask2Former's clipping optimiser
        # does under detectron2's AMPTrainer (GradScaler.step unscales before stepping).
        scaler.unscale_(optimizer)
    else:
        losses.total.backward()
    parameters = [p for group in optimizer.param_groups for p in group['params']]
    if max_grad_norm is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm))
    else:
        grad_norm = float(
            torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in parameters if p.grad is not None])
            )
        )
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return StepResult(
        loss=loss_value,
        terms={k: float(v.detach()) for k, v in losses.terms.items()},
        grad_norm=grad_norm,
    )


def _finite_on_all_ranks(finite: bool, device: torch.device) -> bool:
    """True if `finite` holds on every rank (one all-reduce under DDP, none otherwise)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return finite
    flag = torch.tensor([0.0 if finite else 1.0], device=device)
    torch.distributed.all_reduce(flag)
    return bool(flag.item() == 0.0)
