"""Optuna samplers and pruner for `radpriv tune`.

Why a sampler of our own: Optuna's RandomSampler (and TPE's random start-up phase) draws from
one random stream per process, so two workers started with the same seed propose the same
trials. Here a random proposal depends only on (seed, trial number, parameter name), and trial
numbers come from the storage, which hands each number out once: workers sharing one storage
never repeat each other.

The seed is the study's (its record, study_record.py): drawn once from OS entropy when the
study is created and kept only in the storage, unless `tune.seed` sets it. It must be secret in
a random search: with a known seed anyone can recompute every trial's proposal, and the
published best parameters then name the winning trial's number — a lower bound on the secret
number of trials K.
"""

from __future__ import annotations

import math
import warnings
import zlib

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from radpriv.errors import ConfigError
from radpriv.privacy.randomness import fresh_seed


class TrialSeededRandomSampler(optuna.samplers.BaseSampler):
    """Independent uniform proposals (log-uniform on log scales), seeded per trial number.

    `seed`: the study's proposal seed; None draws a fresh one (OS entropy) for this sampler alone."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = fresh_seed() if seed is None else int(seed)

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        rng = np.random.default_rng([self.seed, trial.number, zlib.crc32(param_name.encode())])
        d = param_distribution
        if isinstance(d, CategoricalDistribution):
            return d.choices[int(rng.integers(len(d.choices)))]
        if isinstance(d, IntDistribution):
            if d.log:
                value = math.exp(rng.uniform(math.log(d.low - 0.5), math.log(d.high + 0.5)))
                return int(min(max(round(value), d.low), d.high))
            return int(d.low + d.step * rng.integers((d.high - d.low) // d.step + 1))
        if isinstance(d, FloatDistribution):
            if d.log:
                value = math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
            elif d.step is not None:
                value = d.low + d.step * rng.integers(round((d.high - d.low) / d.step) + 1)
            else:
                value = rng.uniform(d.low, d.high)
            return float(min(max(value, d.low), d.high))
        raise TypeError(f"unsupported distribution {d!r}")


class SharedStartTPESampler(optuna.samplers.TPESampler):
    """TPE whose random start-up proposals come from :class:`TrialSeededRandomSampler`.

    `multivariate`: model the parameters' joint density (a search across models: which lr and C
    are good depends on the model, and a joint density learns that from every trial, where
    per-model conditional parameters would split the few trials a DP search can afford)."""

    def __init__(self, seed: int | None, n_startup_trials: int, multivariate: bool = False) -> None:
        # TPE's own generator takes 32 bits: one derived from the study's seed
        tpe_seed = None if seed is None else int(np.random.SeedSequence([int(seed), 0x7BE]).generate_state(1)[0])
        with warnings.catch_warnings():  # multivariate TPE is "experimental" in Optuna since 2.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(seed=tpe_seed, n_startup_trials=n_startup_trials, constant_liar=True,
                             multivariate=multivariate)
        self._startup = TrialSeededRandomSampler(seed)
        self._n_startup = n_startup_trials

    def sample_independent(self, study, trial, param_name, param_distribution):
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if len(done) < self._n_startup:
            return self._startup.sample_independent(study, trial, param_name, param_distribution)
        return super().sample_independent(study, trial, param_name, param_distribution)


def make_sampler(name: str, seed: int | None, tpe_startup_trials: int,
                 multivariate: bool = False) -> optuna.samplers.BaseSampler:
    if name == "random":
        return TrialSeededRandomSampler(seed)
    if name == "tpe":
        return SharedStartTPESampler(seed, int(tpe_startup_trials), multivariate)
    raise ConfigError(f"tune.sampler={name!r}: expected tpe or random")


def make_pruner(enabled: bool, n_startup_trials: int, n_warmup_steps: int) -> optuna.pruners.BasePruner:
    """Median pruning on the per-epoch validation F1 (a trial is stopped at an epoch end when it
    is below the median of earlier trials at that epoch)."""
    if not enabled:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=int(n_startup_trials), n_warmup_steps=int(n_warmup_steps))
