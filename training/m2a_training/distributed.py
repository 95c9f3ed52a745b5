"""Process-group set-up for `torchrun` (one process per device) and the single-process case.

Under `torchrun` the environment carries RANK, WORLD_SIZE and LOCAL_RANK; the process group uses
NCCL on CUDA and gloo on CPU, and each rank drives `cuda:LOCAL_RANK`. Without those variables the
same code runs as one process with no process group, so every collective below is a no-op.

Allowed dependencies: standard library, torch.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 in a single-process run).
        world_size: number of processes.
        local_rank: rank on this node (selects the CUDA device).
        device: the device this rank trains on.
        initialized: whether this call created a process group (and must destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device('cpu'))
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and TensorBoard events."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int) -> torch.device:
    """'auto' -> CUDA if available, else CPU; 'cuda' -> cuda:LOCAL_RANK (error if absent)."""
    if preference not in ('auto', 'cpu', 'cuda'):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {preference!r}")
    if preference == 'cpu' or (preference == 'auto' and not torch.cuda.is_available()):
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but no CUDA device is available")
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f'LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices'
        )
    return torch.device('cuda', local_rank)


def init_distributed(
    device_preference: str = 'auto', timeout_minutes: float = 30.0
) -> DistributedContext:
    """Join the torchrun process group if the environment describes one.

    Returns:
        The context; `initialized` is True if a process group was created here.
    """
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = resolve_device(device_preference, local_rank)
    if world_size <= 1:
        return DistributedContext(0, 1, 0, device, False)
    if dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    dist.init_process_group(
        backend,
        init_method='env://',
        timeout=datetime.timedelta(minutes=timeout_minutes),
        **({'device_id': device} if device.type == 'cuda' else {}),
    )
    logger.info('rank %d/%d joined the %s process group on %s', rank, world_size, backend, device)
    return DistributedContext(rank, world_size, local_rank, device, True)


def shutdown_distributed(context: DistributedContext) -> None:
    """Destroy the process group this job created."""
    if context.initialized and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's `value` (picklable), in rank order; `[value]` in a single process."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: Any, source: int = 0) -> Any:
    """Rank `source`'s `value` on every rank."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=source)
    return holder[0]


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean over ranks of scalar logs (same keys on every rank)."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist(), strict=True))
