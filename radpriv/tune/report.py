"""The end of an invocation: select the best trial, retrain it, and write the parent run.

The parent run holds the resolved config (params), the best parameters (`best.<name>`) and value
(`tune/best_value`), the final model's test metrics (`final/...`), `privacy/epsilon_total` (and,
under the privacy filter, `privacy/budget_used` and `privacy/budget_remaining`: fractions of the
filter's RDP budget B(α)), the tags `radpriv.tune.guarantee` and (with DP) `radpriv.unit`, and
the artifacts `tune_privacy.json`, `trials.csv`, Optuna's plots (`plots/*.png`) and the per-model
comparison (`model_comparison.csv`/`.png`, comparison.py).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

from radpriv.errors import ConfigError
from radpriv.tune import ledger, privacy_filter
from radpriv.tune.comparison import log_comparison
from radpriv.tune.privacy_cost import Mechanism
from radpriv.tune.runs import PlanRecorder, admit_run, run_config
from radpriv.tune.space import MECHANISM_PARAMS, overrides_for
from radpriv.tune.trials import OBJECTIVE

log = logging.getLogger(__name__)


def log_parent_config(client, run_id: str, cfg) -> None:
    from mlflow.entities import Param
    from omegaconf import OmegaConf

    from radpriv.tracking.mlflow_run import flatten

    params = [Param(k, v) for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items()]
    for i in range(0, len(params), 100):  # MLflow's limit per batch
        client.log_batch(run_id, params=params[i:i + 100])


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def log_privacy(search, study, client, parent_id: str) -> dict:
    """ε_total of the whole study (every worker and invocation so far) onto the parent run."""
    privacy = ledger.search_privacy(study, search.record)
    privacy["epsilon_per_run"] = search.epsilon if search.mode != "random_search" else None
    total = privacy.get("epsilon_total")
    if total is not None and math.isfinite(total):
        client.log_metric(parent_id, "privacy/epsilon_total", float(total))
    client.log_metric(parent_id, "privacy/delta", float(search.delta))
    flt = privacy.get("filter")
    if flt is not None:
        for key in ("budget_used", "budget_remaining"):
            client.log_metric(parent_id, f"privacy/{key}", float(flt[key]))
        client.log_metric(parent_id, "privacy/filter_order", float(flt["order"]))
    client.set_tag(parent_id, "radpriv.tune.guarantee", str(privacy.get("guarantee", ""))[:4000])
    if not search.record.get("nonprivate"):  # as a private training run is tagged: what ε_total protects
        client.set_tag(parent_id, "radpriv.unit", privacy["unit"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tune_privacy.json"
        path.write_text(json.dumps(_json_safe(privacy), indent=2))
        client.log_artifact(parent_id, str(path))
    return privacy


def _retrain_cost_check(search, study, best) -> str | None:
    """Why the retrain cannot be admitted, judged before it is started (None: try it).

    Only a shortcut, so that a retrain the ledger would refuse does not build a model and open a
    run; the binding check is the admission at its fit start."""
    live = [c for c in ledger.claims(study) if c.live]
    key = ledger.claim_key("retrain", "<candidate>")
    if search.mode == "random_search":
        rs = search.record["random_search"]
        mech = Mechanism(rs["noise_multiplier"], rs["sample_rate"], rs["steps"])
        candidate = ledger.Claim(key, "retrain", mech, None, math.nan, ledger.PENDING)
        if not ledger.random_search_retrain_rule(search.record)([*live, candidate]):
            return (f"another retrain would take study {study.study_name} beyond its ε_total="
                    f"{rs['target_epsilon']:g} (privacy.epsilon)")
        return None
    flt = search.filter
    if flt is None:
        return None
    cost = None
    if best is not None:
        claim = next((c for c in live if c.key == ledger.claim_key("trial", best.number)), None)
        if claim is not None:
            cost = claim.cost
        elif not set(best.params) & set(MECHANISM_PARAMS):
            cost = flt.planned_rdp  # public: the best trial's parameters keep the recipe's mechanism
    if cost is None:
        return None
    candidate = ledger.Claim(key, "retrain", None, None, cost, ledger.PENDING)
    if not ledger.filter_rule(flt, "retrain")([*live, candidate]):
        used = privacy_filter.summary(flt, math.fsum(c.cost for c in live if math.isfinite(c.cost)))["budget_used"]
        return (f"the retrain would take study {study.study_name} beyond its privacy budget "
                f"ε={flt.budget_epsilon:.4g} ({used:.1%} of it used)")
    return None


def _retrain(search, study, client, parent_id: str, experiment: str, params: dict) -> dict:
    """Train and test the final model with `params` on the private data (a child run).

    Raises BudgetExhausted when the ledger refuses it at fit start (before its first private
    batch); its MLflow run is then tagged `radpriv.tune.refused` and ended KILLED."""
    from radpriv.train import train

    overrides = [*search.base, *overrides_for(params)]
    rs = search.random_search
    if rs is not None:
        overrides += [f"privacy.epsilon={rs['per_run_epsilon']!r}", f"privacy.delta={search.delta!r}"]
    cfg = run_config(overrides, parent_run_id=parent_id, experiment=experiment, run_name="final (best parameters)",
                     tags={"radpriv.tune.study": study.study_name, "radpriv.tune.role": "final"}, trial=False)

    def record(plan) -> None:
        admit_run(search, study, "retrain", parent_id, plan, "the retrain")

    log.info("tune: retraining with the best parameters on the private data")
    try:
        return train(cfg, extra_callbacks=[PlanRecorder(record)])
    except privacy_filter.BudgetExhausted:
        exp = client.get_run(parent_id).info.experiment_id
        for run in client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}' and "
                                             "tags.`radpriv.tune.role` = 'final'"):
            client.set_tag(run.info.run_id, "radpriv.tune.refused", "true")
            client.set_terminated(run.info.run_id, "KILLED")
        raise


def _register(search, study, parent_id: str, run_id: str, privacy: dict) -> dict:
    """`tune.register=<name>`: the retrained model becomes a new version of <name>, aliased
    `champion`. The version's own privacy tags (radpriv/tracking/registry.py) are the final
    run's; the search's total is added beside them, so the registry never shows only the
    final run's ε for a model whose parameters were searched on the private data."""
    from radpriv.tracking.registry import register_model, registry_client, set_alias

    name = str(search.cfg.tune.register)
    uri = search.cfg.tracking.uri
    version = register_model(run_id, name, uri)
    client, _ = registry_client(uri)
    total = privacy.get("epsilon_total")
    total_text = "none (non-private)" if total is None or not math.isfinite(total) else f"{total:.6g}"
    tags = {"radpriv.tune.epsilon_total": total_text, "radpriv.tune.accounting": search.mode,
            "radpriv.tune.study": study.study_name, "radpriv.tune.parent_run": parent_id}
    for key, value in tags.items():
        client.set_model_version_tag(name, version["version"], key, value)
    described = client.get_model_version(name, version["version"]).description or ""
    client.update_model_version(name, version["version"], description=(
        f"{described} Hyperparameters searched by radpriv tune ({search.mode}): the search's total "
        f"ε_total={total_text} at δ={search.delta:.3g}."))
    set_alias(name, version["version"], "champion", uri)
    return {**version, "alias": "champion"}


