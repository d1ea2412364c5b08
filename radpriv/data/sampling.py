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

import math

import torch
from torch.utils.data import Sampler

from radpriv.errors import ConfigError
from radpriv.privacy.randomness import PrivateRandomness


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))


def poisson_rate_and_steps(n_units: int, expected_batch_size: int) -> tuple[float, int]:
    """q = b/N (at most 1) and the steps of one epoch, ⌈N/b⌉, for N units and b expected units
    per batch: what a private run's sampling and its accountant both use."""
    return min(1.0, expected_batch_size / n_units), math.ceil(n_units / expected_batch_size)


class PoissonBatchSampler(Sampler[list[int]]):
    """`steps` Poisson draws per epoch: each unit joins each batch with probability q.

    A unit is a report, or with `groups` a patient: `groups[u]` are the row indices of patient
    u, and a drawn patient brings all of its reports, at most `cap` of them (a uniformly random
    subset, from the private randomness: a fixed, data-independent cap keeps a patient with
    hundreds of reports within one physical chunk and one clipped contribution).

    Opacus' `UniformWithReplacementSampler` draws the same masks from a torch generator; this
    one takes them from `PrivateRandomness`, so that `privacy.secure_mode` can give them a
    cryptographically secure source. An empty draw is still a batch (a noisy step).
    """

    def __init__(self, num_samples: int, sample_rate: float, steps: int, randomness: PrivateRandomness,
                 groups=None, cap: int | None = None):
        if num_samples < 1 or not 0 < sample_rate <= 1 or steps < 1:
            raise ConfigError(f"Poisson sampling needs N ≥ 1, 0 < q ≤ 1 and steps ≥ 1 "
                              f"(got N={num_samples}, q={sample_rate}, steps={steps})")
        if groups is not None and len(groups) != num_samples:
            raise ConfigError(f"{len(groups)} patients for N={num_samples} sampling units")
        self.num_samples = num_samples
        self.sample_rate = sample_rate
        self.steps = steps
        self.randomness = randomness
        self.groups = groups
        self.cap = cap

    def set_epoch(self, epoch: int) -> None:
        pass  # every draw is fresh: nothing to reseed

    def __len__(self) -> int:
        return self.steps

    def units(self) -> torch.Tensor:
        """The units this sampler draws from (all of them; a DDP rank: its shard)."""
        return torch.arange(self.num_samples)

    def rows(self, drawn: torch.Tensor) -> list[int]:
        """The row indices of the drawn units: the units themselves, or their patients' reports."""
        if self.groups is None:
            return drawn.tolist()
        out: list[int] = []
        for u in drawn.tolist():
            members = self.groups[u]
            if self.cap is not None and len(members) > self.cap:
                members = members[self.randomness.subset(len(members), self.cap).numpy()]
            out.extend(int(i) for i in members)
        return out

    def __iter__(self):
        units = self.units()
        for _ in range(self.steps):
            yield self.rows(units[self.randomness.bernoulli(len(units), self.sample_rate)])


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
