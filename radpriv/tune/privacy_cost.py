"""What a search costs in privacy, per `tune.accounting` (docs/PRIVACY.md, "Hyperparameter search").

Every number here comes from Google's ``dp_accounting`` events, so the search's accounting can be
read (and recomputed) in one place:

- ``compose``: every run that trained on the private data is one more DP-SGD mechanism; ε_total
  is their composition, ``ComposedDpEvent`` of each run's
  ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(σ)), steps)``, by the PLD
  accountant (pessimistic discretisation: an upper bound), cross-checked against the RDP
  accountant (also an upper bound, looser: it must not read lower than PLD). Runs are counted
  with their *planned* steps even when pruned early — never fewer steps than ran.
- ``random_search``: Papernot & Steinke (ICLR 2022): run the same mechanism K times, K random
  with a known distribution (Poisson, or truncated negative binomial of shape η), and release
  only the best; ``RepeatAndSelectDpEvent`` bounds its Rényi DP. The per-trial σ is calibrated
  here so that the total (the selection, composed with every retrain) meets the requested ε.
- ``public``: the trials saw only public data; ε_total composes the runs on the private data
  (the retrain of each invocation), exactly as ``compose`` does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from radpriv.errors import ConfigError, PrivacyError
from radpriv.privacy.accounting import PLD_REL_DISCRETIZATION, RDP_ORDERS

log = logging.getLogger(__name__)

#: RDP may not read lower than PLD by more than this (both are upper bounds; RDP is the looser).
CROSS_CHECK_REL_TOL = 0.01
#: the calibrated total lands in [(1 − this)·ε, ε]
CALIBRATION_REL_TOL = 0.005


@dataclass(frozen=True)
class Mechanism:
    """One run's DP-SGD, as planned: noise multiplier σ, Poisson rate q, steps."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def as_list(self) -> list:
        return [float(self.noise_multiplier), float(self.sample_rate), int(self.steps)]


def trial_rate_and_steps(n_train: int, expected_batch_size: int, max_epochs: int) -> tuple[float, int]:
    """q and the number of steps of a run (as radpriv/data/datamodule.py and train.py plan them)."""
    return min(1.0, expected_batch_size / n_train), max_epochs * math.ceil(n_train / expected_batch_size)


def dp_event(mech: Mechanism):
    """The dp_accounting event of one DP-SGD run."""
    import dp_accounting

    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(mech.sample_rate, dp_accounting.GaussianDpEvent(mech.noise_multiplier)),
        int(mech.steps))


def _rdp_epsilon(event, delta: float) -> float:
    from dp_accounting import NeighboringRelation
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant(list(RDP_ORDERS), NeighboringRelation.ADD_OR_REMOVE_ONE)
    absl_logger = logging.getLogger("absl")  # dp_accounting warns about orders it drops
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        accountant.compose(event)
        return float(accountant.get_epsilon(delta))
    finally:
        absl_logger.setLevel(level)


def _pld_epsilon(event, delta: float, interval: float) -> float:
    from dp_accounting import NeighboringRelation
    from dp_accounting.pld import PLDAccountant

    accountant = PLDAccountant(NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=interval)
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


# ------------------------------------------------------------------------------------------
# compose (and public): the composition of every run on the private data
# ------------------------------------------------------------------------------------------


def composed_epsilon(mechanisms: Sequence[Mechanism], delta: float) -> dict[str, float]:
    """ε of running every mechanism once: PLD (reported) and RDP (its cross-check).

    The PLD grid is relative to ε (1e-4·ε, as radpriv/privacy/independent_check.py does for a
    single run): first sized from the RDP bound, again from PLD's own ε if RDP was far above.
    Raises PrivacyError when RDP reads more than 1 % *below* PLD: both are upper bounds and RDP
    is the looser, so that would mean one of them is wrong for this history.
    """
    import dp_accounting

    if not mechanisms:
        return {"pld": 0.0, "rdp": 0.0}
    if any(m.noise_multiplier <= 0 for m in mechanisms):
        return {"pld": math.inf, "rdp": math.inf}
    event = dp_accounting.ComposedDpEvent([dp_event(m) for m in mechanisms])
    rdp = _rdp_epsilon(event, delta)
    pld = _pld_epsilon(event, delta, max(PLD_REL_DISCRETIZATION * rdp, 1e-9))
    if pld < rdp / 3:
        pld = min(pld, _pld_epsilon(event, delta, max(PLD_REL_DISCRETIZATION * pld, 1e-9)))
    if rdp < pld * (1 - CROSS_CHECK_REL_TOL):
        raise PrivacyError(f"tune: privacy accounting check failed: RDP ε={rdp:.6g} is below PLD ε={pld:.6g} "
                           f"for the composition of {len(mechanisms)} runs (δ={delta:.4g})")
    return {"pld": pld, "rdp": rdp}


