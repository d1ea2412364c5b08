"""The objective: one trial = one nested training run, recorded in the ledger before it trains.

A pruned trial is not a crash: its run is tagged `radpriv.tune.pruned=true` and ended KILLED,
and its planned steps stay in the ledger.
"""

from __future__ import annotations

import hashlib
import logging

import optuna

from radpriv.errors import ConfigError, PrivacyError
from radpriv.process_memory import return_freed_memory
from radpriv.tune import ledger
from radpriv.tune.runs import PlanRecorder, mechanism_of, run_config
from radpriv.tune.space import suggest

log = logging.getLogger(__name__)

OBJECTIVE = "val/f1_weighted"


def check_random_search_run(mech, plan: dict, what: str) -> None:
    """Refuse (before its first batch) a random-search run that is not the calibrated mechanism."""
    if mech is None:
        raise PrivacyError(f"tune: {what} would train without DP in a random search")
    sigma = float(plan["noise_multiplier"])
    if (mech.sample_rate, mech.steps) != (float(plan["sample_rate"]), int(plan["steps"])):
        raise PrivacyError(f"tune: {what} plans q={mech.sample_rate:.6g}, {mech.steps} steps; the search was "
                           f"calibrated for q={plan['sample_rate']:.6g}, {plan['steps']} steps")
    if mech.noise_multiplier < sigma * (1 - 1e-12):
        raise PrivacyError(f"tune: {what} would use σ={mech.noise_multiplier:.6g}, below the search's "
                           f"calibrated σ={sigma:.6g}")


class Objective:
    def __init__(self, search, *, study_name: str, parent_run_id: str, experiment: str, client,
                 pruning: bool, max_trials: int | None) -> None:
        self.search = search
        self.study_name = study_name
        self.parent_run_id = parent_run_id
        self.experiment = experiment
        self.client = client
        self.pruning = pruning
        self.max_trials = max_trials  # K of a random search: trial numbers ≥ K never train

    def __call__(self, trial: optuna.Trial) -> float:
        from radpriv.train import train

        if self.max_trials is not None and trial.number >= self.max_trials:
            trial.set_user_attr("skipped", "beyond the random search's K trials (another worker took them)")
            trial.study.stop()
            raise optuna.TrialPruned("beyond K")
        search = self.search
        public = search.mode == "public"
        params, extra = suggest(trial, search.cfg.tune.space)
        trial.set_user_attr("data", "public" if public else "private")
        cfg = run_config([*search.trial_base, *extra], parent_run_id=self.parent_run_id,
                         experiment=self.experiment, run_name=f"trial {trial.number}", trial=True,
                         tags={"radpriv.tune.study": self.study_name, "radpriv.tune.role": "trial",
                               "radpriv.tune.trial": trial.number, "radpriv.tune.split_seed": cfg_seed(search)})
        # one split for every trial (the table, made with the study's seed), but each trial's own
        # Poisson batches, noise and initialisation: runs of the same seed would be correlated,
        # and both composition and repeat-and-select assume runs with independent randomness
        cfg.seed = trial_seed(cfg_seed(search), trial.number)

        def record(plan) -> None:
            mech = mechanism_of(plan)
            if search.random_search is not None:
                check_random_search_run(mech, search.random_search, f"trial {trial.number}")
            for key, value in ledger.record(mech, plan.target_epsilon if plan else None).items():
                trial.set_user_attr(key, value)

        callbacks = [PlanRecorder(record)]
        if self.pruning:
            from optuna_integration import PyTorchLightningPruningCallback

            callbacks.append(PyTorchLightningPruningCallback(trial, monitor=OBJECTIVE))
        try:
            summary = train(cfg, table=search.trial_table, extra_callbacks=callbacks)
        except optuna.TrialPruned:
            self._mark_pruned(trial.number)
            log.info("tune: trial %d pruned (%s)", trial.number, _fmt(params))
            raise
        finally:
            return_freed_memory()  # a study's process would otherwise keep every trial's peak (process_memory)
        run_id = summary["run_id"]
        trial.set_user_attr("run_id", run_id)
        value = self.client.get_run(run_id).data.metrics.get(OBJECTIVE)
        if value is None:
            raise ConfigError(f"tune: trial {trial.number} logged no {OBJECTIVE}: the data has no validation split")
        log.info("tune: trial %d: %s=%.4f (%s)", trial.number, OBJECTIVE, value, _fmt(params))
        return float(value)

    def _mark_pruned(self, number: int) -> None:
        exp = self.client.get_run(self.parent_run_id).info.experiment_id
        runs = self.client.search_runs(
            [exp], f"tags.mlflow.parentRunId = '{self.parent_run_id}' and tags.`radpriv.tune.trial` = '{number}'")
        for run in runs:
            self.client.set_tag(run.info.run_id, "radpriv.tune.pruned", "true")
            self.client.set_terminated(run.info.run_id, "KILLED")


def cfg_seed(search) -> int:
    return int(search.cfg.seed)


def trial_seed(seed: int, number: int) -> int:
    """The training seed of trial `number`: distinct per trial, reproducible from the study's seed."""
    digest = hashlib.sha256(f"radpriv.tune:{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1  # < 2**31: any seeding API takes it


def _fmt(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
