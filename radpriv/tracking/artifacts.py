"""Everything a finished training run writes to MLflow, in one place.

Artifacts: adapter/ (LoRA), label_schema.json, privacy.json, config.yaml, splits.json (report
ids only), plots/per_label_f1.png, and the pyfunc `model`. Metrics: privacy/* and the
independent accountant check. None of it contains report text.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
from omegaconf import OmegaConf

from radpriv.model.bundle import save_bundle
from radpriv.privacy import independent_check
from radpriv.tracking import mlflow_run
from radpriv.tracking.plots import per_label_f1_bar
from radpriv.tracking.pyfunc import log_pyfunc


def privacy_report(plan, dp, n_train: int, dataset: str) -> dict:
    if plan is None:
        return {"private": False, "epsilon": None, "delta": None, "dataset": dataset, "n_train": n_train,
                "guarantee": "none: trained without differential privacy"}
    eps = dp.epsilon()
    report = {
        "private": True,
        "epsilon": eps,
        "target_epsilon": plan.target_epsilon,
        "delta": plan.delta,
        "noise_multiplier": plan.noise_multiplier,
        "sample_rate": plan.sample_rate,
        "steps": dp.steps,
        "planned_steps": plan.planned_steps,
        "max_grad_norm": plan.max_grad_norm,
        "expected_batch_size": plan.expected_batch_size,
        "accountant": plan.accountant,
        "sampling": "poisson",
        "dataset": dataset,
        "n_train": n_train,
        "guarantee": (f"({eps:.4g}, {plan.delta:.3g})-DP for each report of the training split "
                      "(add/remove one report), covering the LoRA/head weights and every "
                      "artifact derived from them; validation and test metrics are released as usual"),
    }
    # recompute ε independently (dp-accounting); raises if the reported ε is too low
    report["independent_check"] = independent_check.cross_check(
        eps, plan.accountant, plan.noise_multiplier, plan.sample_rate, dp.steps, plan.delta)
    return report


def log_training_run(cfg, logger, module, dm, table, spec, tokenizer, plan, dp, test_metrics) -> dict:
    client = logger.experiment
    run_id = logger.run_id
    privacy = privacy_report(plan, dp, dm.num_train, table.name)
    warm = getattr(module, "warm_start", None)
    privacy["warm_start"] = warm.as_dict() if warm is not None else None
    if warm is not None:
        client.set_tag(run_id, "radpriv.init_from", warm.source)
    # trained on teacher labels (radpriv label / pate): the teacher's guarantee for *its* training
    # reports beside this run's own (radpriv/teacher/provenance.py); the provenance is an artifact
    from radpriv.teacher.provenance import ARTIFACT as TEACHER_ARTIFACT
    from radpriv.teacher.provenance import add_teacher_guarantee

    teacher_file = add_teacher_guarantee(privacy, cfg.data)
    if teacher_file is not None:
        client.set_tag(run_id, "radpriv.teacher_protected", str(privacy["teacher"]["protected"]).lower())
        if privacy["teacher"]["protected"]:
            logger.log_metrics({"privacy/teacher_epsilon": float(privacy["teacher"]["epsilon"])})
    if privacy["private"]:
        logger.log_metrics({
            "privacy/epsilon": privacy["epsilon"], "privacy/delta": privacy["delta"],
            "privacy/noise_multiplier": privacy["noise_multiplier"],
            "privacy/sample_rate": privacy["sample_rate"], "privacy/steps": float(privacy["steps"]),
            # privacy/epsilon_pld, privacy/epsilon_rdp_independent, privacy/epsilon_cross_check_*
            **{k: float(v) for k, v in privacy["independent_check"].items()
               if k != "privacy/epsilon" and isinstance(v, (int, float))},
        })
    thresholds = module.thresholds.cpu().tolist()
    label_schema = {"dataset": table.name, "labels": list(table.label_names),
                    "thresholds": dict(zip(table.label_names, thresholds)),
                    "thresholds_chosen_on": "validation split"}
    splits = {s: list(dm.splits[s].ids) for s in ("train", "val", "test")}
    f1_by_label = {n: float(test_metrics.get(f"test/f1/{n}", 0.0)) for n in table.label_names}
    eps_txt = f"ε={privacy['epsilon']:.3g}" if privacy["private"] else "non-private"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = save_bundle(
            tmp / "bundle", module.net, tokenizer, spec, finetune_mode=cfg.finetune.mode,
            label_names=table.label_names, thresholds=thresholds, max_length=int(cfg.data.max_length),
            extra={"privacy": {k: privacy[k] for k in ("private", "epsilon", "delta") if k in privacy}
                   | {"accountant": privacy.get("accountant"), "dataset": table.name},
                   # lets a later warm start refuse to begin from this run's own training reports
                   "train_data": {"dataset": table.name,
                                  "train_fingerprint": dm.splits["train"].fingerprint()}},
        )
        (tmp / "label_schema.json").write_text(json.dumps(label_schema, indent=2))
        (tmp / "privacy.json").write_text(json.dumps(privacy, indent=2, default=float))
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (tmp / "splits.json").write_text(json.dumps(splits))
        (tmp / "data_summary.json").write_text(json.dumps(table.summary(), indent=2))
        (tmp / "plots").mkdir()
        per_label_f1_bar(f1_by_label, tmp / "plots" / "per_label_f1.png",
                         f"{table.name} · {cfg.model.name} · {cfg.finetune.mode} · {eps_txt}")
        for name in ("label_schema.json", "privacy.json", "config.yaml", "splits.json", "data_summary.json"):
            client.log_artifact(run_id, str(tmp / name))
        if teacher_file is not None:
            (tmp / TEACHER_ARTIFACT).write_bytes(teacher_file.read_bytes())
            client.log_artifact(run_id, str(tmp / TEACHER_ARTIFACT))
        client.log_artifacts(run_id, str(tmp / "plots"), "plots")
        if (bundle / "adapter").is_dir():
            client.log_artifacts(run_id, str(bundle / "adapter"), "adapter")
        if cfg.tracking.get("log_model", True):
            mlflow.set_tracking_uri(mlflow_run.tracking_uri(cfg.tracking.get("uri")))
            with mlflow.start_run(run_id=run_id):
                log_pyfunc(bundle, table.label_names)
    metrics = {k: float(v) for k, v in test_metrics.items()}
    if privacy["private"]:
        metrics.update({"privacy/epsilon": privacy["epsilon"], "privacy/delta": privacy["delta"]})
    return {"run_id": run_id, "experiment": mlflow_run.experiment_name(cfg), "metrics": metrics}
