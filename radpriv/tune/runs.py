"""One training run of a search (a trial or the retrained best), nested under the study's parent.

A run is an ordinary `radpriv.train.train` run; what the search adds is its place in MLflow
(parent run, experiment, tags, name) and :class:`PlanRecorder`, which hands the run's privacy
plan to the study's ledger at fit start — after σ is calibrated, before the first private batch
— where :func:`admit_run` admits it or refuses it (then it never trains).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
from omegaconf import DictConfig, open_dict

from radpriv.config import compose
from radpriv.errors import PrivacyError
from radpriv.privacy.callback import DPCallback, PrivacyPlan
from radpriv.tune import ledger, privacy_filter
from radpriv.tune.privacy_cost import Mechanism


def strip_tune_overrides(overrides: Sequence[str]) -> list[str]:
    """The user's overrides minus the `tune` ones: what every training run starts from."""
    def key(ov: str) -> str:
        return ov.lstrip("+~").partition("=")[0]

    return [ov for ov in overrides if key(ov) != "tune" and not key(ov).startswith("tune.")]


def strip_model_overrides(overrides: Sequence[str]) -> list[str]:
    """`overrides` without the model group choice (`model=...`): a multi-model search sets it per run.
    Settings inside the group (`model.max_length=...`) are kept: they apply to every model."""
    return [ov for ov in overrides if ov.lstrip("+~").partition("=")[0] != "model"]


def replace_data(overrides: Sequence[str], data_group: str, path: str | None, extra: Sequence[str]) -> list[str]:
    """`overrides` with every data setting replaced: `data=<group>` (+ path, + extra)."""
    def is_data(ov: str) -> bool:
        key = ov.lstrip("+~").partition("=")[0]
        return key == "data" or key.startswith("data.")

    out = [ov for ov in overrides if not is_data(ov)] + [f"data={data_group}"]
    if path:
        out.append(f"data.path={path}")
    return out + list(extra)


def run_config(overrides: Sequence[str], *, parent_run_id: str, experiment: str, run_name: str,
               tags: dict, trial: bool) -> DictConfig:
    """The config of one run of the search.

    No checkpoints (a crashed trial is not resumed: the study moves on, and the ledger has
    already counted it). A trial registers no model and logs no pyfunc (its adapter/ is logged
    as always); the retrain keeps the user's settings.
    """
    cfg = compose(overrides)
    with open_dict(cfg):
        cfg.run_name = run_name
        cfg.tracking.parent_run_id = parent_run_id
        cfg.tracking.experiment = experiment
        cfg.tracking.checkpoint_dir = None
        # the run's model as a tag too (in a search across models, the UI's column to compare by)
        cfg.tracking.tags = {**(cfg.tracking.tags or {}), **{k: str(v) for k, v in tags.items()},
                             "radpriv.tune.model": str(cfg.model.name)}
        if trial:
            cfg.tracking.register = None
            cfg.tracking.log_model = False
    return cfg


def mechanism_of(plan: PrivacyPlan | None) -> Mechanism | None:
    if plan is None:
        return None
    return Mechanism(float(plan.noise_multiplier), float(plan.sample_rate), int(plan.planned_steps))


class PlanRecorder(L.Callback):
    """Calls `record(plan)` at fit start (`None` for a non-private run).

    `record` writes the plan to the ledger, and may raise (e.g. a random-search trial whose σ is
    below the search's calibration) — then training stops before touching a private batch.
    """

    def __init__(self, record: Callable[[PrivacyPlan | None], None]) -> None:
        self.record = record

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dp = next((c for c in trainer.callbacks if isinstance(c, DPCallback)), None)
        self.record(dp.plan if dp is not None else None)


def check_random_search_run(mech: Mechanism | None, plan: dict, what: str) -> None:
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


def admit_run(search, study, kind: str, ident, plan: PrivacyPlan | None, what: str) -> None:
    """Claim this run in the ledger before its first private batch; raise BudgetExhausted if refused.

    compose/public: the study's Rényi filter decides (record-then-verify, ledger.admit). A
    random search's trials are admitted as they come (K bounds them; each is checked to be the
    calibrated mechanism); its retrains must keep the total within privacy.epsilon. A study
    without DP records the run and claims nothing.
    """
    mech = mechanism_of(plan)
    eps = plan.target_epsilon if plan is not None else None
    key = ledger.claim_key(kind, ident)
    record = search.record
    if search.mode == "random_search":
        check_random_search_run(mech, record["random_search"], what)
        entry = ledger.claim_record(kind, mech, eps, None)
        if kind == "trial":
            ledger.write_claim(study, key, entry, ledger.ADMITTED)
            return
        if not ledger.admit(study, key, entry, ledger.random_search_retrain_rule(record)):
            raise privacy_filter.BudgetExhausted(
                f"tune: another retrain would take study {study.study_name} beyond its ε_total="
                f"{record['random_search']['target_epsilon']:g} (privacy.epsilon): {what} is refused")
        return
    flt = search.filter
    if flt is None:  # privacy.epsilon=null: no guarantee to keep
        ledger.write_claim(study, key, ledger.claim_record(kind, mech, eps, None), ledger.ADMITTED)
        return
    cost = privacy_filter.run_cost(flt, mech)
    entry = ledger.claim_record(kind, mech, eps, cost)
    if not ledger.admit(study, key, entry, ledger.filter_rule(flt, kind)):
        raise privacy_filter.BudgetExhausted(
            f"tune: {what} would take study {study.study_name} beyond its privacy budget ε={flt.budget_epsilon:.4g} "
            f"(δ={flt.delta:.3g}; RDP at α={flt.order:g}: {cost:.4g} more, "
            f"{'with a retrain kept in reserve, ' if kind == 'trial' and flt.reserve_retrain else ''}"
            f"B={flt.rdp_budget:.4g}): refused before its first batch")
