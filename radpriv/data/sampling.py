"""Batch samplers for training.

Private training must sample each logical batch by Poisson sampling (every report joins a
batch independently with probability q): the privacy amplification the accountant assumes
holds only for that, and only while the draws are unknown to the adversary. The Poisson masks
therefore come from the run's private randomness (radpriv/privacy/randomness.py: fresh OS
entropy at every invocation, never the logged seed), and a resumed run draws new batches.

Non-private training uses ordinary shuffled batches of fixed size, reseeded from (seed, epoch)
at every epoch (Lightning calls `set_epoch`): a non-private run is reproducible, and one resumed
at an epoch boundary draws exactly the batches of an uninterrupted run.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

from radpriv.errors import ConfigError
from radpriv.privacy.randomness import PrivateRandomness


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))


class PoissonBatchSampler(Sampler[list[int]]):
    """`steps` Poisson draws per epoch: each report joins each batch with probability q.

    Opacus' `UniformWithReplacementSampler` draws the same masks from a torch generator; this
    one takes them from `PrivateRandomness`, so that `privacy.secure_mode` can give them a
    cryptographically secure source. An empty draw is still a batch (a noisy step).
    """

    def __init__(self, num_samples: int, sample_rate: float, steps: int, randomness: PrivateRandomness):
        if num_samples < 1 or not 0 < sample_rate <= 1 or steps < 1:
            raise ConfigError(f"Poisson sampling needs N ≥ 1, 0 < q ≤ 1 and steps ≥ 1 "
                              f"(got N={num_samples}, q={sample_rate}, steps={steps})")
        self.num_samples = num_samples
        self.sample_rate = sample_rate
        self.steps = steps
        self.randomness = randomness

    def set_epoch(self, epoch: int) -> None:
        pass  # every draw is fresh: nothing to reseed

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            mask = self.randomness.bernoulli(self.num_samples, self.sample_rate)
            yield mask.nonzero(as_tuple=True)[0].tolist()


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
