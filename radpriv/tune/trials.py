"""The objective: one trial = one nested training run, admitted by the ledger before it trains.

A pruned trial is not a crash: its run is tagged `radpriv.tune.pruned=true` and ended KILLED,
and its planned steps stay in the ledger. A trial the privacy filter refuses never trains: its
run is tagged `radpriv.tune.refused=true` and ended KILLED, the trial ends PRUNED with the user
attribute `refused`, and the study stops.
"""

from __future__ import annotations

import hashlib
import logging

import optuna

from radpriv.errors import ConfigError
from radpriv.process_memory import return_freed_memory
from radpriv.tune.privacy_filter import BudgetExhausted
from radpriv.tune.runs import PlanRecorder, admit_run, mechanism_of, run_config
from radpriv.tune.space import suggest

log = logging.getLogger(__name__)

OBJECTIVE = "val/f1_weighted"


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
        self.refusals: list[str] = []  # this invocation's trials the privacy filter refused

    def __call__(self, trial: optuna.Trial) -> float:
        from radpriv.train import train

        if self.max_trials is not None and trial.number >= self.max_trials:
            trial.set_user_attr("skipped", "beyond the random search's K trials (another worker took them)")
            trial.study.stop()
            raise optuna.TrialPruned("beyond K")
        search = self.search
        public = search.mode == "public"
        params, extra = suggest(trial, search.cfg.tune.space, search.models)
        trial.set_user_attr("data", "public" if public else "private")
        cfg = run_config([*search.trial_base, *extra], parent_run_id=self.parent_run_id,
                         experiment=self.experiment, run_name=f"trial {trial.number}", trial=True,
                         tags={"radpriv.tune.study": self.study_name, "radpriv.tune.role": "trial",
                               "radpriv.tune.trial": trial.number, "radpriv.tune.split_seed": cfg_seed(search)})
        # one split for every trial (the table, made with the study's seed), but each trial its own
        # initialisation and dropout; its Poisson batches and noise come from fresh OS entropy in
        # every run whatever the seed (radpriv.privacy.randomness), as the analyses assume
        cfg.seed = trial_seed(cfg_seed(search), trial.number)

        def record(plan) -> None:
            mech = mechanism_of(plan)
            trial.set_user_attr("mechanism", None if mech is None else mech.as_list())
            if not public:  # a public trial touches no private report: nothing to claim
                admit_run(search, trial.study, "trial", trial.number, plan, f"trial {trial.number}")

        callbacks = [PlanRecorder(record)]
        if self.pruning:
            from optuna_integration import PyTorchLightningPruningCallback

            callbacks.append(PyTorchLightningPruningCallback(trial, monitor=OBJECTIVE))
        try:
            summary = train(cfg, table=search.trial_table, extra_callbacks=callbacks)
        except optuna.TrialPruned:
            self._end_child_run(trial.number, "radpriv.tune.pruned")
            log.info("tune: trial %d pruned (%s)", trial.number, _fmt(params))
            raise
        except BudgetExhausted as e:
            self._end_child_run(trial.number, "radpriv.tune.refused")
            trial.set_user_attr("refused", str(e))
            self.refusals.append(str(e))
            log.warning("%s; the study stops", e)
            trial.study.stop()
            raise optuna.TrialPruned("refused by the privacy filter") from None
        finally:
            return_freed_memory()  # a study's process would otherwise keep every trial's peak (process_memory)
        run_id = summary["run_id"]
        trial.set_user_attr("run_id", run_id)
        value = self.client.get_run(run_id).data.metrics.get(OBJECTIVE)
        if value is None:
            raise ConfigError(f"tune: trial {trial.number} logged no {OBJECTIVE}: the data has no validation split")
        log.info("tune: trial %d: %s=%.4f (%s)", trial.number, OBJECTIVE, value, _fmt(params))
        return float(value)

    def _end_child_run(self, number: int, tag: str) -> None:
        """Tag trial `number`'s MLflow run (pruned or refused) and end it KILLED: not a crash."""
        exp = self.client.get_run(self.parent_run_id).info.experiment_id
        runs = self.client.search_runs(
            [exp], f"tags.mlflow.parentRunId = '{self.parent_run_id}' and tags.`radpriv.tune.trial` = '{number}'")
        for run in runs:
            self.client.set_tag(run.info.run_id, tag, "true")
            self.client.set_terminated(run.info.run_id, "KILLED")


def cfg_seed(search) -> int:
    return int(search.cfg.seed)


def trial_seed(seed: int, number: int) -> int:
    """The training seed of trial `number`: distinct per trial, reproducible from the study's seed."""
    digest = hashlib.sha256(f"radpriv.tune:{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1  # < 2**31: any seeding API takes it


def _fmt(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
