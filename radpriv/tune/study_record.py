"""A study's record (`radpriv.study` in the Optuna storage): what is fixed when the study is created.

The worker that creates the study (Optuna's unique study name decides which one) writes the
record once, before any trial: accounting mode, δ, adjacency, the privacy unit (patient or
report: what N counts and what every run's guarantee protects), the privacy filter (compose and
public: ε budget, α, B(α)), the random search's calibration, and the secrets a random search's
guarantee needs — the proposals' seed and K, drawn from OS entropy (radpriv.privacy.randomness)
and kept only in the storage, never in MLflow. Every other worker and every later invocation
reads it (waiting briefly for the creator), checks that its own settings agree, and uses the
stored values: one record per study, however many workers race to start it.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from radpriv.errors import ConfigError, PrivacyError
from radpriv.privacy import randomness
from radpriv.privacy.accounting import GUARANTEE_RELATION
from radpriv.tune import ledger, privacy_cost, privacy_filter

log = logging.getLogger(__name__)

RECORD_VERSION = 2
#: how long a worker waits for the creating worker to write the record
WAIT_FOR_RECORD_S = 30.0


def open_study(name: str, storage, pruner, propose):
    """(study, proposed record): the existing study and None, or a new one (created here: Optuna's
    unique study name makes exactly one worker its creator) and `propose()`, its record."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage, pruner=pruner), None
    except KeyError:  # no such study yet
        pass
    proposed = propose()
    try:
        return optuna.create_study(study_name=name, storage=storage, direction="maximize", pruner=pruner), proposed
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it meanwhile
        return optuna.load_study(study_name=name, storage=storage, pruner=pruner), None


def _explicit(value) -> int | None:
    return None if value is None else int(value)


def _public_randomness(mode: str, seed: int | None, trials_seed: int | None) -> str | None:
    """The settings that make a random search's secrets public (None: none, or not a random search)."""
    if mode != "random_search":
        return None
    named = [n for n, v in (("tune.seed", seed), ("tune.trials_seed", trials_seed)) if v is not None]
    return " and ".join(named) or None


def new_record(search) -> dict:
    """The record this invocation would give a new study (its secrets are used only if it does)."""
    cfg, mode = search.cfg, search.mode
    seed, trials_seed = _explicit(cfg.tune.seed), _explicit(cfg.tune.trials_seed)
    record = {"version": RECORD_VERSION, "accounting": mode, "adjacency": GUARANTEE_RELATION,
              "delta": float(search.delta), "unit": search.unit, "n_private": int(search.n_private),
              "nonprivate": search.epsilon is None,
              "proposal_seed": randomness.fresh_seed() if seed is None else seed,
              "seeds": {"seed": seed, "trials_seed": trials_seed},
              "public_randomness": _public_randomness(mode, seed, trials_seed),
              "filter": None, "random_search": None, "trial_count": None}
    if mode == "random_search":
        rng = randomness.numpy_generator() if trials_seed is None else np.random.default_rng([trials_seed, 0x7E57])
        record["random_search"] = search.random_search
        record["trial_count"] = privacy_cost.draw_trial_count(float(cfg.tune.n_trials), float(cfg.tune.shape), rng)
    elif search.epsilon is not None:
        planned_trials = int(cfg.tune.n_trials) if mode == "compose" else 0
        record["filter"] = privacy_filter.create(search.budget, search.delta, search.planned,
                                                 planned_trials, reserve_retrain=mode == "compose").as_dict()
    return record


def _refuse(study, what: str, stored, given) -> None:
    raise ConfigError(f"tune: study {study.study_name} was created with {what}={stored}, this command gives "
                      f"{given}: that is fixed when a study is created (start another: tune.study_name=...)")


def check_record(study, record: dict, search) -> None:
    """One-line errors when this invocation's settings disagree with the study's record."""
    cfg = search.cfg
    if record.get("version") != RECORD_VERSION:
        raise ConfigError(f"tune: study {study.study_name} was made by another radpriv version (record "
                          f"{record.get('version')}): start a new study (tune.study_name=...)")
    if record["accounting"] != search.mode:
        _refuse(study, "tune.accounting", record["accounting"], search.mode)
    # before δ: a changed unit changes N and so δ, and the unit is the reason to name
    if ledger.record_unit(record) != search.unit:
        _refuse(study, "privacy.unit (resolved)", ledger.record_unit(record), search.unit)
    if not math.isclose(float(record["delta"]), float(search.delta), rel_tol=1e-9):
        _refuse(study, "δ", record["delta"], search.delta)
    if bool(record["nonprivate"]) != (search.epsilon is None):
        _refuse(study, "privacy.epsilon", "null" if record["nonprivate"] else "a finite ε",
                "null" if search.epsilon is None else search.epsilon)
    for key in ("seed", "trials_seed"):
        given = _explicit(cfg.tune[key])
        if given is not None and given != record["seeds"][key]:
            _refuse(study, f"tune.{key}", record["seeds"][key] if record["seeds"][key] is not None
                    else "null (a secret seed)", given)
    flt = record.get("filter")
    if flt is not None and search.budget is not None and not math.isclose(
            float(flt["budget_epsilon"]), float(search.budget), rel_tol=1e-6):
        _refuse(study, "tune.budget", f"{flt['budget_epsilon']:.10g}", search.budget)
    if search.mode == "random_search":
        _check_random_search(study, record["random_search"], search.random_search)


def _check_random_search(study, stored: dict, plan: dict) -> None:
    """A resumed random search must be the same mechanism and trial distribution."""
    keys = ("sample_rate", "steps", "delta", "mean", "shape", "target_epsilon")
    changed = [k for k in keys if not math.isclose(float(stored[k]), float(plan[k]), rel_tol=1e-9)]
    if changed:
        _refuse(study, changed[0], stored[changed[0]], plan[changed[0]])
    if float(plan["noise_multiplier"]) < float(stored["noise_multiplier"]) * (1 - 1e-9):
        raise PrivacyError("tune: the recalibrated σ is below the study's stored σ; refusing to mix them")


def load_record(study, proposed: dict | None, search) -> dict:
    """The study's record: `proposed` (from :func:`new_record`, computed before the study was
    created, so a bad setting never leaves a study without a record) when this worker created
    it; else the stored one, read (waiting for the creator) and checked against this invocation."""
    created = proposed is not None
    if created:
        study.set_user_attr(ledger.STUDY_ATTR, proposed)
    deadline = time.monotonic() + WAIT_FOR_RECORD_S
    while (record := study.user_attrs.get(ledger.STUDY_ATTR)) is None:
        if time.monotonic() > deadline:
            raise ConfigError(f"tune: study {study.study_name} has no radpriv record (made by an older radpriv, "
                              "or its creating worker stopped before writing it): start a new study "
                              "(tune.study_name=...)")
        time.sleep(0.2)
    if not created:
        check_record(study, record, search)
    return record