# ------------------------------------------------------------------------------------------
# random_search: repeat and select (Papernot & Steinke 2022)
# ------------------------------------------------------------------------------------------


def check_trial_distribution(mean: float, shape: float) -> None:
    if not (math.isfinite(mean) and mean >= 1):
        raise ConfigError(f"tune.n_trials={mean:g}: the mean number of trials of a random search must be ≥ 1")
    if math.isnan(shape) or shape < 0:
        raise ConfigError(f"tune.shape={shape}: expected .inf (Poisson), 1 (geometric), 0 (logarithmic) "
                          "or η > 0 (truncated negative binomial)")


def repeat_and_select_event(trial: Mechanism, mean: float, shape: float, finals: Sequence[Mechanism] = ()):
    """Run `trial` K times (K random: mean, shape), release the best; then each of `finals`."""
    import dp_accounting
    from dp_accounting.dp_event import RepeatAndSelectDpEvent

    check_trial_distribution(mean, shape)
    events = [RepeatAndSelectDpEvent(dp_event(trial), float(mean), float(shape))]
    events += [dp_event(m) for m in finals]
    return dp_accounting.ComposedDpEvent(events)


def repeat_and_select_epsilon(trial: Mechanism, delta: float, mean: float, shape: float,
                              finals: Sequence[Mechanism] = ()) -> float:
    """RDP ε of the random search (dp_accounting's RepeatAndSelectDpEvent) then the finals."""
    return _rdp_epsilon(repeat_and_select_event(trial, mean, shape, finals), delta)


def calibrate_search_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                           mean: float, shape: float, n_finals: int) -> float:
    """The σ for every trial (and retrain) of a random search whose *total* spends the target.

    Bisection on log σ (the total is decreasing in σ) until the total lies in
    [(1 − 0.5 %)·ε, ε]; returns the upper end of the bracket, whose total is ≤ ε.
    Written here rather than taken from Opacus because the quantity calibrated is the
    repeat-and-select total, which no accountant library calibrates.
    """
    def total(sigma: float) -> float:
        mech = Mechanism(sigma, sample_rate, steps)
        return repeat_and_select_epsilon(mech, delta, mean, shape, [mech] * n_finals)

    lo, hi = 0.25, 1.0
    while total(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise PrivacyError(
                f"tune: no noise multiplier brings a random search of {mean:g} trials on average "
                f"(+{n_finals} retrain) to ε_total={target_epsilon:g} at δ={delta:.3g} (the selection "
                "alone costs more): raise privacy.epsilon or lower tune.n_trials")
    while total(lo) <= target_epsilon:
        if lo < 1e-3:
            return lo  # even almost no noise meets the target (huge ε): the safe end is fine
        lo, hi = lo / 2, lo
    f_hi = total(hi)
    while f_hi < (1 - CALIBRATION_REL_TOL) * target_epsilon and hi / lo > 1 + 1e-6:
        mid = math.sqrt(lo * hi)
        f_mid = total(mid)
        if f_mid <= target_epsilon:
            hi, f_hi = mid, f_mid
        else:
            lo = mid
    return hi


def truncated_nb_gamma(shape: float, mean: float) -> float:
    """γ of the truncated negative binomial with this shape and mean, exactly as dp_accounting's
    RepeatAndSelect accountant maps (mean, shape) to it: the draw must follow the distribution
    the accountant assumes, so its own (private) helper is used rather than a copy."""
    from dp_accounting.rdp.rdp_privacy_accountant import _gamma_truncated_negative_binomial

    return float(_gamma_truncated_negative_binomial(shape, mean))


def draw_trial_count(mean: float, shape: float, rng: np.random.Generator) -> int:
    """K for a random search: Poisson(mean) for shape = ∞ (K = 0 possible), logarithmic for 0,
    else the truncated negative binomial NB(η, γ) conditioned on K ≥ 1 (Papernot & Steinke,
    Definition 1: P[K = k] ∝ C(k+η−1, k)·(1−γ)^k for k ≥ 1), drawn by rejecting K = 0."""
    check_trial_distribution(mean, shape)
    if math.isinf(shape):
        return int(rng.poisson(mean))
    gamma = truncated_nb_gamma(shape, mean)
    if mean == 1 or gamma >= 1:
        return 1
    if shape == 0:  # logarithmic: P[K = k] ∝ (1−γ)^k / k
        return int(rng.logseries(1 - gamma))
    while True:
        k = int(rng.negative_binomial(shape, gamma))
        if k >= 1:
            return k
