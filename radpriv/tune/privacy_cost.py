"""What a search's runs cost in privacy, under replace-one adjacency (docs/PRIVACY.md, "Hyperparameter search").

Every run on the private data is DP-SGD: ``steps`` Poisson-subsampled Gaussian steps (σ, q).
Its Rényi DP under replace-one adjacency (N is published, so that is the relation radpriv's
guarantee holds under) is ``steps · ρ_step(α)``, with ρ_step from
:mod:`radpriv.privacy.replace_one_rdp`. From there:

- ``compose`` and ``public``: a Rényi filter (radpriv/tune/privacy_filter.py) admits runs while
  their summed RDP at one order stays within the study's budget.
- ``random_search``: Papernot & Steinke (ICLR 2022): run the same mechanism K times, K random
  with a known distribution (Poisson, or truncated negative binomial of shape η), release only
  the best. Its RDP is dp_accounting's own ``_compute_rdp_repeat_and_select`` applied to the
  trial's replace-one RDP, then composed (added) with each retrain, then converted to (ε, δ)
  with dp_accounting's ``compute_epsilon``. The per-trial σ is calibrated here so that the total
  meets the requested ε. (dp_accounting's RDP accountant cannot be used on events: it has no
  replace-one analysis of Poisson sampling.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from radpriv.data.sampling import poisson_rate_and_steps
from radpriv.errors import ConfigError, PrivacyError
from radpriv.privacy import replace_one_rdp
from radpriv.privacy.accounting import RDP_ORDERS

#: the orders every search's RDP is evaluated at (radpriv's accountant orders, 1.1 to 1024)
ORDERS: tuple[float, ...] = tuple(float(a) for a in RDP_ORDERS)
#: the calibrated total lands in [(1 − this)·ε, ε]
CALIBRATION_REL_TOL = 0.005
#: a random search gives each run the ε of σ·(1 + this): its own calibration then returns
#: σ' ≥ σ with room for the accountant's rounding (the run costs this much more noise, 0.01 %)
RUN_SIGMA_MARGIN = 1e-4


@dataclass(frozen=True)
class Mechanism:
    """One run's DP-SGD, as planned: noise multiplier σ, Poisson rate q, steps."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def as_list(self) -> list:
        return [float(self.noise_multiplier), float(self.sample_rate), int(self.steps)]


def trial_rate_and_steps(n_units: int, expected_batch_size: int, max_epochs: int) -> tuple[float, int]:
    """q and the number of steps of a private run on N = `n_units` training units (patients at the
    patient unit, else reports; the batch counts units too), as radpriv/data/datamodule.py and
    train.py plan them."""
    q, per_epoch = poisson_rate_and_steps(n_units, expected_batch_size)
    return q, max_epochs * per_epoch


def run_rdp(mech: Mechanism | None, orders: Sequence[float] = ORDERS) -> np.ndarray:
    """Replace-one RDP of a whole run at each order (+∞ everywhere for a run without DP)."""
    if mech is None:
        return np.full(len(orders), math.inf)
    return replace_one_rdp.run_rdp(mech.noise_multiplier, mech.sample_rate, mech.steps, orders)


def epsilon_of_rdp(rdp: Sequence[float], delta: float, orders: Sequence[float] = ORDERS) -> float:
    """ε at δ of RDP values: dp_accounting's conversion (the one Opacus uses too)."""
    return replace_one_rdp.epsilon(orders, rdp, delta)[0]


# ------------------------------------------------------------------------------------------
# random_search: repeat and select (Papernot & Steinke 2022)
# ------------------------------------------------------------------------------------------


def check_trial_distribution(mean: float, shape: float) -> None:
    if not (math.isfinite(mean) and mean >= 1):
        raise ConfigError(f"tune.n_trials={mean:g}: the mean number of trials of a random search must be ≥ 1")
    if math.isnan(shape) or shape < 0:
        raise ConfigError(f"tune.shape={shape}: expected .inf (Poisson), 1 (geometric), 0 (logarithmic) "
                          "or η > 0 (truncated negative binomial)")


def repeat_and_select_rdp(trial: Mechanism, mean: float, shape: float, finals: Sequence[Mechanism] = (),
                          orders: Sequence[float] = ORDERS) -> np.ndarray:
    """RDP of running `trial` K times (K random: mean, shape), releasing the best, then each of `finals`."""
    from dp_accounting.rdp.rdp_privacy_accountant import _compute_rdp_repeat_and_select

    check_trial_distribution(mean, shape)
    total = np.asarray(_compute_rdp_repeat_and_select(list(orders), run_rdp(trial, orders), float(mean),
                                                      float(shape)), dtype=np.float64)
    for mech in finals:
        total = total + run_rdp(mech, orders)
    return total


def repeat_and_select_epsilon(trial: Mechanism, delta: float, mean: float, shape: float,
                              finals: Sequence[Mechanism] = ()) -> float:
    """ε at δ of the random search (replace-one RDP, repeat-and-select) then the finals."""
    return epsilon_of_rdp(repeat_and_select_rdp(trial, mean, shape, finals), delta)


def calibrate_search_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                           mean: float, shape: float, n_finals: int) -> float:
    """The σ for every trial (and retrain) of a random search whose *total* spends the target.

    Bisection on log σ (the total is decreasing in σ) until the total lies in
    [(1 − 0.5 %)·ε, ε]; returns the upper end of the bracket, whose total is ≤ ε.
    Written here because the quantity calibrated is the repeat-and-select total, which no
    accountant library calibrates.
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
