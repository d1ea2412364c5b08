"""The privacy filter of `compose` and `public` searches: a budget fixed before the first run.

Why a filter
------------
A search decides adaptively how many runs touch the private data: TPE proposes each trial from
the earlier ones' scores, pruning depends on them, and nothing limits how often the command is
run again on the same study. Summing the ε of the runs that happened (as if their number had
been fixed in advance) is then not a valid guarantee. A *privacy filter* is: a budget fixed in
advance, and a rule that admits each new run only if the runs admitted so far plus this one
still fit in it.

Rényi filter (Feldman & Zrnic, "Individual privacy accounting via a Rényi filter", NeurIPS 2021)
----------------------------------------------------------------------------------------------
Fix one order α and an RDP budget B before the first run. Run i, chosen adaptively, is ρ_i(α)-RDP
(its replace-one RDP at α; radpriv.privacy.replace_one_rdp). Admitting runs only while
Σ ρ_i(α) ≤ B makes the whole adaptive sequence — every admitted run's output, whatever chose
it — (α, B)-RDP. That converts to (ε, δ)-DP with the conversion Opacus and dp_accounting use
(Balle et al. 2020):

    ε = B + log(1 − 1/α) − log(δ·α)/(α − 1)    ⇔    B(ε) = ε − log(1 − 1/α) + log(δ·α)/(α − 1).

So the user's budget is an ε (``tune.budget``, at the study's δ), stored with α and B(α) when
the study is created. A study's ε_total *is* its budget, whatever part of it was used.

Choosing α
----------
From data-independent quantities only (the budget, δ, and the planned run: q = b/N and the
steps from N, the batch size and the epochs, σ from the per-run ε; N is public): the order that
admits the most planned runs, i.e. maximises B(α)/ρ_planned(α). With ``tune.budget=null`` the
budget is the planned cost itself: the smallest ε at which ``tune.n_trials`` trials plus one
retrain fit at some order (that order is α; the budget is rounded up by 1e-9 so they fit exactly).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from radpriv.errors import ConfigError, PrivacyError
from radpriv.tune.privacy_cost import ORDERS, Mechanism, run_rdp

#: a budget computed from the planned runs is rounded up by this (relative) so they fit exactly
PLANNED_ROUND_UP = 1e-9
#: the conversion below is used only at orders above this (dp_accounting's own limit)
MIN_ORDER = 1.01


class BudgetExhausted(PrivacyError):
    """A run the study's privacy filter cannot admit: it must not train."""


def _conversion(order: float, delta: float) -> float:
    """c(α) with ε = RDP + c(α): log(1 − 1/α) − log(δ·α)/(α − 1)."""
    return math.log1p(-1.0 / order) - math.log(delta * order) / (order - 1.0)


def rdp_budget(epsilon: float, delta: float, order: float) -> float:
    """B(α): the RDP at `order` that converts to exactly `epsilon` at `delta`."""
    return float(epsilon) - _conversion(order, delta)


def epsilon_at(rdp: float, delta: float, order: float) -> float:
    """(α, rdp)-RDP → ε at δ (Balle et al. 2020, as dp_accounting's compute_epsilon)."""
    return float(rdp) + _conversion(order, delta)


@dataclass(frozen=True)
class Filter:
    """A study's filter: ε budget at δ, the order α and B(α); `reserve`: every trial keeps room
    for one retrain (compose)."""

    budget_epsilon: float
    delta: float
    order: float
    rdp_budget: float
    reserve_retrain: bool
    source: str
    planned_mechanism: list
    planned_rdp: float  # ρ of the planned run at α
    planned_runs_fit: int  # how many planned runs B(α) holds

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> Filter:
        return cls(**{k: record[k] for k in cls.__dataclass_fields__})


def planned_budget(planned: Mechanism, runs: float, delta: float,
                   orders: Sequence[float] = ORDERS) -> tuple[float, float]:
    """(ε, α): the smallest ε at δ at which `runs` planned runs fit at some order α."""
    grid = np.asarray([a for a in orders if a > MIN_ORDER], dtype=np.float64)
    rho = run_rdp(planned, grid)
    eps = np.array([runs * r + _conversion(a, delta) for a, r in zip(grid, rho)])
    best = int(np.argmin(eps))
    if not math.isfinite(eps[best]):
        raise PrivacyError(f"tune: the planned run {planned.as_list()} has no finite RDP at any order")
    return float(eps[best]), float(grid[best])


