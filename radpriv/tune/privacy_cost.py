"""What a search costs in privacy, per `tune.accounting` (docs/PRIVACY.md, "Hyperparameter search").

- compose: every trial that trained on the private data is one more DP-SGD run; ε_total is
  their composition (Opacus' PRV accountant over the joint history, cross-checked with
  dp-accounting's PLD), plus the final retrained model. Trials are counted with their
  *planned* steps even when pruned early: never fewer steps than ran.
- random_search: Papernot & Steinke (ICLR 2022): run the same DP mechanism K times with K
  random (Poisson / truncated negative binomial of mean μ) and release only the best; the RDP of
  that selection is bounded by dp-accounting's `RepeatAndSelectDpEvent`. The per-trial σ is
  calibrated so that the total (the selection, composed with the retrain if any) meets the
  requested ε.
- public: trials train on public data; ε_total is the final run's.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from radpriv.errors import PrivacyError
from radpriv.privacy.accounting import RDP_ORDERS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mechanism:
    """One trial's DP-SGD: noise multiplier, Poisson rate, steps."""

    noise_multiplier: float
    sample_rate: float
    steps: int


def trial_rate_and_steps(n_train: int, expected_batch_size: int, max_epochs: int) -> tuple[float, int]:
    """q and the step count radpriv's DataModule will use (radpriv/data/datamodule.py)."""
    return min(1.0, expected_batch_size / n_train), max_epochs * math.ceil(n_train / expected_batch_size)


def _dp_event(mech: Mechanism):
    import dp_accounting

    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(mech.sample_rate, dp_accounting.GaussianDpEvent(mech.noise_multiplier)),
        mech.steps)


def repeat_and_select_epsilon(mech: Mechanism, delta: float, mean: float, shape: float,
                              final: Mechanism | None = None) -> float:
    """RDP ε of "run `mech` K times (K random, mean `mean`), keep the best", then `final`."""
    import dp_accounting
    from dp_accounting import NeighboringRelation, dp_event
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant(list(RDP_ORDERS), NeighboringRelation.ADD_OR_REMOVE_ONE)
    events = [dp_event.RepeatAndSelectDpEvent(_dp_event(mech), float(mean), float(shape))]
    if final is not None:
        events.append(_dp_event(final))
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        accountant.compose(dp_accounting.ComposedDpEvent(events))
        return float(accountant.get_epsilon(delta))
    finally:
        absl_logger.setLevel(level)


def calibrate_search_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                           mean: float, shape: float, with_final: bool) -> float:
    """The smallest σ (to 0.1 %) whose repeat-and-select total is ≤ the target."""
    def total(sigma: float) -> float:
        mech = Mechanism(sigma, sample_rate, steps)
        return repeat_and_select_epsilon(mech, delta, mean, shape, mech if with_final else None)

    lo, hi = 0.1, 1.0
    while total(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e5:
            raise PrivacyError(f"tune: no noise multiplier reaches ε_total={target_epsilon} with "
                               f"{mean} trials on average; raise privacy.epsilon or lower tune.n_trials")
    while total(lo) <= target_epsilon and lo > 1e-3:
        lo /= 2
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if total(mid) <= target_epsilon else (mid, hi)
    return hi


def composed_epsilon(mechanisms: list[Mechanism], delta: float) -> dict[str, float]:
    """ε of running every mechanism (PRV), cross-checked with dp-accounting PLD within 1 %."""
    from radpriv.privacy.accounting import epsilon_spent
    from radpriv.privacy.independent_check import cross_check_spend

    history = [(m.noise_multiplier, m.sample_rate, m.steps) for m in mechanisms]
    if not history:
        return {"epsilon": 0.0}
    eps = epsilon_spent("prv", history, delta)
    check = cross_check_spend(eps, "prv", history, delta)
    return {"epsilon": eps, "epsilon_pld": check["privacy/epsilon_pld"],
            "epsilon_rdp_independent": check["privacy/epsilon_rdp_independent"]}
