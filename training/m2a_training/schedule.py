"""Learning-rate schedule: detectron2's WarmupPolyLR (the official Mask2Former schedule).

lr(it) = base_lr · warmup(it) · (1 − it / max_iters)^power, with a linear warm-up from
`warmup_factor` over `warmup_iters` (the official config has none) and the lr reaching 0 at
`max_iters`. The scheduler is stepped once per iteration, after the optimiser step.

Allowed dependencies: torch.
"""

from __future__ import annotations

import torch


class PolyWithWarmup:
    """Multiplier of the base lr at iteration `it` (a picklable `LambdaLR` lambda).

    `LambdaLR.state_dict` stores this object's attributes (plain numbers), so a resumed run
    can be checked against its config.
    """

    def __init__(
        self, max_iters: int, power: float = 0.9, warmup_iters: int = 0, warmup_factor: float = 1.0
    ) -> None:
        if max_iters <= 0:
            raise ValueError(f'max_iters must be positive, got {max_iters}')
        self.max_iters = int(max_iters)
        self.power = float(power)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, iteration: int) -> float:
        warmup = 1.0
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            warmup = self.warmup_factor * (1.0 - alpha) + alpha
        progress = min(iteration, self.max_iters) / self.max_iters
        return warmup * (1.0 - progress) ** self.power


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    max_iters: int,
    power: float = 0.9,
    warmup_iters: int = 0,
    warmup_factor: float = 1.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Poly schedule with optional linear warm-up for every parameter group."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, PolyWithWarmup(max_iters, power, warmup_iters, warmup_factor)
    )
