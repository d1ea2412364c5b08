"""`radpriv tune`: one Optuna study per (data, model, finetune, ε, accounting), in an RDB.

Each trial is an ordinary radpriv training run (radpriv.train.train), nested in MLflow under
the invocation's parent run; the objective is the trial's validation weighted F1 after its
last epoch. The study lives in `tune.storage` (any SQLAlchemy URL; default sqlite:///optuna.db)
and is loaded if it exists: the same command resumes it, and several processes — on one
machine or many, e.g. against PostgreSQL — work on one study (trial numbers come from the
storage, and proposals depend on the trial number: see sampling.py).

What the search spends (ledger.py, privacy_cost.py) is logged on the parent run as
`privacy/epsilon_total`, with the details in `tune_privacy.json`.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from radpriv.config import compose
from radpriv.data.sources import load_table
from radpriv.errors import ConfigError, PrivacyError
from radpriv.privacy import accounting
from radpriv.tune import ledger, privacy_cost
from radpriv.tune.data_check import check_public_data
from radpriv.tune.runs import replace_data, strip_tune_overrides
from radpriv.tune.space import check_space, recipe_params

log = logging.getLogger(__name__)

ACCOUNTING_MODES = ("compose", "random_search", "public")


@dataclass
class Search:
    """Everything an invocation decided before the first trial (see run_study)."""

    cfg: DictConfig
    mode: str
    epsilon: float | None  # privacy.epsilon: per run (compose, public), the total (random_search)
    delta: float
    base: list[str]  # training overrides of the retrain (the user's, minus tune.*)
    trial_base: list[str]  # training overrides every trial starts from
    trial_table: object = None  # the ReportTable every trial trains on (split by `seed`)
    random_search: dict | None = None  # the calibration (random_search only)


def study_name(cfg: DictConfig) -> str:
    if cfg.tune.get("study_name"):
        return str(cfg.tune.study_name)
    eps = accounting.resolve_epsilon(cfg.privacy.epsilon)
    return (f"{cfg.data.name}-{cfg.model.name}-{cfg.finetune.mode}-eps{'inf' if eps is None else f'{eps:g}'}"
            f"-{cfg.tune.accounting}")


def check_settings(cfg: DictConfig) -> None:
    """One-line errors for tune settings, before any storage, data or MLflow run is opened."""
    t = cfg.tune
    if t.accounting not in ACCOUNTING_MODES:
        raise ConfigError(f"tune.accounting={t.accounting!r}: expected one of {', '.join(ACCOUNTING_MODES)}")
    try:
        n_trials = float(t.n_trials)
    except (TypeError, ValueError):
        raise ConfigError(f"tune.n_trials={t.n_trials!r} is not a number") from None
    if not n_trials >= 1:
        raise ConfigError(f"tune.n_trials={t.n_trials}: need at least 1 trial")
    if t.accounting != "random_search" and n_trials != int(n_trials):
        raise ConfigError(f"tune.n_trials={t.n_trials}: a whole number of trials (only random_search takes a mean)")
    sampler = t.get("sampler") or ("random" if t.accounting == "random_search" else "tpe")
    if sampler not in ("tpe", "random"):
        raise ConfigError(f"tune.sampler={sampler!r}: expected tpe or random")
    check_space(t.space, str(t.accounting))
    if t.accounting == "random_search":
        if sampler != "random":
            raise ConfigError("tune.accounting=random_search needs tune.sampler=random: the analysis holds for "
                              "independent trials, not for TPE's adaptive proposals")
        if accounting.resolve_epsilon(cfg.privacy.epsilon) is None:
            raise ConfigError("tune.accounting=random_search calibrates every trial to meet privacy.epsilon in "
                              "total: set a finite privacy.epsilon")
        privacy_cost.check_trial_distribution(n_trials, float(t.shape))
    if t.get("register") and not t.retrain_best:
        raise ConfigError("tune.register registers the retrained best model: set tune.retrain_best=true")
    if t.accounting == "public":
        if not t.get("public_data"):
            raise ConfigError("tune.accounting=public needs tune.public_data=<data group> (the public dataset)")
        if not t.retrain_best:
            raise ConfigError("tune.accounting=public searches on public data only: it needs "
                              "tune.retrain_best=true to train the model on the private data")


def open_storage(url: str):
    """Optuna's RDBStorage for `url` (sqlite waits up to 60 s for a lock held by another worker).

    Workers started together on a fresh database race to create its schema; the loser's error
    ("already exists", a duplicate alembic version) means the schema is there: it tries again.
    """
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(4):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # heartbeats let any worker mark a dead worker's trial failed (it stays in the ledger)
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=60,
                                                  grace_period=180)
        except (IntegrityError, OperationalError) as e:
            racing = any(w in str(e) for w in ("already exists", "UNIQUE constraint", "database is locked"))
            if not racing or attempt == 3:
                raise ConfigError(f"tune.storage={safe_url(url)!r} cannot be opened: {_first_line(e)}") from None
            time.sleep(0.5 + attempt)
        except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many kinds for a bad URL
            raise ConfigError(f"tune.storage={safe_url(url)!r} cannot be opened: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def safe_url(url: str) -> str:
    """The storage URL without its password, for tags and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL was refused earlier
        return url.rsplit("@", 1)[-1]


