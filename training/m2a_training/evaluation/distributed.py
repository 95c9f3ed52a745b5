"""Splitting an evaluation over processes started by `torchrun` (one node or several).

Each rank evaluates the frames `rank, rank + world_size, ...` of every dataset and keeps its own
metric accumulators; rank 0 gathers them (pickled, over a gloo group so that CPU numpy states
travel on any machine) and merges them in rank order. Thresholds decided on rank 0 are broadcast
back. Without torchrun (`WORLD_SIZE` unset or 1) everything runs in-process.

Allowed dependencies: torch.distributed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands.

    Attributes:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        object_group: gloo process group for pickled-object collectives (None: single process).
        owns_group: this context initialised the default group (and destroys it at the end).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    object_group: Any = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> tuple[DistributedContext, torch.device]:
    """Join the torchrun job described by the environment, if any.

    Args:
        device: the requested device; with CUDA and several ranks, each rank takes
            `cuda:LOCAL_RANK`.

    Returns:
        The context and the device this rank should use.
    """
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size <= 1:
        return DistributedContext(), device
    rank = int(os.environ['RANK'])
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    owns = False
    if not dist.is_initialized():
        backend = 'cpu:gloo,cuda:nccl' if device.type == 'cuda' else 'gloo'
        if device.type == 'cuda':
            device = torch.device('cuda', local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        owns = True
    # The metric states are CPU objects; a dedicated gloo group carries them whatever the
    # default backend is.
    group = dist.new_group(backend='gloo') if device.type == 'cuda' else dist.group.WORLD
    LOGGER.info('rank %d of %d on %s', rank, world_size, device)
    return DistributedContext(rank, world_size, local_rank, group, owns), device


def shard_indices(num_items: int, context: DistributedContext) -> list[int]:
    """Indices this rank evaluates: a strided split, so ranks get near-equal shares of each
    dataset whatever its order."""
    return list(range(context.rank, num_items, context.world_size))


def gather_to_main(obj: Any, context: DistributedContext) -> list[Any] | None:
    """Objects of all ranks in rank order on rank 0; None elsewhere."""
    if not context.is_distributed:
        return [obj]
    gathered: list[Any] | None = [None] * context.world_size if context.is_main else None
    dist.gather_object(obj, gathered, dst=0, group=context.object_group)
    return gathered


def broadcast_from_main(obj: Any, context: DistributedContext) -> Any:
    """Rank 0's `obj` on every rank."""
    if not context.is_distributed:
        return obj
    holder = [obj if context.is_main else None]
    dist.broadcast_object_list(holder, src=0, group=context.object_group)
    return holder[0]


def barrier(context: DistributedContext) -> None:
    """Wait for all ranks."""
    if context.is_distributed:
        dist.barrier(group=context.object_group)


def shutdown(context: DistributedContext) -> None:
    """Leave the job (destroys the default group only if this module created it)."""
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()
