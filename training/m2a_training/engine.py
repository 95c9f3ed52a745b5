"""One optimisation step of Mask2Anomaly training (single process; the trainer builds on it).

Official recipe pieces used here: AdamW over the trainable parameters only (a frozen backbone
never enters the optimiser), weight decay 0.05 except 0 for normalisation layers and embeddings,
and full-model gradient clipping to L2 norm 0.01 (Mask2Former's CLIP_TYPE full_model,
CLIP_VALUE 0.01). A non-finite loss raises instead of stepping, so a run can stop with the last
good checkpoint intact.

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
) -> StepResult:
    """Forward, loss, backward, clip and step on one batch.

    Args:
        model: Mask2Anomaly in training mode, returning the four training outputs.
        criterion: the set criterion (with the contrastive loss in stage 2).
        optimizer: e.g. from `build_optimizer`.
        batch: a collated batch on the model's device.
        max_grad_norm: full-model gradient clipping norm, or None to disable.
        generator: random generator for the criterion's point sampling.

    Returns:
        The loss, its terms and the gradient norm before clipping.

    Raises:
        FloatingPointError: the outputs or the loss are NaN or infinite (the parameters are
            left untouched).
    """
    model.train()
    outputs = model(batch.images)
    # Non-finite predictions would otherwise surface as an obscure matcher error.
    if not all(bool(torch.isfinite(output).all()) for output in outputs[:2]):
        raise FloatingPointError(
            f'non-finite model outputs on images {batch.names}; no optimiser step was taken'
        )
    losses = criterion(outputs, batch.targets, batch.ood_masks, generator)
    loss_value = float(losses.total.detach())
    if not math.isfinite(loss_value):
        bad = sorted(k for k, v in losses.terms.items() if not torch.isfinite(v))
        raise FloatingPointError(
            f'non-finite training loss {loss_value} (terms {bad}) on images {batch.names}; '
            'no optimiser step was taken'
        )
    optimizer.zero_grad(set_to_none=True)
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
    optimizer.step()
    return StepResult(
        loss=loss_value,
        terms={k: float(v.detach()) for k, v in losses.terms.items()},
        grad_norm=grad_norm,
    )
