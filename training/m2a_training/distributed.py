"""Process-group set-up for `torchrun` (one process per device) and the single-process case.

One context serves training and evaluation. Under `torchrun` the environment carries RANK,
WORLD_SIZE and LOCAL_RANK; the default process group uses NCCL on CUDA and gloo on CPU, and each
rank drives `cuda:LOCAL_RANK`. Pickled-object collectives (evaluation metric states, validation
results) run over a gloo group, so CPU objects travel whatever the default backend is. Without
those variables the same code runs as one process with no process group, and every collective
below is a no-op.

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
        device: the device this rank runs on.
        owns_group: this context created the default process group (and destroys it).
        object_group: gloo group for pickled-object collectives (None in a single process).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device('cpu'))
    owns_group: bool = False
    object_group: Any = None

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, reports, logs and TensorBoard events."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str | torch.device, local_rank: int) -> torch.device:
    """'auto' -> CUDA if available, else CPU; 'cuda' -> cuda:LOCAL_RANK (error if absent).

    A `torch.device` (or 'cuda:N') with an explicit index is kept as is.
    """
    if isinstance(preference, torch.device) or ':' in str(preference):
        device = torch.device(preference)
        if device.type == 'cuda' and device.index is None:
            return resolve_device('cuda', local_rank)
        if device.type == 'cuda' and not torch.cuda.is_available():
            raise RuntimeError(f'device {device} requested but no CUDA device is available')
        return device
    if preference not in ('auto', 'cpu', 'cuda'):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {preference!r}")
    if preference == 'cpu' or (preference == 'auto' and not torch.cuda.is_available()):
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f'LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices'
        )
    return torch.device('cuda', local_rank)


def init_distributed(
    device_preference: str | torch.device = 'auto', timeout_minutes: float = 30.0
) -> DistributedContext:
    """Join the torchrun process group if the environment describes one.

    Returns:
        The context; `owns_group` is True if a process group was created here.
    """
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if world_size <= 1:
        return DistributedContext(device=resolve_device(device_preference, 0))
    device = resolve_device(device_preference, local_rank)
    if device.type == 'cuda':
        # Several ranks on a node: each takes its own GPU.
        device = torch.device('cuda', local_rank)
    owns = False
    if not dist.is_initialized():
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        dist.init_process_group(
            backend,
            init_method='env://',
            timeout=datetime.timedelta(minutes=timeout_minutes),
            **({'device_id': device} if device.type == 'cuda' else {}),
        )
        owns = True
        logger.info(
            'rank %d/%d joined the %s process group on %s', rank, world_size, backend, device
        )
    group = dist.new_group(backend='gloo') if device.type == 'cuda' else dist.group.WORLD
    return DistributedContext(
        dist.get_rank(), dist.get_world_size(), local_rank, device, owns, group
    )


def shutdown_distributed(context: DistributedContext) -> None:
    """Destroy the process group this job created."""
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier(context: DistributedContext | None = None) -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        group = context.object_group if context is not None else None
        dist.barrier(group=group)


def shard_indices(num_items: int, context: DistributedContext) -> list[int]:
    """Indices this rank handles: a strided split, so ranks get near-equal shares of each
    dataset whatever its order."""
    return list(range(context.rank, num_items, context.world_size))


def all_gather_objects(value: Any, context: DistributedContext | None = None) -> list[Any]:
    """Every rank's `value` (picklable), in rank order; `[value]` in a single process."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    group = context.object_group if context is not None else None
    dist.all_gather_object(gathered, value, group=group)
    return gathered


def gather_to_main(obj: Any, context: DistributedContext) -> list[Any] | None:
    """Objects of all ranks in rank order on rank 0; None elsewhere."""
    if not context.is_distributed:
        return [obj]
    gathered: list[Any] | None = [None] * context.world_size if context.is_main else None
    dist.gather_object(obj, gathered, dst=0, group=context.object_group)
    return gathered


def broadcast_object(
    value: Any, source: int = 0, context: DistributedContext | None = None
) -> Any:
    """Rank `source`'s `value` on every rank."""
    if not is_distributed():
        return value
    holder = [value]
    group = context.object_group if context is not None else None
    dist.broadcast_object_list(holder, src=source, group=group)
    return holder[0]


def broadcast_from_main(obj: Any, context: DistributedContext) -> Any:
    """Rank 0's `obj` on every rank."""
    if not context.is_distributed:
        return obj
    return broadcast_object(obj if context.is_main else None, 0, context)


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean over ranks of scalar logs (same keys on every rank)."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist(), strict=True))
