"""The end of an invocation: select the best trial, retrain it, and write the parent run.

The parent run holds the resolved config (params), the best parameters (`best.<name>`) and value
(`tune/best_value`), the final model's test metrics (`final/...`), `privacy/epsilon_total`, and
the artifacts `tune_privacy.json`, `trials.csv` and Optuna's plots (`plots/*.png`).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import warnings
from pathlib import Path

from radpriv.errors import ConfigError, PrivacyError
from radpriv.tune import ledger, privacy_cost
from radpriv.tune.runs import PlanRecorder, mechanism_of, run_config
from radpriv.tune.space import overrides_for
from radpriv.tune.trials import OBJECTIVE, check_random_search_run

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
    privacy = ledger.search_privacy(ledger.read(study), search.mode, search.delta, search.random_search)
    privacy["epsilon_per_run"] = search.epsilon if search.mode != "random_search" else None
    total = privacy.get("epsilon_total")
    if total is not None and math.isfinite(total):
        client.log_metric(parent_id, "privacy/epsilon_total", float(total))
        client.log_metric(parent_id, "privacy/delta", float(search.delta))
        for key in ("epsilon_total_pld", "epsilon_total_rdp"):
            if privacy.get(key) is not None:
                client.log_metric(parent_id, f"privacy/{key}", float(privacy[key]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tune_privacy.json"
        path.write_text(json.dumps(_json_safe(privacy), indent=2))
        client.log_artifact(parent_id, str(path))
    return privacy


def _retrain(search, study, client, parent_id: str, experiment: str, params: dict) -> dict:
    """Train and test the final model with `params` on the private data (a child run)."""
    from radpriv.train import train

    rs = search.random_search
    overrides = [*search.base, *overrides_for(params)]
    if rs is not None:
        # one more run of the calibrated mechanism: refuse it if the budget cannot take it
        book = ledger.read(study)
        book.finals.append(privacy_cost.Mechanism(rs["noise_multiplier"], rs["sample_rate"], rs["steps"]))
        after = ledger.search_privacy(book, search.mode, search.delta, rs)["epsilon_total"]
        if after > float(rs["target_epsilon"]) * (1 + 1e-9):
            raise PrivacyError(
                f"tune: another retrain would bring study {study.study_name} to ε_total={after:.4g} > "
                f"privacy.epsilon={rs['target_epsilon']:g} (it was retrained before: see its parent runs); "
                "use tune.retrain_best=false")
        overrides += [f"privacy.epsilon={rs['per_run_epsilon']!r}", f"privacy.delta={search.delta!r}"]
    cfg = run_config(overrides, parent_run_id=parent_id, experiment=experiment, run_name="final (best parameters)",
                     tags={"radpriv.tune.study": study.study_name, "radpriv.tune.role": "final"}, trial=False)

    def record(plan) -> None:
        mech = mechanism_of(plan)
        if rs is not None:
            check_random_search_run(mech, rs, "the retrain")
        study.set_user_attr(ledger.FINAL_PREFIX + parent_id, ledger.record(mech, plan.target_epsilon if plan else None))

    log.info("tune: retraining with the best parameters on the private data")
    return train(cfg, extra_callbacks=[PlanRecorder(record)])


def _register(search, study, parent_id: str, run_id: str, privacy: dict) -> dict:
    """`tune.register=<name>`: the retrained model becomes a new version of <name>, aliased
    `champion`. The version's own privacy tags (radpriv/tracking/registry.py) are the final
    run's; the search's total is added beside them, so the registry never shows only the
    final run's ε for a model whose parameters were searched on the private data."""
    from radpriv.tracking.registry import register_model, registry_client, set_alias

    name = str(search.cfg.tune.register)
    uri = search.cfg.tracking.get("uri")
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


def finish(search, study, client, parent_id: str, experiment: str, k: int | None, elapsed_s: float) -> dict:
    import optuna

    from radpriv.tune.plots import save_study_plots

    State = optuna.trial.TrialState
    with warnings.catch_warnings():  # trials of dead workers (no heartbeat for 3 min) end FAILED
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    counted = [t for t in trials if "skipped" not in t.user_attrs]
    complete = [t for t in counted if t.state == State.COMPLETE]
    counts = {"tune/trials": len(counted), "tune/trials_complete": len(complete),
              "tune/trials_pruned": sum(t.state == State.PRUNED for t in counted),
              "tune/trials_failed": sum(t.state == State.FAIL for t in counted)}
    out = {"run_id": parent_id, "study": study.study_name, "accounting": search.mode, "best_params": None,
           "best_value": None, "best_run_id": None, "final_run_id": None}
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
        out.update(best_params=dict(best.params), best_value=float(best.value), best_run_id=best.user_attrs.get("run_id"))
        for key, value in best.params.items():
            client.log_param(parent_id, f"best.{key}", value)
        client.set_tag(parent_id, "radpriv.tune.best_trial", str(best.number))
        if out["best_run_id"]:
            client.set_tag(parent_id, "radpriv.tune.best_run", out["best_run_id"])
        metrics["tune/best_value"] = float(best.value)
        log.info("tune: best trial %d: %s=%.4f %s", best.number, OBJECTIVE, best.value, best.params)
    elif search.mode != "random_search":
        log_privacy(search, study, client, parent_id)
        raise ConfigError(f"tune: study {study.study_name} has no completed trial (all pruned or failed)")
    else:  # K = 0, or no trial finished: the search selects nothing; the recipe's defaults stand
        log.info("tune: the random search selected nothing (K=%s); the final run uses the recipe's defaults", k)

    if search.cfg.tune.retrain_best:
        final = _retrain(search, study, client, parent_id, experiment, out["best_params"] or {})
        out["final_run_id"] = final["run_id"]
        client.set_tag(parent_id, "radpriv.tune.final_run", final["run_id"])
        final_run = client.get_run(final["run_id"])
        for key, value in final_run.data.metrics.items():
            if key.startswith(("test/", "val/")) and key.count("/") == 1 or key == "privacy/epsilon":
                metrics[f"final/{key}"] = float(value)

    privacy = log_privacy(search, study, client, parent_id)
    out["privacy"] = _json_safe(privacy)
    if out["final_run_id"] and search.cfg.tune.get("register"):
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
    total = privacy.get("epsilon_total")
    log.info("tune: %d trials (%d complete, %d pruned); ε_total=%s (%s)", counts["tune/trials"],
             counts["tune/trials_complete"], counts["tune/trials_pruned"],
             "none" if total is None else f"{total:.4g}", search.mode)
    if total is not None and math.isfinite(total):
        metrics["privacy/epsilon_total"] = total
    return {**out, "metrics": metrics}
