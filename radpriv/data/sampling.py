"""Batch samplers for training.

Private training must sample each logical batch by Poisson sampling (every report joins a
batch independently with probability q): the privacy amplification the accountant assumes
holds only for that. Non-private training uses ordinary shuffled batches of fixed size.

Both samplers are reseeded from (seed, epoch) at every epoch (Lightning calls `set_epoch`),
so a run resumed at an epoch boundary draws exactly the batches of an uninterrupted run.
"""

from __future__ import annotations

import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import Sampler


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))


class PoissonBatchSampler(UniformWithReplacementSampler):
    """Opacus' Poisson sampler with a fixed number of steps per epoch and per-epoch seeding."""

    def __init__(self, num_samples: int, sample_rate: float, steps: int, seed: int):
        super().__init__(num_samples=num_samples, sample_rate=sample_rate,
                         generator=_epoch_generator(seed, 0), steps=steps)
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.generator = _epoch_generator(self.seed, epoch)


class ShuffledBatchSampler(Sampler[list[int]]):
    """A seeded random permutation cut into batches of `batch_size` (the last may be smaller)."""

    def __init__(self, num_samples: int, batch_size: int, seed: int):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self):
        perm = torch.randperm(self.num_samples, generator=_epoch_generator(self.seed, self.epoch))
        for start in range(0, self.num_samples, self.batch_size):
            yield perm[start:start + self.batch_size].tolist()
