"""Privacy accounting: the run's accountant, and a map of where ε is computed, σ calibrated and ε checked.

:mod:`radpriv.privacy` is split the way Opacus is, one job a module, imported in this order
(no cycle; tests/test_layout.py checks it):

* :mod:`~radpriv.privacy.privacy_params`: ε, δ, N, accountant names, the neighbouring relation
  and histories ``[(σ, q, n_steps), ...]``, checked and normalised (δ < 1/N and why).
* :mod:`~radpriv.privacy.accountants`: **computes ε**. Opacus' PRV (relative error bar, faster
  grid) and RDP (orders up to 1024) accountants, and :func:`epsilon_spent`, the one function
  every reported ε comes from (its docstring holds the measured numerical choices).
  Replace-one ε is dp_accounting's PLD (:mod:`~radpriv.privacy.replace_one`).
* :mod:`~radpriv.privacy.calibration`: **calibrates σ**, :func:`calibrate_noise_multiplier`,
  solving on :func:`epsilon_spent` itself so the planned ε never exceeds the target.
* :mod:`~radpriv.privacy.independent_check`: **checks ε independently** with Google's
  dp_accounting (a separate code base); it uses only the public checks above, never the
  arithmetic that computed the ε it checks.
* :mod:`~radpriv.privacy.randomness`, :mod:`~radpriv.privacy.dp_step` and
  :mod:`~radpriv.privacy.callback`: the noise's randomness, the DP-SGD step, and the Lightning
  callback that runs it and steps the :class:`PrivacyAccountant` below.
* :mod:`~radpriv.privacy.plan`: **plans a run**: Poisson batches or not, the batch sizes and
  steps, σ for the target ε (:func:`~radpriv.privacy.plan.plan_privacy`) and the DP thresholds.

This module keeps :class:`PrivacyAccountant` (the accountant of one training run) and re-exports
the public names of the first three, so ``accounting.epsilon_spent`` and
``from radpriv.privacy.accounting import calibrate_noise_multiplier`` keep working.
"""

from __future__ import annotations

from typing import Any

from opacus.accountants.accountant import IAccountant

from radpriv.errors import PrivacyError
from radpriv.privacy.accountants import (
    PRV_COARSE_REL_EPS_ERROR,
    PRV_MAX_EPS_ERROR,
    PRV_MAX_GRID,
    PRV_MIN_EPS_ERROR,
    PRV_REL_EPS_ERROR,
    PRVBound,
    RelativeErrorPRVAccountant,
    WideRDPAccountant,
    epsilon_spent,
    make_accountant,
)
from radpriv.privacy.calibration import CalibrationResult, calibrate_noise_multiplier
from radpriv.privacy.independent_check import check_history
from radpriv.privacy.privacy_params import (
    ACCOUNTANTS,
    GUARANTEE_RELATION,
    PLD_REL_DISCRETIZATION,
    RDP_ORDERS,
    RELATIONS,
    History,
    Spend,
    as_float,
    as_history,
    canonical_history,
    check_accountant_name,
    check_delta,
    check_delta_value,
    check_relation,
    default_delta,
    resolve_delta,
    resolve_epsilon,
)

__all__ = [
    "ACCOUNTANTS", "GUARANTEE_RELATION", "PLD_REL_DISCRETIZATION", "PRV_COARSE_REL_EPS_ERROR",
    "PRV_MAX_EPS_ERROR", "PRV_MAX_GRID", "PRV_MIN_EPS_ERROR", "PRV_REL_EPS_ERROR", "RDP_ORDERS",
    "RELATIONS", "CalibrationResult", "History", "PRVBound", "PrivacyAccountant",
    "RelativeErrorPRVAccountant", "Spend", "WideRDPAccountant", "as_float", "as_history",
    "calibrate_noise_multiplier", "canonical_history", "check_accountant_name", "check_delta",
    "check_delta_value", "check_relation", "default_delta", "epsilon_spent", "make_accountant",
    "resolve_delta", "resolve_epsilon",
]


# ---------------------------------------------------------------------------------------------
# Stateful wrapper for training
# ---------------------------------------------------------------------------------------------


class PrivacyAccountant:
    """The accountant of one training run: an Opacus accountant plus δ and the relation, checkpointable.

    ``step`` is called once per noisy optimiser step (Opacus records ``(σ, q, n_steps)`` runs);
    ``epsilon()`` is :func:`epsilon_spent` on that history under the run's ``relation`` (the
    guarantee); ``epsilon_add_remove()`` is the add/remove figure by the Opacus accountant
    (what papers print). ``state_dict`` holds plain lists and floats, so it can go into a
    Lightning checkpoint.
    """

    def __init__(self, accountant: str = "prv", delta: float = 1e-5,
                 relation: str = "add_remove") -> None:
        self.name = check_accountant_name(accountant)
        self.delta = check_delta_value(delta)
        self.relation = check_relation(relation)
        self.accountant: IAccountant = make_accountant(self.name)

    def step(self, *, noise_multiplier: float, sample_rate: float) -> None:
        self.accountant.step(noise_multiplier=float(noise_multiplier),
                             sample_rate=float(sample_rate))

    @property
    def history(self) -> list[tuple[float, float, int]]:
        return [tuple(h) for h in self.accountant.history]

    @history.setter
    def history(self, entries) -> None:
        self.accountant.history = [(s, q, n) for s, q, n in (as_history(entries) if entries else ())]

    @property
    def steps(self) -> int:
        return int(sum(n for _, _, n in self.accountant.history))

    def epsilon(self, delta: float | None = None) -> float:
        """Upper bound on ε spent so far under the run's relation (at its δ unless another is given)."""
        return epsilon_spent(self.name, self.accountant.history,
                             self.delta if delta is None else delta, self.relation)

    def epsilon_add_remove(self, delta: float | None = None) -> float:
        """The same history under add/remove adjacency, by the Opacus accountant."""
        return epsilon_spent(self.name, self.accountant.history,
                             self.delta if delta is None else delta, "add_remove")

    def cross_check(self, rel_tol: float = 0.01) -> dict[str, float]:
        """:func:`radpriv.privacy.independent_check.cross_check` of this run's ε (any history)."""
        return check_history(self.epsilon(), self.name, as_history(self.history), self.delta,
                             self.relation, rel_tol)

    def state_dict(self) -> dict[str, Any]:
        return {"accountant": self.name, "delta": self.delta, "relation": self.relation,
                "history": [[float(s), float(q), int(n)] for s, q, n in self.accountant.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the history; the accountant, δ and relation must be this run's (else ε would change)."""
        try:
            name, delta, history = state["accountant"], state["delta"], state["history"]
        except (KeyError, TypeError):
            raise PrivacyError("the checkpoint's privacy accountant state is incomplete "
                               "(needs accountant, delta and history)") from None
        relation = state.get("relation", "add_remove")
        if name != self.name or float(delta) != self.delta or relation != self.relation:
            raise PrivacyError(f"cannot resume: the checkpoint was accounted with accountant="
                               f"{name}, δ={float(delta):.4g}, adjacency {relation}; this run uses "
                               f"accountant={self.name}, δ={self.delta:.4g}, adjacency {self.relation}")
        self.history = history

    def __repr__(self) -> str:
        return (f"PrivacyAccountant(accountant={self.name!r}, delta={self.delta:.4g}, "
                f"relation={self.relation!r}, steps={self.steps})")