def prepare(cfg: DictConfig, overrides: list[str]) -> Search:
    """Read the private data's size (δ, q, steps) and decide each mode's trial settings."""
    t = cfg.tune
    mode = str(t.accounting)
    table = load_table(cfg.data, int(cfg.seed))
    n_private = table.split.count("train")
    delta = accounting.resolve_delta(cfg.privacy.get("delta"), n_private)
    epsilon = accounting.resolve_epsilon(cfg.privacy.epsilon)
    base = strip_tune_overrides(overrides)
    search = Search(cfg, mode, epsilon, delta, base, base, trial_table=table)
    if mode == "public":
        search.trial_base = replace_data(base, str(t.public_data), t.get("public_data_path"),
                                         list(t.get("public_overrides") or []))
        public_cfg = compose(search.trial_base)
        search.trial_table = load_table(public_cfg.data, int(public_cfg.seed))
        check_public_data(table, search.trial_table)
    elif mode == "random_search":
        q, steps = privacy_cost.trial_rate_and_steps(n_private, int(cfg.privacy.expected_batch_size),
                                                     int(cfg.trainer.max_epochs))
        mean, shape = float(t.n_trials), float(t.shape)
        finals = 1 if t.retrain_best else 0
        sigma = privacy_cost.calibrate_search_noise(epsilon, delta, q, steps, mean, shape, finals)
        # each run is calibrated (by train, under its own accountant) to the ε that σ spends
        # alone, so it gets σ' ≥ σ; PlanRecorder checks that before its first batch
        per_run = accounting.epsilon_spent(str(cfg.privacy.accountant), (sigma, q, steps), delta)
        search.random_search = {"noise_multiplier": sigma, "sample_rate": q, "steps": steps, "delta": delta,
                                "mean": mean, "shape": shape, "target_epsilon": epsilon,
                                "per_run_epsilon": per_run, "accountant": str(cfg.privacy.accountant),
                                "planned_final_runs": finals}
        search.trial_base = [*base, f"privacy.epsilon={per_run!r}", f"privacy.delta={delta!r}"]
        log.info("tune: random search, %g trials on average: every run gets σ ≥ %.4g (ε %.4g alone, q=%.4g, "
                 "%d steps) so that the whole search spends ε=%g (δ=%.3g)", mean, sigma, per_run, q, steps,
                 epsilon, delta)
    return search


def _check_random_search_record(study, plan: dict) -> dict:
    """A resumed random search must be the same mechanism and trial distribution."""
    stored = study.user_attrs.get(ledger.RANDOM_SEARCH_ATTR)
    if stored is None:
        study.set_user_attr(ledger.RANDOM_SEARCH_ATTR, plan)
        return plan
    keys = ("sample_rate", "steps", "delta", "mean", "shape", "target_epsilon")
    changed = [k for k in keys if not math.isclose(float(stored[k]), float(plan[k]), rel_tol=1e-9)]
    if changed:
        raise ConfigError(f"tune: study {study.study_name} was calibrated with {changed[0]}={stored[changed[0]]}, "
                          f"this command gives {plan[changed[0]]}: resume it with the same settings, or start "
                          "another study (tune.study_name=...)")
    if float(plan["noise_multiplier"]) < float(stored["noise_multiplier"]) * (1 - 1e-9):
        raise PrivacyError("tune: the recalibrated σ is below the study's stored σ; refusing to mix them")
    return stored


def _trial_count(study, t) -> int:
    """K: drawn once per study, from OS entropy unless tune.trials_seed is set (tests).

    The analysis needs K to be random *and unknown* to whoever sees the released model: a
    public seed would make it a fixed K, for which releasing the best of K costs far more.
    """
    stored = study.user_attrs.get(ledger.TRIAL_COUNT_ATTR)
    if stored is not None:
        return int(stored)
    seed = t.get("trials_seed")
    rng = np.random.default_rng(secrets.randbits(128) if seed is None else [int(seed), 0x7E57])
    k = privacy_cost.draw_trial_count(float(t.n_trials), float(t.shape), rng)
    study.set_user_attr(ledger.TRIAL_COUNT_ATTR, k)
    return int(study.user_attrs[ledger.TRIAL_COUNT_ATTR])  # another worker may have written first


