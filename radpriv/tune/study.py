"""`radpriv tune`: one Optuna study per (data, model, finetune, ε, accounting), in an RDB.

Each trial is an ordinary radpriv training run (radpriv.train.train), nested in MLflow under
the invocation's parent run; the objective is the trial's validation weighted F1 after its
last epoch. The study lives in `tune.storage` (any SQLAlchemy URL; default sqlite:///optuna.db)
and is loaded if it exists: the same command resumes it, and several processes — on one
machine or many, e.g. against PostgreSQL — work on one study (trial numbers come from the
storage, and proposals depend on the trial number: see sampling.py).

What is fixed when the study is created (its privacy filter, a random search's calibration and
secrets) is its record (study_record.py); what each run on the private data claims is in the
ledger (ledger.py). The parent run logs `privacy/epsilon_total` and `tune_privacy.json`.

`tune.models=[a,b,...]` searches across models in that one study: the model is a categorical
dimension beside lr and C (space.py), so the study's one ledger holds every trial of every model
on the same private reports, and the best (model, lr, C) is what is retrained.

The search plans its runs from N, the private training *units* under `privacy.unit`: patients
at the patient unit (radpriv/data/patients.py), else reports — counted exactly as each run's own
calibration in radpriv.train counts them, so that the plan (a random search's calibration, the
filter's planned run, δ) is the mechanism the runs then use.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import warnings
from dataclasses import dataclass, field

from omegaconf import DictConfig

from radpriv.config import compose, group_options, model_sources
from radpriv.data.patients import Unit, privacy_unit, training_units
from radpriv.data.sources import load_table
from radpriv.data.table import ReportTable
from radpriv.errors import ConfigError
from radpriv.model.encoder import available_models
from radpriv.privacy import accounting
from radpriv.tune import privacy_cost
from radpriv.tune.data_check import check_public_data
from radpriv.tune.privacy_cost import Mechanism
from radpriv.tune.privacy_filter import Filter
from radpriv.tune.runs import replace_data, strip_model_overrides, strip_tune_overrides
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
    n_private: int = 0  # N, the private training units: it fixes q, the steps and δ (public)
    unit: str = "report"  # what N counts and the guarantee protects: patient | report
    budget: float | None = None  # tune.budget (compose, public); None: the planned cost
    trial_table: object = None  # the ReportTable every trial trains on (split by `seed`)
    random_search: dict | None = None  # the calibration (random_search only)
    models: list[str] | None = None  # tune.models that load here (the model dimension); None: `model=`
    skipped_models: dict = field(default_factory=dict)  # tune.models that do not load here: why
    record: dict = field(default_factory=dict)  # the study's record (study_record.py)

    @functools.cached_property
    def planned(self) -> Mechanism:
        """The recipe's run on the private data (q, steps from N units, the batch and the epochs;
        σ calibrated to the per-run ε under replace-one, as train does): data-independent."""
        p = self.cfg.privacy
        q, steps = privacy_cost.trial_rate_and_steps(self.n_private, int(p.expected_batch_size),
                                                     int(self.cfg.trainer.max_epochs))
        return Mechanism(_planned_sigma(self.epsilon, self.delta, q, steps, str(p.accountant)), q, steps)

    @property
    def filter(self) -> Filter | None:
        """The study's privacy filter (compose and public with DP), from its record."""
        flt = self.record.get("filter")
        return None if flt is None else Filter.from_dict(flt)


@functools.lru_cache(maxsize=64)
def _planned_sigma(epsilon: float, delta: float, q: float, steps: int, accountant: str) -> float:
    return float(accounting.calibrate_noise_multiplier(epsilon, delta, q, steps, accountant=accountant,
                                                       relation=accounting.GUARANTEE_RELATION))


