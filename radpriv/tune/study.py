"""`radpriv tune`: one Optuna study per (data, model, finetune, ε, accounting), in an RDB.

Each trial is an ordinary radpriv training run (radpriv.train.train) nested under the study's
parent MLflow run; its objective is the validation weighted F1 at the trial's last epoch. The
study lives in `tune.storage` (any SQLAlchemy URL; default sqlite:///optuna.db) and is loaded if
it exists, so an interrupted search resumes and several processes — on one machine or many,
e.g. against PostgreSQL — work on one study.

The search's privacy cost is accounted per `tune.accounting` (privacy_cost.py) and logged on
the parent run as `privacy/epsilon_total`, with the details in `tune_privacy.json`.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from radpriv.config import compose
from radpriv.data.sources import load_table
from radpriv.errors import ConfigError, PrivacyError
from radpriv.privacy import accounting
from radpriv.tune import privacy_cost
from radpriv.tune.space import check_space, overrides_for, suggest

log = logging.getLogger(__name__)

ACCOUNTING_MODES = ("compose", "random_search", "public")
OBJECTIVE = "val/f1_weighted"
TRIALS_ATTR = "radpriv.random_search.trials"  # K, drawn once per study
FINALS_ATTR = "radpriv.final_runs"  # mechanisms of every retrain on the private data, all invocations


def study_name(cfg: DictConfig) -> str:
    eps = accounting.resolve_epsilon(cfg.privacy.epsilon)
    return cfg.tune.get("study_name") or (
        f"{cfg.data.name}-{cfg.model.name}-{cfg.finetune.mode}-eps{'inf' if eps is None else f'{eps:g}'}"
        f"-{cfg.tune.accounting}")


def _check(cfg: DictConfig) -> None:
    t = cfg.tune
    if t.accounting not in ACCOUNTING_MODES:
        raise ConfigError(f"tune.accounting={t.accounting!r}: expected one of {', '.join(ACCOUNTING_MODES)}")
    if int(t.n_trials) < 1:
        raise ConfigError(f"tune.n_trials={t.n_trials}: need at least 1 trial")
    if t.sampler not in ("tpe", "random"):
        raise ConfigError(f"tune.sampler={t.sampler!r}: expected tpe or random")
    check_space(t.space, t.accounting)
    if t.accounting == "public":
        if not t.get("public_data"):
            raise ConfigError("tune.accounting=public needs tune.public_data=<data group> (the public dataset)")
        if not t.retrain_best:
            raise ConfigError("tune.accounting=public tunes on public data only: set tune.retrain_best=true "
                              "to train the private model")
    if t.accounting == "random_search" and accounting.resolve_epsilon(cfg.privacy.epsilon) is None:
        raise ConfigError("tune.accounting=random_search calibrates noise to privacy.epsilon: set a finite ε")


def _storage(url: str):
    import optuna

    try:
        return optuna.storages.RDBStorage(url)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many kinds for a bad URL
        raise ConfigError(f"tune.storage={url!r} cannot be opened: {str(e).splitlines()[0]}") from None


def _trial_cfg(base: list[str], cfg: DictConfig, extra: list[str], parent: str, tags: dict) -> DictConfig:
    trial = compose([*base, *extra, f"tracking.parent_run_id={parent}",
                     f"tracking.experiment={_experiment(cfg)}", "tracking.checkpoint_dir=null",
                     *[f"+tracking.tags.{k}={v}" for k, v in tags.items()]])
    return trial


def _experiment(cfg: DictConfig) -> str:
    from radpriv.tracking.mlflow_run import experiment_name

    return experiment_name(cfg)


def _private_sizes(cfg: DictConfig) -> int:
    return load_table(cfg.data, int(cfg.seed)).split.count("train")


def run_study(cfg: DictConfig, overrides: list[str]) -> dict:
    import optuna
    from mlflow import MlflowClient

    from radpriv.tracking.mlflow_run import tracking_uri
    from radpriv.train import train

    _check(cfg)
    t = cfg.tune
    mode = str(t.accounting)
    epsilon = accounting.resolve_epsilon(cfg.privacy.epsilon)
    # the training overrides a trial starts from: the user's, minus the tune.* ones
    base = [o for o in overrides if not o.lstrip("+~").startswith("tune")]
    n_private = _private_sizes(cfg)
    delta = (float(cfg.privacy.delta) if cfg.privacy.get("delta") is not None
             else accounting.default_delta(n_private))

    public_base = base
    if mode == "public":
        public_base = [*[o for o in base if not o.startswith(("data=", "data."))], f"data={t.public_data}"]
        if t.get("public_data_path"):
            public_base.append(f"data.path={t.public_data_path}")
        public_cfg = compose(public_base)
        private_fp = load_table(cfg.data, int(cfg.seed)).subset("train").fingerprint()
        if load_table(public_cfg.data, int(cfg.seed)).subset("train").fingerprint() == private_fp:
            raise PrivacyError("tune.public_data trains on the same reports as the private data: the "
                               "search would not be public; pick another dataset or use accounting=compose")

    search_sigma = None
    if mode == "random_search":
        q, steps = privacy_cost.trial_rate_and_steps(n_private, int(cfg.privacy.expected_batch_size),
                                                     int(cfg.trainer.max_epochs))
        search_sigma = privacy_cost.calibrate_search_noise(
            epsilon, delta, q, steps, float(t.n_trials), float(t.shape), bool(t.retrain_best))
        # each trial is calibrated to the ε this σ spends alone, under the run's own accountant;
        # the calibration then returns σ' ≥ σ (checked after every trial)
        per_trial_eps = accounting.epsilon_spent(str(cfg.privacy.accountant), (search_sigma, q, steps), delta)
        public_base = [*base, f"privacy.epsilon={per_trial_eps}", f"privacy.delta={delta}"]
        log.info("tune: random search, mean %g trials: per-trial σ ≥ %.4g (ε %.4g alone) so that the "
                 "total is ε=%g", float(t.n_trials), search_sigma, per_trial_eps, epsilon)

    storage = _storage(str(t.storage))
    name = study_name(cfg)
    seed = int(t.seed)
    sampler = (optuna.samplers.RandomSampler(seed=seed) if mode == "random_search" or t.sampler == "random"
               else optuna.samplers.TPESampler(seed=seed))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
              if t.pruning and mode != "random_search" else optuna.pruners.NopPruner())
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)

    client = MlflowClient(tracking_uri(cfg.tracking.get("uri")))
    experiment = _experiment(cfg)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    parent = client.create_run(exp_id, run_name=f"tune {name}", tags={
        "radpriv.tune.study": name, "radpriv.tune.accounting": mode, "radpriv.tune.storage": _safe_url(str(t.storage))})
    parent_id = parent.info.run_id
    try:
        n_to_run = int(t.n_trials)
        if mode == "random_search":
            drawn = study.user_attrs.get(TRIALS_ATTR)
            if drawn is None:
                drawn = _draw_trial_count(float(t.n_trials), float(t.shape), seed)
                study.set_user_attr(TRIALS_ATTR, drawn)
            done = len([tr for tr in study.trials if tr.state.is_finished()])
            n_to_run = max(0, int(drawn) - done)
            log.info("tune: random search draws K=%d trials (%d already finished)", drawn, done)

        def objective(trial):
            from optuna_integration import PyTorchLightningPruningCallback

            params, extra = suggest(trial, t.space)
            trial_cfg = _trial_cfg(public_base, cfg, extra, parent_id,
                                   {"radpriv.tune.trial": trial.number, "radpriv.tune.study": name})
            callbacks = [PyTorchLightningPruningCallback(trial, monitor=OBJECTIVE)] if t.pruning and mode != "random_search" else []
            mech = _mechanism(trial_cfg)
            if mech is not None:
                trial.set_user_attr("mechanism", [mech.noise_multiplier, mech.sample_rate, mech.steps])
            trial.set_user_attr("touches_private_data", mode != "public")
            try:
                summary = train(trial_cfg, extra_callbacks=callbacks)
            except optuna.TrialPruned:
                _tag_pruned(client, parent_id, trial.number)
                raise
            run = client.get_run(summary["run_id"])
            trial.set_user_attr("run_id", summary["run_id"])
            if search_sigma is not None:
                used = float(run.data.metrics.get("privacy/noise_multiplier", math.nan))
                if not used >= search_sigma * (1 - 1e-9):
                    raise PrivacyError(f"tune: trial {trial.number} used σ={used:.6g} below the search's "
                                       f"calibrated σ={search_sigma:.6g}")
            value = run.data.metrics.get(OBJECTIVE)
            if value is None:
                raise ConfigError(f"tune: trial {trial.number} logged no {OBJECTIVE} (validation split empty?)")
            return float(value)

        if n_to_run:
            study.optimize(objective, n_trials=n_to_run, catch=())
        result = _finish(cfg, study, client, parent_id, base, mode, epsilon, delta, search_sigma, train)
        client.set_terminated(parent_id, "FINISHED")
        return result
    except BaseException:
        client.set_terminated(parent_id, "FAILED")
        raise


def _mechanism(trial_cfg: DictConfig) -> privacy_cost.Mechanism | None:
    """The trial's DP mechanism as planned (σ calibrated exactly as train will)."""
    eps = accounting.resolve_epsilon(trial_cfg.privacy.epsilon)
    if eps is None:
        return None
    n = load_table(trial_cfg.data, int(trial_cfg.seed)).split.count("train")
    q, steps = privacy_cost.trial_rate_and_steps(n, int(trial_cfg.privacy.expected_batch_size),
                                                 int(trial_cfg.trainer.max_epochs))
    delta = (float(trial_cfg.privacy.delta) if trial_cfg.privacy.get("delta") is not None
             else accounting.default_delta(n))
    sigma = accounting.calibrate_noise_multiplier(eps, delta, q, steps, accountant=trial_cfg.privacy.accountant)
    return privacy_cost.Mechanism(float(sigma), q, steps)