def _best_order(budget: float, delta: float, rho: np.ndarray, grid: np.ndarray) -> int:
    """Index of the order that admits the most planned runs: max B(α)/ρ(α)."""
    ratio = np.array([rdp_budget(budget, delta, a) / r if r > 0 else math.inf for a, r in zip(grid, rho)])
    ratio[~np.isfinite(rho)] = -math.inf
    return int(np.argmax(ratio))


def create(budget: float | None, delta: float, planned: Mechanism, planned_trials: int,
           reserve_retrain: bool, orders: Sequence[float] = ORDERS) -> Filter:
    """The filter of a new study (see the module docstring).

    `budget`: ε (tune.budget), or None for the planned cost: `planned_trials` runs plus one
    retrain (compose), or one retrain (public: `planned_trials` = 0).
    """
    grid = np.asarray([a for a in orders if a > MIN_ORDER], dtype=np.float64)
    planned_runs = planned_trials + 1
    if budget is None:
        eps, _ = planned_budget(planned, planned_runs, delta, grid)
        budget = eps * (1 + PLANNED_ROUND_UP)
        source = f"planned: {planned_trials} trials plus one retrain" if reserve_retrain else "planned: one retrain"
    else:
        source = "tune.budget"
    rho = run_rdp(planned, grid)
    i = _best_order(budget, delta, rho, grid)
    order, b = float(grid[i]), rdp_budget(budget, delta, float(grid[i]))
    fit = int(math.floor(b / rho[i])) if rho[i] > 0 else 10**9
    need = 2 if reserve_retrain else 1
    if fit < need:
        least, _ = planned_budget(planned, need, delta, grid)
        what = "one trial and the retrain" if reserve_retrain else "one retrain"
        raise ConfigError(f"tune.budget={budget:g} cannot pay for {what} (σ={planned.noise_multiplier:.4g}, "
                          f"q={planned.sample_rate:.4g}, {planned.steps} steps need ε ≥ {least:.4g} at "
                          f"δ={delta:.3g}): raise tune.budget or privacy.epsilon")
    return Filter(budget_epsilon=float(budget), delta=float(delta), order=order, rdp_budget=b,
                  reserve_retrain=bool(reserve_retrain), source=source, planned_mechanism=planned.as_list(),
                  planned_rdp=float(rho[i]), planned_runs_fit=fit)


def run_cost(flt: Filter, mech: Mechanism | None) -> float:
    """ρ(α) of one run at the filter's order (+∞ without DP: such a run is never admitted)."""
    return float(run_rdp(mech, [flt.order])[0])


def fits(flt: Filter, trial_costs: Sequence[float], retrain_costs: Sequence[float], candidate_is_trial: bool) -> bool:
    """May the live claims (admitted or pending, the candidate's included) all run?

    Σ of every cost, plus — when the candidate is a trial of a filter that keeps a retrain's
    room — the largest trial cost (the retrain repeats the best trial's mechanism, one of these)."""
    total = math.fsum(trial_costs) + math.fsum(retrain_costs)
    if candidate_is_trial and flt.reserve_retrain and trial_costs:
        total += max(trial_costs)
    return math.isfinite(total) and total <= flt.rdp_budget


def summary(flt: Filter, used_rdp: float) -> dict:
    """What the parent run logs about the filter: used and remaining, as fractions of B(α)."""
    used = used_rdp / flt.rdp_budget
    left = max(0.0, flt.rdp_budget - used_rdp)
    return {"budget_epsilon": flt.budget_epsilon, "order": flt.order, "rdp_budget": flt.rdp_budget,
            "rdp_used": used_rdp, "budget_used": used, "budget_remaining": max(0.0, 1.0 - used),
            # runs of the planned mechanism that still fit (a compose trial also needs a retrain's room)
            "planned_runs_remaining": int(left // flt.planned_rdp) if flt.planned_rdp > 0 else None}