def study_name(cfg: DictConfig, models: list[str] | None = None) -> str:
    """tune.study_name, else one named by what it searches: a multi-model study by the models
    that load here (another set of models is another search space, so another study)."""
    if cfg.tune.study_name:
        return str(cfg.tune.study_name)
    eps = accounting.resolve_epsilon(cfg.privacy.epsilon)
    model = "+".join(models) if models else cfg.model.name
    return (f"{cfg.data.name}-{model}-{cfg.finetune.mode}-eps{'inf' if eps is None else f'{eps:g}'}"
            f"-{cfg.tune.accounting}")


def requested_models(t) -> list[str] | None:
    """tune.models as a list of model group names (None: not set); one-line errors for a bad one."""
    models = t.models
    if models is None:
        return None
    if isinstance(models, str):
        models = [models]
    try:
        models = [str(m) for m in models]
    except TypeError:
        raise ConfigError(f"tune.models={models!r}: expected a list of models, e.g. [bert_small,albert_base]") from None
    if not models:
        raise ConfigError("tune.models=[] searches no model: list at least one, or leave it null (`model=`)")
    if len(set(models)) != len(models):
        raise ConfigError(f"tune.models={models}: a model is listed twice")
    known = group_options("model")
    for m in models:
        if m not in known:
            raise ConfigError(f"tune.models: unknown model {m!r}: choose among {', '.join(known)}")
    return models


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
    sampler = t.sampler or ("random" if t.accounting == "random_search" else "tpe")
    if sampler not in ("tpe", "random"):
        raise ConfigError(f"tune.sampler={sampler!r}: expected tpe or random")
    check_space(t.space, str(t.accounting))
    requested_models(t)
    if t.accounting == "random_search":
        if sampler != "random":
            raise ConfigError("tune.accounting=random_search needs tune.sampler=random: the analysis holds for "
                              "independent trials, not for TPE's adaptive proposals")
        if accounting.resolve_epsilon(cfg.privacy.epsilon) is None:
            raise ConfigError("tune.accounting=random_search calibrates every trial to meet privacy.epsilon in "
                              "total: set a finite privacy.epsilon")
        privacy_cost.check_trial_distribution(n_trials, float(t.shape))
    _check_budget(cfg)
    for key in ("seed", "trials_seed"):
        value = t[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"tune.{key}={value!r}: expected a whole number or null")
    if t.register and not t.retrain_best:
        raise ConfigError("tune.register registers the retrained best model: set tune.retrain_best=true")
    if t.accounting == "public":
        if not t.public_data:
            raise ConfigError("tune.accounting=public needs tune.public_data=<data group> (the public dataset)")
        if not t.retrain_best:
            raise ConfigError("tune.accounting=public searches on public data only: it needs "
                              "tune.retrain_best=true to train the model on the private data")


