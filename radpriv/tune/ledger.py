"""The study's privacy ledger: which runs touched the private data, and what they spent in total.

Every record lives in the Optuna storage itself, written at the run's fit start — before its
first private batch — so it covers every worker and every invocation of the study, and a run
that crashes or is pruned after it started is still counted (with its *planned* steps):

- trial user attribute ``mechanism`` = [σ, q, planned steps] (private DP run), or
  ``nonprivate`` = true (a run on the private data without DP), and ``data`` = private|public;
- study user attribute ``radpriv.final.<parent run id>`` = the same, for each retrain;
- study user attribute ``radpriv.random_search`` = the calibrated per-trial mechanism, the
  trial-count distribution and the target (random_search only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from radpriv.errors import PrivacyError
from radpriv.tune import privacy_cost
from radpriv.tune.privacy_cost import Mechanism

FINAL_PREFIX = "radpriv.final."
RANDOM_SEARCH_ATTR = "radpriv.random_search"
TRIAL_COUNT_ATTR = "radpriv.random_search.k"  # K, drawn once per study (internal: never released)


@dataclass
class Ledger:
    trials: list[Mechanism] = field(default_factory=list)  # private-data trials with DP
    trial_epsilons: list[float] = field(default_factory=list)  # each one's own target ε
    nonprivate_trials: int = 0  # private-data trials without DP
    public_trials: int = 0
    finals: list[Mechanism] = field(default_factory=list)
    final_epsilons: list[float] = field(default_factory=list)
    nonprivate_finals: int = 0


def record(mechanism: Mechanism | None, epsilon: float | None) -> dict:
    """What the storage keeps about one run (a JSON-able dict)."""
    if mechanism is None:
        return {"nonprivate": True}
    return {"mechanism": mechanism.as_list(), "epsilon": epsilon}


def read(study) -> Ledger:
    ledger = Ledger()
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        if attrs.get("data") == "public":
            ledger.public_trials += "mechanism" in attrs or attrs.get("nonprivate", False)
        elif "mechanism" in attrs:
            ledger.trials.append(Mechanism(*attrs["mechanism"]))
            ledger.trial_epsilons.append(float(attrs.get("epsilon") or 0.0))
        elif attrs.get("nonprivate"):
            ledger.nonprivate_trials += 1
    for key, value in sorted(study.user_attrs.items()):
        if key.startswith(FINAL_PREFIX):
            if "mechanism" in value:
                ledger.finals.append(Mechanism(*value["mechanism"]))
                ledger.final_epsilons.append(float(value.get("epsilon") or 0.0))
            else:
                ledger.nonprivate_finals += 1
    return ledger


def search_privacy(ledger: Ledger, mode: str, delta: float, random_search: dict | None = None) -> dict:
    """ε_total of everything the study did to the private data, with how it was computed."""
    out: dict = {"accounting": mode, "delta": delta, "private_trials": len(ledger.trials) + ledger.nonprivate_trials,
                 "public_trials": ledger.public_trials, "private_final_runs": len(ledger.finals) + ledger.nonprivate_finals}
    if ledger.nonprivate_trials or ledger.nonprivate_finals:
        out.update(epsilon_total=math.inf,
                   guarantee="none: runs trained on the private data without differential privacy")
        return out
    if mode == "random_search":
        return _random_search(ledger, delta, random_search, out)
    # compose and public: the composition of every run on the private data (public trials: none)
    runs = [*ledger.trials, *ledger.finals]
    composed = privacy_cost.composed_epsilon(runs, delta)
    # PLD of the composition is an upper bound; a run's own reported ε (Opacus PRV, ≈ 0.5 % above
    # PLD) is one too: report the larger, so the total never reads below any part of it
    total = max([composed["pld"], *ledger.trial_epsilons, *ledger.final_epsilons])
    out.update(epsilon_total=total, epsilon_total_pld=composed["pld"], epsilon_total_rdp=composed["rdp"],
               runs_composed=len(runs), runs=[m.as_list() for m in runs])
    if mode == "public":
        out["guarantee"] = ("the trials trained on public data only; ε_total composes the runs on the private "
                            "data (the retrained model of each invocation)")
    else:
        out["guarantee"] = ("composition of every run that trained on the private data (planned steps, pruned "
                            "and failed trials included) in every invocation and worker: covers releasing all "
                            "of them, the child runs included")
    return out


def _random_search(ledger: Ledger, delta: float, plan: dict | None, out: dict) -> dict:
    if plan is None:
        raise PrivacyError("tune: this random-search study has no calibration record in its storage")
    q, steps = float(plan["sample_rate"]), int(plan["steps"])
    for m in ledger.trials:
        if (m.sample_rate, m.steps) != (q, steps) or m.noise_multiplier < float(plan["noise_multiplier"]):
            raise PrivacyError(f"tune: a trial ran mechanism {m.as_list()}, not the search's calibrated "
                               f"[≥{plan['noise_multiplier']:.6g}, {q:.6g}, {steps}]")
    # the smallest σ any trial used bounds every trial (RDP is decreasing in σ); with no trial
    # (K = 0) the search's own calibration stands
    sigma = min([m.noise_multiplier for m in ledger.trials], default=float(plan["noise_multiplier"]))
    trial = Mechanism(sigma, q, steps)
    mean, shape = float(plan["mean"]), float(plan["shape"])
    total = privacy_cost.repeat_and_select_epsilon(trial, delta, mean, shape, ledger.finals)
    out.update(epsilon_total=total, target_epsilon=float(plan["target_epsilon"]), noise_multiplier=sigma,
               calibrated_noise_multiplier=float(plan["noise_multiplier"]), sample_rate=q, steps=steps,
               mean_trials=mean, shape=shape, finals=[m.as_list() for m in ledger.finals],
               method="dp_accounting RDP: ComposedDpEvent([RepeatAndSelectDpEvent(trial, mean, shape), "
                      "*final runs])",
               guarantee="covers releasing the selected trial's parameters, score and model, and the "
                         "retrained model(s); the other trials, their number and the child runs are internal "
                         "records of the search and must not be published (Papernot & Steinke 2022)")
    return out