def _draw_trial_count(mean: float, shape: float, seed: int) -> int:
    """K for the random search: Poisson(mean) for shape=inf; else the truncated negative binomial
    of Papernot & Steinke with this mean and shape (η), drawn by rejection of K = 0."""
    rng = np.random.default_rng([seed, 0x7E57])
    if math.isinf(shape):
        return int(rng.poisson(mean))
    if shape == 0:
        raise ConfigError("tune.shape=0 (logarithmic distribution) is not supported; use .inf, 1 or η > 0")
    # truncated NB(η, γ): mean = η(1-γ)/(γ(1-γ^η)) → solve γ by bisection
    def mean_of(g: float) -> float:
        return shape * (1 - g) / (g * (1 - g ** shape))
    lo, hi = 1e-9, 1 - 1e-9
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_of(mid) > mean else (lo, mid)
    gamma = (lo + hi) / 2
    while True:
        k = int(rng.negative_binomial(shape, gamma))
        if k >= 1:
            return k


def _tag_pruned(client, parent_id: str, number: int) -> None:
    for run in client.search_runs([client.get_run(parent_id).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent_id}' and tags.`radpriv.tune.trial` = '{number}'"):
        client.set_tag(run.info.run_id, "radpriv.tune.pruned", "true")
        client.set_terminated(run.info.run_id, "KILLED")


def _safe_url(url: str) -> str:
    """The storage URL without a password, for tags and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url.split("@")[-1]


def _finish(cfg, study, client, parent_id, base, mode, epsilon, delta, search_sigma, train) -> dict:
    import optuna

    complete = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise ConfigError(f"tune: study {study.study_name} has no completed trial (all pruned or failed)")
    best = study.best_trial
    client.log_param(parent_id, "best.trial", best.number)
    for k, v in best.params.items():
        client.log_param(parent_id, f"best.{k}", v)
    client.log_metric(parent_id, "tune/best_value", float(best.value))
    client.log_metric(parent_id, "tune/trials_complete", len(complete))

    final = None
    final_mech = None
    if cfg.tune.retrain_best:
        final_cfg = _trial_cfg(base, cfg, overrides_for(best.params), parent_id, {"radpriv.tune.final": "true"})
        if search_sigma is not None:  # the retrain is one more run of the calibrated mechanism
            n = _private_sizes(cfg)
            q, steps = privacy_cost.trial_rate_and_steps(n, int(cfg.privacy.expected_batch_size),
                                                         int(cfg.trainer.max_epochs))
            per = accounting.epsilon_spent(str(cfg.privacy.accountant), (search_sigma, q, steps), delta)
            final_cfg = compose([*base, *overrides_for(best.params), f"privacy.epsilon={per}",
                                 f"privacy.delta={delta}", f"tracking.parent_run_id={parent_id}",
                                 f"tracking.experiment={_experiment(cfg)}", "tracking.checkpoint_dir=null",
                                 "+tracking.tags.radpriv.tune.final=true"])
        final_mech = _mechanism(final_cfg)
        if final_mech is not None and mode != "public":
            # every final run of this study touched the private data: later invocations count it
            finals = list(study.user_attrs.get(FINALS_ATTR, []))
            study.set_user_attr(FINALS_ATTR, [*finals, [final_mech.noise_multiplier, final_mech.sample_rate,
                                                        final_mech.steps]])
        final = train(final_cfg)
        client.set_tag(parent_id, "radpriv.tune.final_run", final["run_id"])
        for k, v in final["metrics"].items():
            if k.startswith("test/") and "/" not in k[5:]:
                client.log_metric(parent_id, f"final/{k}", float(v))

    privacy = _search_privacy(study, mode, epsilon, delta, search_sigma, final_mech, cfg)
    if privacy.get("epsilon_total") is not None and math.isfinite(privacy["epsilon_total"]):
        client.log_metric(parent_id, "privacy/epsilon_total", privacy["epsilon_total"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "tune_privacy.json").write_text(json.dumps(privacy, indent=2, default=float))
        client.log_artifact(parent_id, str(tmp / "tune_privacy.json"))
        from radpriv.tune.plots import save_study_plots

        for png in save_study_plots(study, tmp / "plots"):
            client.log_artifact(parent_id, str(png), "plots")
    log.info("tune: best %s=%.4f (trial %d: %s); ε_total %s", OBJECTIVE, best.value, best.number,
             best.params, privacy.get("epsilon_total"))
    return {"run_id": parent_id, "study": study.study_name, "best_params": best.params,
            "best_value": float(best.value), "final_run_id": final["run_id"] if final else None,
            "privacy": privacy,
            "metrics": {"tune/best_value": float(best.value),
                        **({"privacy/epsilon_total": privacy["epsilon_total"]}
                           if privacy.get("epsilon_total") is not None else {}),
                        **({f"final/{k}": v for k, v in final["metrics"].items()} if final else {})}}


def _search_privacy(study, mode, epsilon, delta, search_sigma, final_mech, cfg) -> dict:
    """ε_total of everything this study did to the private data (docs/PRIVACY.md)."""
    import optuna

    finished = [tr for tr in study.trials if tr.state in (optuna.trial.TrialState.COMPLETE,
                                                          optuna.trial.TrialState.PRUNED,
                                                          optuna.trial.TrialState.FAIL)]
    out = {"accounting": mode, "delta": delta, "target_epsilon": epsilon, "trials": len(finished)}
    if epsilon is None:
        out.update(epsilon_total=None, guarantee="none: the search trained without differential privacy")
        return out
    if mode == "public":
        eps = final_mech and accounting.epsilon_spent("prv", (final_mech.noise_multiplier, final_mech.sample_rate,
                                                            final_mech.steps), delta)
        out.update(epsilon_total=eps, public_data=str(cfg.tune.public_data),
                   guarantee="trials trained on public data only; the private data was used once, by the "
                             "final run")
        return out
    if mode == "random_search":
        mean, shape = float(cfg.tune.n_trials), float(cfg.tune.shape)
        q, steps = privacy_cost.trial_rate_and_steps(_private_sizes(cfg), int(cfg.privacy.expected_batch_size),
                                                     int(cfg.trainer.max_epochs))
        used = [tr.user_attrs.get("mechanism", [search_sigma])[0] for tr in finished]
        sigma = min([search_sigma, *used])  # the smallest σ any trial used bounds them all
        mech = privacy_cost.Mechanism(sigma, q, steps)
        total = privacy_cost.repeat_and_select_epsilon(mech, delta, mean, shape,
                                                       mech if final_mech is not None else None)
        out.update(epsilon_total=total, noise_multiplier=sigma, mean_trials=mean, shape=shape,
                   trials_drawn=study.user_attrs.get(TRIALS_ATTR),
                   guarantee="covers releasing the selected trial (its parameters, score and model) and "
                             "the retrained model; the per-trial child runs are internal records of the "
                             "search and must not be published (Papernot & Steinke 2022)")
        return out
    mechs = [privacy_cost.Mechanism(*tr.user_attrs["mechanism"]) for tr in finished if "mechanism" in tr.user_attrs]
    mechs += [privacy_cost.Mechanism(*m) for m in study.user_attrs.get(FINALS_ATTR, [])]
    composed = privacy_cost.composed_epsilon(mechs, delta)
    out.update(epsilon_total=composed["epsilon"], epsilon_total_pld=composed.get("epsilon_pld"),
               runs_composed=len(mechs),
               guarantee="composition of every trial that trained on the private data (planned steps, "
                         "pruned trials included) and every final run of the study, in all "
                         "invocations: covers releasing all of them")
    return out


def tune_command(overrides: list[str]) -> dict:
    cfg = compose(["+tune=default", *overrides])
    return run_study(cfg, overrides)