def _check_budget(cfg: DictConfig) -> None:
    budget = cfg.tune.budget
    if budget is None:
        return
    if cfg.tune.accounting == "random_search":
        raise ConfigError("tune.budget is the filter budget of compose and public searches; a random search's "
                          "total is privacy.epsilon: leave tune.budget=null")
    if accounting.resolve_epsilon(cfg.privacy.epsilon) is None:
        raise ConfigError("tune.budget is a privacy budget, but privacy.epsilon=null trains without DP: set a "
                          "finite privacy.epsilon or leave tune.budget=null")
    try:
        value = float(budget)
    except (TypeError, ValueError):
        raise ConfigError(f"tune.budget={budget!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"tune.budget={budget!r}: expected a finite ε > 0, or null (the planned cost)")


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


def private_units(cfg: DictConfig, table: ReportTable) -> tuple[Unit, int]:
    """(the privacy unit, N): the unit `privacy.unit` gives on the private data and its number of
    training units, as a private run of radpriv.train resolves and counts them."""
    unit, _ = privacy_unit(cfg.privacy, table)  # (the cap it also checks limits reports, never N)
    return unit, training_units(table, unit)


def prepare(cfg: DictConfig, overrides: list[str]) -> Search:
    """Read the private data's size (δ, q, steps) and decide each mode's trial settings."""
    t = cfg.tune
    mode = str(t.accounting)
    base = strip_tune_overrides(overrides)
    models, skipped = None, {}
    if (requested := requested_models(t)) is not None:
        stripped = strip_model_overrides(base)  # each run's model is its trial's (or the best trial's)
        if len(stripped) != len(base):
            log.info("tune: tune.models=%s is searched; `model=` is ignored", requested)
        base = stripped
        models, skipped = available_models(model_sources(requested, base), "tune")
    table = load_table(cfg.data, int(cfg.seed))
    unit, n_private = private_units(cfg, table)
    delta = accounting.resolve_delta(cfg.privacy.delta, n_private)
    epsilon = accounting.resolve_epsilon(cfg.privacy.epsilon)
    budget = None if t.budget is None else float(t.budget)
    search = Search(cfg, mode, epsilon, delta, base, base, n_private=n_private, unit=unit.name, budget=budget,
                    trial_table=table, models=models, skipped_models=skipped)
    if epsilon is not None:
        log.info("tune: the search plans its runs per %s: N=%d training %ss (%s)", unit.name, n_private,
                 unit.name, unit.why)
    if mode == "public":
        search.trial_base = replace_data(base, str(t.public_data), t.public_data_path,
                                         list(t.public_overrides or []))
        public_cfg = compose(search.trial_base)
        search.trial_table = load_table(public_cfg.data, int(public_cfg.seed))
        check_public_data(table, search.trial_table)
    elif mode == "random_search":
        _calibrate_random_search(search)
    return search


def _calibrate_random_search(search: Search) -> None:
    """σ for every run of a random search whose total (replace-one) meets privacy.epsilon."""
    cfg, t = search.cfg, search.cfg.tune
    q, steps = privacy_cost.trial_rate_and_steps(search.n_private, int(cfg.privacy.expected_batch_size),
                                                 int(cfg.trainer.max_epochs))
    mean, shape = float(t.n_trials), float(t.shape)
    finals = 1 if t.retrain_best else 0
    sigma = privacy_cost.calibrate_search_noise(search.epsilon, search.delta, q, steps, mean, shape, finals)
    # each run is calibrated by train (replace-one) to the ε that a slightly larger σ spends alone,
    # so it gets σ' ≥ σ; PlanRecorder checks that before its first batch
    per_run = accounting.epsilon_spent(str(cfg.privacy.accountant),
                                       (sigma * (1 + privacy_cost.RUN_SIGMA_MARGIN), q, steps), search.delta,
                                       relation=accounting.GUARANTEE_RELATION)
    search.random_search = {"noise_multiplier": sigma, "sample_rate": q, "steps": steps, "delta": search.delta,
                            "mean": mean, "shape": shape, "target_epsilon": search.epsilon,
                            "per_run_epsilon": per_run, "relation": accounting.GUARANTEE_RELATION,
                            "planned_final_runs": finals}
    search.trial_base = [*search.base, f"privacy.epsilon={per_run!r}", f"privacy.delta={search.delta!r}"]
    log.info("tune: random search, %g trials on average: every run gets σ ≥ %.4g (ε %.4g alone, q=%.4g, "
             "%d steps) so that the whole search spends ε=%g (δ=%.3g, replace-one %s)", mean, sigma, per_run, q,
             steps, search.epsilon, search.delta, search.unit)


def enqueue_recipe(study, search: Search, limit: int) -> None:
    """A new study's first trials: the recipe's own values (tune.enqueue_recipe) — one trial, or
    in a search across models one per model (up to `limit`, this invocation's trials), so that
    every model starts from a known-good point and the study holds "default vs tuned" per model.

    Not in a random search: its guarantee needs every trial drawn from one distribution, and a
    fixed first trial is not such a draw.
    """
    cfg, mode = search.cfg, search.mode
    if not cfg.tune.enqueue_recipe:
        return
    if mode == "random_search":
        log.info("tune: random search: the recipe's values are not enqueued (every trial must be a random draw)")
        return
    if not search.models:
        points = [recipe_params(cfg, cfg.tune.space)]
    else:
        points = [{"model": m, **recipe_params(compose([*search.base, f"model={m}"]), cfg.tune.space)}
                  for m in search.models[:limit]]
    for params in points:
        if params:
            # skip_if_exists: workers that start together on a new study enqueue it once
            study.enqueue_trial(params, user_attrs={"radpriv.recipe": True}, skip_if_exists=True)
            log.info("tune: trial with the recipe's own values %s (tune.enqueue_recipe)", params)


def run_study(cfg: DictConfig, overrides: list[str]) -> dict:
    from radpriv.tracking.mlflow_run import client as tracking_client
    from radpriv.tracking.mlflow_run import experiment_name
    from radpriv.tracking.parent_run import open_parent_run
    from radpriv.tune.report import finish, log_parent_config, log_privacy
    from radpriv.tune.sampling import make_pruner, make_sampler
    from radpriv.tune.study_record import load_record, new_record, open_study
    from radpriv.tune.trials import Objective

    t0 = time.perf_counter()
    check_settings(cfg)
    t = cfg.tune
    storage = open_storage(str(t.storage))
    search = prepare(cfg, overrides)
    mode = search.mode
    sampler_name = t.sampler or ("random" if mode == "random_search" else "tpe")
    pruning = bool(t.pruning) and mode != "random_search"
    if t.pruning and not pruning:
        log.info("tune: no pruning in a random search (every trial must be the same mechanism, run to its end)")
    name = study_name(cfg, search.models)
    pruner = make_pruner(pruning, int(t.pruner.n_startup_trials), int(t.pruner.n_warmup_steps))
    # a new study's record is computed before the study exists: a bad budget leaves no study behind
    study, proposed = open_study(name, storage, pruner, lambda: new_record(search))
    created = proposed is not None
    search.record = load_record(study, proposed, search)
    # proposals from the study's seed (a secret one unless tune.seed is set): see sampling.py
    study.sampler = make_sampler(sampler_name, int(search.record["proposal_seed"]), int(t.tpe_startup_trials),
                                 multivariate=bool(search.models))
    k = search.record["trial_count"] if mode == "random_search" else None
    n_before = len(study.trials)
    n_to_run = int(t.n_trials) if k is None else max(0, k - n_before)
    if created and n_to_run:
        enqueue_recipe(study, search, n_to_run)
    log.info("tune: study %s in %s: %d trials so far, %d to run in this process", name, safe_url(str(t.storage)),
             n_before, n_to_run)
    if search.filter is not None:
        f = search.filter
        log.info("tune: privacy filter: budget ε=%.4g at δ=%.3g (%s), order α=%g, B(α)=%.4g: %d planned runs fit",
                 f.budget_epsilon, f.delta, f.source, f.order, f.rdp_budget, f.planned_runs_fit)

    client = tracking_client(cfg)
    tags = {"radpriv.tune.study": name, "radpriv.tune.accounting": mode, "radpriv.tune.role": "parent",
            "radpriv.tune.storage": safe_url(str(t.storage)), "radpriv.dataset": str(cfg.data.name),
            "radpriv.model": "+".join(search.models) if search.models else str(cfg.model.name)}
    if search.models:
        tags["radpriv.tune.models"] = ",".join(search.models)
        tags["radpriv.tune.skipped_models"] = ",".join(search.skipped_models) or "(none)"
    with open_parent_run(client, experiment_name(cfg), f"tune {name}", tags) as parent:
        parent_id, experiment = parent.run_id, parent.experiment_name
        log_parent_config(client, parent_id, cfg)
        try:
            objective = Objective(search, study_name=name, parent_run_id=parent_id, experiment=experiment,
                                  client=client, pruning=pruning, max_trials=k)
            if n_to_run:
                study.optimize(objective, n_trials=n_to_run, catch=(),
                               show_progress_bar=bool(cfg.trainer.progress_bar))
            return finish(search, study, client, parent_id, experiment, k, time.perf_counter() - t0,
                          refusals=objective.refusals)
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
