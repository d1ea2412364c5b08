"""The study's privacy ledger, in the Optuna storage: its record, and a claim per run on the private data.

Everything lives in the storage itself (so it covers every worker and every invocation), as
study user attributes:

- ``radpriv.study``: written once, by the worker that created the study, before any trial:
  the accounting mode, δ, the adjacency (replace-one), the privacy unit (patient or report),
  the privacy filter (compose/public: ε budget, order α, B(α)), the random search's
  calibration, and the secrets a random search's guarantee needs: the proposals' seed and K
  (never logged to MLflow);
- ``radpriv.claim.trial.<number>`` and ``radpriv.claim.retrain.<parent run id>``: one claim per
  run on the private data, written at the run's fit start — after σ is calibrated, before its
  first private batch — with its mechanism [σ, q, planned steps] (null: no DP), its cost ρ(α)
  under the filter, and its state: ``pending`` → ``admitted`` (it trains) or ``withdrawn`` (it
  never trains). A run that is pruned, fails or whose worker dies after admission stays
  admitted with its *planned* steps (never fewer steps than ran); a worker that dies between
  ``pending`` and its decision leaves a pending claim, counted as spent (the safe side).

Each trial also carries ``data`` = private|public and its mechanism as trial attributes (for
reading the study; the claims are what the accounting uses).

Admission under concurrency (record-then-verify)
------------------------------------------------
Optuna offers no transaction across workers, so :func:`admit` (1) writes the claim as
``pending``, (2) re-reads every claim, and (3) marks its own ``admitted`` only if all live
claims (admitted or pending, its own included) fit the rule, else ``withdrawn``. Why the sum of
admitted claims can never exceed the budget: take the admitted claim c whose last ``pending``
write came last. Every other admitted claim d wrote its last ``pending`` before that, and from
then on d was pending or admitted, never withdrawn. c's re-read follows c's write, so it saw
every such d (the storage serialises writes, and a read sees every write committed before it:
sqlite, and PostgreSQL's default READ COMMITTED). c's check therefore covered all admitted
claims (plus, perhaps, pending ones that later withdrew: counting more is safe), and c was
admitted only because they fit. Two claims that see each other pending may both withdraw even
if one would have fit; each then retries after a random pause (the retry is a new ``pending``
write, so the argument holds for it too).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from radpriv.errors import PrivacyError
from radpriv.tune import privacy_cost, privacy_filter
from radpriv.tune.privacy_cost import Mechanism

log = logging.getLogger(__name__)

STUDY_ATTR = "radpriv.study"
CLAIM_PREFIX = "radpriv.claim."
PENDING, ADMITTED, WITHDRAWN = "pending", "admitted", "withdrawn"
#: admission attempts when other workers' pending claims crowd a claim out
ADMIT_ATTEMPTS = 3


@dataclass(frozen=True)
class Claim:
    key: str
    kind: str  # trial | retrain
    mechanism: Mechanism | None  # None: the run trains without DP
    epsilon: float | None  # the run's own target ε
    cost: float  # ρ(α) at the filter's order (+∞ without DP; nan when the study has no filter)
    state: str

    @property
    def live(self) -> bool:
        return self.state != WITHDRAWN


def claim_key(kind: str, ident) -> str:
    return f"{CLAIM_PREFIX}{kind}.{ident}"


def claim_record(kind: str, mechanism: Mechanism | None, epsilon: float | None, cost: float | None) -> dict:
    """What the storage keeps about one run (JSON: no infinities)."""
    record = {"kind": kind, "mechanism": None if mechanism is None else mechanism.as_list(),
              "epsilon": epsilon}
    if cost is not None and math.isfinite(cost):
        record["cost"] = float(cost)
    return record


def _claim(key: str, value: dict) -> Claim:
    mech = None if value.get("mechanism") is None else Mechanism(*value["mechanism"])
    cost = math.inf if mech is None else float(value.get("cost", math.nan))
    eps = value.get("epsilon")
    return Claim(key, str(value["kind"]), mech, None if eps is None else float(eps), cost, str(value["state"]))


def claims(study) -> list[Claim]:
    """Every claim, read from the storage now (study user attributes are never cached)."""
    return [_claim(k, v) for k, v in sorted(study.user_attrs.items()) if k.startswith(CLAIM_PREFIX)]


def write_claim(study, key: str, record: dict, state: str) -> None:
    study.set_user_attr(key, {**record, "state": state})


def verify(study, key: str, may_run: Callable[[list[Claim]], bool]) -> tuple[bool, bool]:
    """Step 2 of :func:`admit`, after `key`'s pending write: (may it run, did other pending claims
    take part in the decision)."""
    live = [c for c in claims(study) if c.live]
    return may_run(live), any(c.state == PENDING and c.key != key for c in live)


def admit(study, key: str, record: dict, may_run: Callable[[list[Claim]], bool],
          attempts: int = ADMIT_ATTEMPTS, pause_s: float = 0.5) -> bool:
    """Record-then-verify admission of one claim (see the module docstring); True: it may run."""
    for attempt in range(attempts):
        write_claim(study, key, record, PENDING)
        ok, crowded = verify(study, key, may_run)
        write_claim(study, key, record, ADMITTED if ok else WITHDRAWN)
        if ok:
            return True
        if not crowded or attempt == attempts - 1:
            return False
        time.sleep(pause_s * (1 + random.random()))  # noqa: S311 - a pause, not a secret
    return False


# ------------------------------------------------------------------------------------------
# the rules
# ------------------------------------------------------------------------------------------


def filter_rule(flt: privacy_filter.Filter, candidate_kind: str) -> Callable[[list[Claim]], bool]:
    """compose/public: the live claims' costs fit B(α), with a retrain's room after a trial."""
    def may_run(live: list[Claim]) -> bool:
        trials = [c.cost for c in live if c.kind == "trial"]
        retrains = [c.cost for c in live if c.kind == "retrain"]
        return privacy_filter.fits(flt, trials, retrains, candidate_kind == "trial")

    return may_run


def random_search_retrain_rule(record: dict) -> Callable[[list[Claim]], bool]:
    """random_search: the retrains (live) on top of the selection stay within privacy.epsilon."""
    plan = record["random_search"]

    def may_run(live: list[Claim]) -> bool:
        trials = [c for c in live if c.kind == "trial"]
        finals = [c.mechanism for c in live if c.kind == "retrain"]
        if any(m is None for m in finals):
            return False
        total = _random_search_total(trials, finals, plan, float(record["delta"]))
        return total <= float(plan["target_epsilon"]) * (1 + 1e-9)

    return may_run


# ------------------------------------------------------------------------------------------
# what the study spent
# ------------------------------------------------------------------------------------------


def _random_search_total(trials: list[Claim], finals: list[Mechanism], plan: dict, delta: float) -> float:
    q, steps = float(plan["sample_rate"]), int(plan["steps"])
    for c in trials:
        m = c.mechanism
        if m is None or (m.sample_rate, m.steps) != (q, steps) or m.noise_multiplier < float(plan["noise_multiplier"]):
            raise PrivacyError(f"tune: a trial ran mechanism {None if m is None else m.as_list()}, not the "
                               f"search's calibrated [≥{plan['noise_multiplier']:.6g}, {q:.6g}, {steps}]")
    # the smallest σ any trial used bounds every trial (RDP decreases in σ); with no trial
    # (K = 0) the search's own calibration stands
    sigma = min([c.mechanism.noise_multiplier for c in trials], default=float(plan["noise_multiplier"]))
    return privacy_cost.repeat_and_select_epsilon(Mechanism(sigma, q, steps), delta, float(plan["mean"]),
                                                  float(plan["shape"]), finals)


def record_unit(record: dict) -> str:
    """The study's privacy unit: what its N counts and its guarantee protects (a record from
    before the patient unit has none: report)."""
    return str(record.get("unit") or "report")


def protects(unit: str) -> str:
    """What ε_total protects, in words, for the guarantee line."""
    if unit == "patient":
        return "it protects each patient of the private training split, with all their reports (replace one patient)"
    return "it protects each report of the private training split (replace one report)"


def _counts(study, live: list[Claim], all_claims: list[Claim]) -> dict:
    public = sum(t.user_attrs.get("data") == "public" and "mechanism" in t.user_attrs
                 for t in study.get_trials(deepcopy=False))
    return {"private_trials": sum(c.kind == "trial" for c in live),
            "private_final_runs": sum(c.kind == "retrain" for c in live),
            "refused_runs": sum(not c.live for c in all_claims), "public_trials": public}


def search_privacy(study, record: dict) -> dict:
    """ε_total of everything the study did to the private data, with how it was computed."""
    mode = record["accounting"]
    every = claims(study)
    live = [c for c in every if c.live]
    out = {"accounting": mode, "adjacency": record["adjacency"], "unit": record_unit(record),
           "delta": float(record["delta"]), **_counts(study, live, every)}
    if mode == "random_search":
        return _random_search(live, record, out)
    flt = record.get("filter")
    if flt is None:
        out.update(epsilon_total=math.inf, guarantee="none: the study trains without differential privacy "
                   "(privacy.epsilon=null)")
        return out
    flt = privacy_filter.Filter.from_dict(flt)
    # a claim without DP (infinite cost) is only ever pending on its way to withdrawn
    used = math.fsum(c.cost for c in live if math.isfinite(c.cost))
    out.update(epsilon_total=flt.budget_epsilon, filter={**flt.as_dict(), **privacy_filter.summary(flt, used)},
               runs=[{"run": c.key.removeprefix(CLAIM_PREFIX),
                      "mechanism": None if c.mechanism is None else c.mechanism.as_list(),
                      "rdp_at_order": c.cost, "state": c.state} for c in live],
               method=f"Rényi filter (Feldman & Zrnic 2021) at order α={flt.order:g}: runs are admitted while "
                      f"their summed replace-one RDP stays within B(α)={flt.rdp_budget:.6g}; (α, B)-RDP is "
                      "converted to (ε, δ) as dp_accounting's compute_epsilon does")
    if mode == "public":
        out["guarantee"] = ("the trials trained on public data only; every run on the private data (the "
                            "retrains of every invocation) passed the study's privacy filter: ε_total is its "
                            f"budget, fixed when the study was created; {protects(out['unit'])}")
    else:
        out["guarantee"] = ("every run that trained on the private data (trials of every invocation and worker, "
                            "pruned and failed ones with their planned steps, and every retrain) passed the "
                            "study's privacy filter, however adaptively it was chosen: ε_total is its budget, "
                            "fixed when the study was created, and covers releasing all of them, the child "
                            f"runs included; {protects(out['unit'])}")
    return out


def _random_search(live: list[Claim], record: dict, out: dict) -> dict:
    plan = record.get("random_search")
    if plan is None:
        raise PrivacyError("tune: this random-search study has no calibration record in its storage")
    trials = [c for c in live if c.kind == "trial"]
    finals = [c.mechanism for c in live if c.kind == "retrain"]
    if any(c.mechanism is None for c in live):
        out.update(epsilon_total=math.inf, guarantee="none: a run trained on the private data without DP")
        return out
    total = _random_search_total(trials, finals, plan, float(record["delta"]))
    sigma = min([c.mechanism.noise_multiplier for c in trials], default=float(plan["noise_multiplier"]))
    out.update(epsilon_total=total, target_epsilon=float(plan["target_epsilon"]), noise_multiplier=sigma,
               calibrated_noise_multiplier=float(plan["noise_multiplier"]), sample_rate=float(plan["sample_rate"]),
               steps=int(plan["steps"]), mean_trials=float(plan["mean"]), shape=float(plan["shape"]),
               finals=[m.as_list() for m in finals],
               method="replace-one RDP of one trial (radpriv.privacy.replace_one_rdp), dp_accounting's "
                      "_compute_rdp_repeat_and_select(orders, rdp, mean, shape), plus each retrain's RDP, "
                      "converted by dp_accounting's compute_epsilon",
               guarantee="covers releasing the selected trial's parameters, score and model, and the "
                         "retrained model(s); the other trials, their number and the child runs are internal "
                         "records of the search and must not be published (Papernot & Steinke 2022); "
                         f"{protects(out['unit'])}")
    seeded = record.get("public_randomness")
    if seeded:
        out.update(epsilon_total=math.inf, epsilon_if_secret=total,
                   guarantee=f"none: {seeded} was set, so whoever reads the config can recompute the "
                             "proposals or the number of trials; the analysis needs both secret (tests and "
                             "reproducibility only)")
    return out