def _trial_counts(trials) -> dict:
    import optuna

    State = optuna.trial.TrialState
    refused = [t for t in trials if "refused" in t.user_attrs]
    counted = [t for t in trials if "skipped" not in t.user_attrs and "refused" not in t.user_attrs]
    return {"tune/trials": len(counted), "tune/trials_complete": sum(t.state == State.COMPLETE for t in counted),
            "tune/trials_pruned": sum(t.state == State.PRUNED for t in counted),
            "tune/trials_failed": sum(t.state == State.FAIL for t in counted),
            "tune/trials_refused": len(refused)}


def finish(search, study, client, parent_id: str, experiment: str, k: int | None, elapsed_s: float,
           refusals: list[str] = ()) -> dict:
    import optuna

    from radpriv.tune.plots import save_study_plots

    State = optuna.trial.TrialState
    with warnings.catch_warnings():  # trials of dead workers (no heartbeat for 3 min) end FAILED
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    counted = [t for t in trials if "skipped" not in t.user_attrs and "refused" not in t.user_attrs]
    complete = [t for t in counted if t.state == State.COMPLETE]
    counts = _trial_counts(trials)
    out = {"run_id": parent_id, "study": study.study_name, "accounting": search.mode, "best_params": None,
           "best_value": None, "best_run_id": None, "final_run_id": None, "status": "done"}
    if refusals:
        client.set_tag(parent_id, "radpriv.tune.refused", refusals[0][:4000])
        out["status"] = "budget exhausted: the privacy filter refused a trial"
    running = [t for t in counted if t.state in (State.RUNNING, State.WAITING)]
    if k is not None and running:
        # the best of K is released only once all K trials are done (other workers are running some)
        log.info("tune: %d of the random search's trials still run in other workers: not selecting yet; "
                 "run the same command again once they are done", len(running))
        out["privacy"] = _json_safe(log_privacy(search, study, client, parent_id))
        return {**out, "status": "waiting for other workers", "metrics": counts}

    best = max(complete, key=lambda t: t.value) if complete else None
    metrics = dict(counts)
    if best is not None:
        out.update(best_params=dict(best.params), best_value=float(best.value),
                   best_run_id=best.user_attrs.get("run_id"))
        for key, value in best.params.items():
            client.log_param(parent_id, f"best.{key}", value)
        client.set_tag(parent_id, "radpriv.tune.best_trial", str(best.number))
        if out["best_run_id"]:
            client.set_tag(parent_id, "radpriv.tune.best_run", out["best_run_id"])
        metrics["tune/best_value"] = float(best.value)
        log.info("tune: best trial %d: %s=%.4f %s", best.number, OBJECTIVE, best.value, best.params)
    elif search.mode != "random_search":
        log_privacy(search, study, client, parent_id)
        raise ConfigError(f"tune: study {study.study_name} has no completed trial (all pruned, failed or refused)")
    else:  # K = 0, or no trial finished: the search selects nothing; the recipe's defaults stand
        log.info("tune: the random search selected nothing (K=%s); the final run uses the recipe's defaults", k)

    if search.cfg.tune.retrain_best:
        why_not = _retrain_cost_check(search, study, best)
        final = None
        if why_not is None:
            try:
                final = _retrain(search, study, client, parent_id, experiment, out["best_params"] or {})
            except privacy_filter.BudgetExhausted as e:
                why_not = str(e).removeprefix("tune: ")
        if final is None:
            log.warning("tune: no retrain: %s", why_not)
            client.set_tag(parent_id, "radpriv.tune.retrain_refused", why_not[:4000])
            out["status"] = f"retrain refused: {why_not}"
        else:
            out["final_run_id"] = final["run_id"]
            client.set_tag(parent_id, "radpriv.tune.final_run", final["run_id"])
            final_run = client.get_run(final["run_id"])
            for key, value in final_run.data.metrics.items():
                if key.startswith(("test/", "val/")) and key.count("/") == 1 or key == "privacy/epsilon":
                    metrics[f"final/{key}"] = float(value)

    privacy = log_privacy(search, study, client, parent_id)
    out["privacy"] = _json_safe(privacy)
    if out["final_run_id"] and search.cfg.tune.register:
        out["registered"] = _register(search, study, parent_id, out["final_run_id"], privacy)
    metrics["time/total_s"] = elapsed_s
    for key, value in metrics.items():
        client.log_metric(parent_id, key, float(value))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frame = study.trials_dataframe(attrs=("number", "value", "params", "state", "duration"))
        frame.to_csv(tmp / "trials.csv", index=False)
        client.log_artifact(parent_id, str(tmp / "trials.csv"))
        for png in save_study_plots(study, tmp / "plots"):
            client.log_artifact(parent_id, str(png), "plots")
        default_model = str(search.cfg.model.name)
        rows = log_comparison(client, parent_id, search.models or [default_model], counted, default_model, tmp)
    out["model_comparison"] = [_json_safe(asdict(r)) for r in rows]
    if search.models:
        for row in rows:
            log.info("tune: %s: %d trials, best validation weighted F1 %s", row.model, row.trials,
                     "-" if math.isnan(row.val_f1_weighted) else f"{row.val_f1_weighted:.4f}")
    total = privacy.get("epsilon_total")
    log.info("tune: %d trials (%d complete, %d pruned, %d refused); ε_total=%s (%s)", counts["tune/trials"],
             counts["tune/trials_complete"], counts["tune/trials_pruned"], counts["tune/trials_refused"],
             "none" if total is None else f"{total:.4g}", search.mode)
    if total is not None and math.isfinite(total):
        metrics["privacy/epsilon_total"] = total
    return {**out, "metrics": metrics}