def enqueue_recipe(study, cfg: DictConfig, mode: str) -> None:
    """A new study's first trial: the recipe's own values (tune.enqueue_recipe).

    Not in a random search: its guarantee needs every trial drawn from one distribution, and a
    fixed first trial is not such a draw.
    """
    if not cfg.tune.get("enqueue_recipe", True):
        return
    if mode == "random_search":
        log.info("tune: random search: the recipe's values are not enqueued (every trial must be a random draw)")
        return
    params = recipe_params(cfg, cfg.tune.space)
    if params:
        # skip_if_exists: workers that start together on a new study enqueue it once
        study.enqueue_trial(params, user_attrs={"radpriv.recipe": True}, skip_if_exists=True)
        log.info("tune: trial 0 is the recipe's own values %s (tune.enqueue_recipe)", params)


@contextmanager
def parent_run(client, experiment: str, run_name: str, tags: dict):
    """The invocation's parent run: the one `mlflow run` opened (MLFLOW_RUN_ID), else a new one.

    MLFLOW_RUN_ID is hidden from the trials meanwhile (radpriv.train would join that run).
    Yields (run id, experiment name).
    """
    from mlflow.exceptions import MlflowException

    joined = os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        if joined:
            run = client.get_run(joined)
            experiment = client.get_experiment(run.info.experiment_id).name
            for k, v in tags.items():
                client.set_tag(joined, k, v)
            run_id = joined
        else:
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                try:
                    exp_id = client.create_experiment(experiment)
                except MlflowException:  # another worker created it meanwhile
                    exp_id = client.get_experiment_by_name(experiment).experiment_id
            else:
                exp_id = exp.experiment_id
            run_id = client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        try:
            yield run_id, experiment
        except BaseException as e:
            if not joined:
                client.set_terminated(run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
        if not joined:
            client.set_terminated(run_id, "FINISHED")
    finally:
        if joined:
            os.environ["MLFLOW_RUN_ID"] = joined


def run_study(cfg: DictConfig, overrides: list[str]) -> dict:
    import optuna

    from radpriv.tracking.mlflow_run import client as tracking_client
    from radpriv.tracking.mlflow_run import experiment_name
    from radpriv.tune.report import finish, log_parent_config, log_privacy
    from radpriv.tune.sampling import make_pruner, make_sampler
    from radpriv.tune.trials import Objective

    t0 = time.perf_counter()
    check_settings(cfg)
    t = cfg.tune
    storage = open_storage(str(t.storage))
    search = prepare(cfg, overrides)
    mode = search.mode
    sampler_name = t.get("sampler") or ("random" if mode == "random_search" else "tpe")
    pruning = bool(t.pruning) and mode != "random_search"
    if t.pruning and not pruning:
        log.info("tune: no pruning in a random search (every trial must be the same mechanism, run to its end)")
    name = study_name(cfg)
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=make_sampler(sampler_name, t.get("seed"), int(t.tpe_startup_trials)),
        pruner=make_pruner(pruning, int(t.pruner.n_startup_trials), int(t.pruner.n_warmup_steps)))
    k = None
    if mode == "random_search":
        search.random_search = _check_random_search_record(study, search.random_search)
        k = _trial_count(study, t)
    n_before = len(study.trials)
    n_to_run = int(t.n_trials) if k is None else max(0, k - n_before)
    if n_before == 0 and n_to_run:
        enqueue_recipe(study, cfg, mode)
    log.info("tune: study %s in %s: %d trials so far, %d to run in this process", name, safe_url(str(t.storage)),
             n_before, n_to_run)

    client = tracking_client(cfg)
    tags = {"radpriv.tune.study": name, "radpriv.tune.accounting": mode, "radpriv.tune.role": "parent",
            "radpriv.tune.storage": safe_url(str(t.storage)), "radpriv.dataset": str(cfg.data.name),
            "radpriv.model": str(cfg.model.name)}
    with parent_run(client, experiment_name(cfg), f"tune {name}", tags) as (parent_id, experiment):
        log_parent_config(client, parent_id, cfg)
        try:
            objective = Objective(search, study_name=name, parent_run_id=parent_id, experiment=experiment,
                                  client=client, pruning=pruning, max_trials=k)
            if n_to_run:
                study.optimize(objective, n_trials=n_to_run, catch=(),
                               show_progress_bar=bool(cfg.trainer.progress_bar))
            return finish(search, study, client, parent_id, experiment, k, time.perf_counter() - t0)
        except BaseException:
            # what was spent is logged even when the search fails: its runs did touch the data
            try:
                log_privacy(search, study, client, parent_id)
            except Exception as e:  # noqa: BLE001 - never hide the original error
                log.warning("tune: could not log the search's privacy cost: %s", e)
            raise


def tune_command(overrides: list[str]) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # radpriv logs one line per trial itself
    cfg = compose(["+tune=default", *overrides])
    return run_study(cfg, overrides)
