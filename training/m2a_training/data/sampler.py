"""Stateless, resumable batches: `IterationBatches[it]` is this rank's share of batch `it`.

The global stream of training samples is an endless sequence of epochs; epoch e visits the images
in the order of a permutation drawn from `np.random.default_rng([seed, e])`. Sample position p
(0, 1, 2, ... over the whole run) is image `perm_e[p mod N]` with e = p div N, and its
augmentation draw is p itself, so the image and every random choice of its augmentation follow
from (seed, p) alone. Global batch `it` holds positions it·B ... it·B + B − 1, and rank r takes
the slice r·B/W ... (r+1)·B/W − 1 of it (B global batch, W world size).

So the data-sampler position of a run is just the number of samples consumed: a resumed run, or
a data-loader worker, computes any batch without replaying the ones before it, and a run resumed
on another number of ranks (same global batch) sees the same global batches.

Allowed dependencies: numpy, torch, m2a_training.data.cityscapes.
"""

from __future__ import annotations

import numpy as np
import torch

from m2a_training.data.cityscapes import (
    CityscapesDataset,
    TrainingBatch,
    collate_training_batch,
)


class IterationBatches(torch.utils.data.Dataset):
    """Map-style dataset over iterations: `batches[it]` is a collated `TrainingBatch`.

    Use with `DataLoader(batches, batch_size=None, sampler=range(start, max_iters))`.

    Args:
        dataset: the training images, indexable by `(index, draw)`.
        global_batch: images per iteration over all ranks.
        rank, world_size: this process's share of every global batch.
        seed: seed of the epoch permutations.
        pixel_mean, pixel_std, size_divisibility: collation (the model's normalisation).
    """

    def __init__(
        self,
        dataset: CityscapesDataset,
        *,
        global_batch: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        pixel_mean: tuple[float, float, float],
        pixel_std: tuple[float, float, float],
        size_divisibility: int = 32,
    ) -> None:
        if global_batch <= 0 or world_size <= 0:
            raise ValueError('global_batch and world_size must be positive')
        if global_batch % world_size:
            raise ValueError(
                f'the global batch {global_batch} does not split evenly over {world_size} ranks'
            )
        if not 0 <= rank < world_size:
            raise ValueError(f'rank {rank} outside [0, {world_size})')
        if len(dataset) == 0:
            raise ValueError('the training dataset is empty')
        self.dataset = dataset
        self.global_batch = global_batch
        self.per_rank = global_batch // world_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.pixel_mean = pixel_mean
        self.pixel_std = pixel_std
        self.size_divisibility = size_divisibility
        self._permutation: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        """Image order of `epoch` (cached: consecutive batches share an epoch)."""
        if self._permutation is None or self._permutation[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
            self._permutation = (epoch, order)
        return self._permutation[1]

    def positions(self, iteration: int) -> range:
        """Global sample positions of this rank's share of batch `iteration`."""
        start = iteration * self.global_batch + self.rank * self.per_rank
        return range(start, start + self.per_rank)

    def keys(self, iteration: int) -> list[tuple[int, int]]:
        """`(image index, augmentation draw)` of every sample of this rank's share."""
        size = len(self.dataset)
        return [(int(self.permutation(p // size)[p % size]), p) for p in self.positions(iteration)]

    def __getitem__(self, iteration: int) -> TrainingBatch:
        samples = [self.dataset[key] for key in self.keys(int(iteration))]
        return collate_training_batch(
            samples,
            pixel_mean=self.pixel_mean,
            pixel_std=self.pixel_std,
            size_divisibility=self.size_divisibility,
        )


def keep_batch(batch: TrainingBatch) -> TrainingBatch:
    """Identity `collate_fn` (the dataset already collates); module-level so workers pickle it."""
    return batch
