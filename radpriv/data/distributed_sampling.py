"""Training batch samplers for several processes (Lightning DDP): each rank draws its own shard.

Private training (distributed Poisson sampling). At every epoch the training split is cut into
one shard per rank (a seeded permutation shared by every rank, dealt out round-robin). At every
step each rank includes each report of *its* shard independently with the global rate
q = b / N. A report belongs to exactly one shard, so over the union of the ranks' draws every
report joins the step's logical batch independently with probability q: the union is a Poisson
sample of the whole training split with rate q, the mechanism the accountant analyses. The
noise is added once for the union (radpriv/privacy/distributed.py), so ε is that of a
single-process run with the same q, σ and number of steps.

Every rank yields exactly `steps` batches per epoch, *empty ones included*: an empty local draw
is still a step of the union (on all ranks at once), the accountant counts it, and the ranks
must reach each all-reduce together. Opacus' `DistributedUniformWithReplacementSampler`
implements the same sharding but silently skips an empty local draw, which would leave the
ranks with different step counts (a hang at the next all-reduce, and a step count that no
longer matches the plan); that is why this one is written here.

Non-private training: one seeded permutation per epoch (the same on every rank), cut into
global batches of `batch_size`; rank r takes every world_size-th report of each batch.

The shared permutation is derived from (seed, epoch): every rank must compute the same one,
and which rank draws a report does not change the union's distribution, so it may be public.
Each rank's Bernoulli draws come from its own private randomness (radpriv/privacy/randomness.py:
fresh OS entropy per process and invocation, never the seed): the draws are what the
adversary must not know. Non-private shuffling stays reproducible from (seed, epoch).
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

from radpriv.data.sampling import PoissonBatchSampler, ShuffledBatchSampler
from radpriv.errors import ConfigError
from radpriv.privacy.randomness import PrivateRandomness


def _generator(*parts: int) -> torch.Generator:
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + int(p)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def _check(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} of world size {world_size}: expected 0 ≤ rank < world size")


class DistributedPoissonBatchSampler(PoissonBatchSampler):
    """This rank's part of a Poisson draw of rate `sample_rate` over `num_samples` units (reports,
    or patients with `groups`: a patient and all of its reports belong to one rank)."""

    def __init__(self, num_samples: int, sample_rate: float, steps: int, seed: int, *,
                 rank: int, world_size: int, randomness: PrivateRandomness, groups=None, cap: int | None = None):
        _check(rank, world_size)
        super().__init__(num_samples, sample_rate, steps, randomness, groups, cap)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self) -> torch.Tensor:
        """The units this rank draws from in the current epoch."""
        perm = torch.randperm(self.num_samples, generator=_generator(self.seed, self.epoch))
        return perm[self.rank::self.world_size]

    def units(self) -> torch.Tensor:
        return self.shard()  # possibly empty draws: still a step


class DistributedShuffledBatchSampler(ShuffledBatchSampler):
    """This rank's part of each of the single-process shuffled batches (non-private training)."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, *, rank: int, world_size: int):
        _check(rank, world_size)
        super().__init__(num_samples, batch_size, seed)
        self.rank = rank
        self.world_size = world_size

    def __iter__(self):
        for batch in super().__iter__():
            yield batch[self.rank::self.world_size]


def distributed_batch_sampler(num_samples: int, *, poisson: bool, sample_rate: float, batch_size: int,
                              steps: int, seed: int, rank: int, world_size: int,
                              randomness: PrivateRandomness | None = None, groups=None,
                              cap: int | None = None) -> Sampler[list[int]]:
    """The training sampler of one rank: Poisson under DP (`randomness` required; `num_samples`
    units, patients with `groups`), shuffled batches of reports otherwise."""
    if poisson:
        return DistributedPoissonBatchSampler(num_samples, sample_rate, steps, seed, rank=rank,
                                              world_size=world_size, randomness=randomness, groups=groups, cap=cap)
    return DistributedShuffledBatchSampler(num_samples, batch_size, seed, rank=rank, world_size=world_size)
