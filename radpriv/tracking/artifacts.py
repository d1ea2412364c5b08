"""Everything a finished training run writes to MLflow, in one place.

What may be published, and what stays in the local private folder instead, is decided by
radpriv/tracking/release.py (the release boundary); this module only writes it. Artifacts:
adapter/ (LoRA), label_schema.json, privacy.json (radpriv/privacy/statement.py), config.yaml,
plots/per_label_f1.png, the pyfunc `model`, and a student's teacher_provenance.json. Metrics:
privacy/* and the independent accountant check. Kept local: splits.json, data_summary.json.
None of it contains report text.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
from omegaconf import OmegaConf

from radpriv.model.bundle import save_bundle
from radpriv.privacy.statement import privacy_statement
from radpriv.tracking import mlflow_run, release
from radpriv.tracking.dataset_inputs import log_split_inputs
from radpriv.tracking.description import run_note, set_run_note
from radpriv.tracking.plots import per_label_f1_bar
from radpriv.tracking.pyfunc import log_pyfunc


def log_training_run(cfg, logger, module, dm, table, spec, tokenizer, plan, dp, test_metrics) -> dict:
    client = logger.experiment
    run_id = logger.run_id
    privacy = privacy_statement(plan, dp, dm.num_units, table.name, thresholds=str(cfg.trainer.thresholds),
                                threshold_privacy=getattr(module, "threshold_privacy", None))
    folder = release.private_folder(cfg)
    folder.keep(run_id, release.local_records(dm, table))  # ids and counts: local, never logged
    warm = getattr(module, "warm_start", None)
    privacy["warm_start"] = warm.as_dict() if warm is not None else None
    interpolation = getattr(module, "interpolation", None)
    if warm is not None and interpolation is not None:
        privacy["warm_start"]["interpolation"] = interpolation
        logger.log_metrics({"warm/lambda": float(interpolation["lambda"])})
    if warm is not None:
        client.set_tag(run_id, "radpriv.init_from", warm.source)
    # trained on teacher labels (radpriv label / pate): the teacher's guarantee for *its* training
    # reports beside this run's own (radpriv/teacher/provenance.py); the provenance is an artifact
    from radpriv.teacher.provenance import ARTIFACT as TEACHER_ARTIFACT
    from radpriv.teacher.provenance import add_teacher_guarantee
    from radpriv.teacher.provenance import load as load_provenance

    teacher_file = add_teacher_guarantee(privacy, cfg.data)
    teacher_record = None if teacher_file is None else load_provenance(teacher_file)
    if teacher_record is not None:
        client.set_tag(run_id, "radpriv.teacher_protected", str(privacy["teacher"]["protected"]).lower())
        if privacy["teacher"]["protected"]:
            logger.log_metrics({"privacy/teacher_epsilon": float(privacy["teacher"]["epsilon"])})
    if privacy["private"]:
        client.set_tag(run_id, "radpriv.adjacency", privacy["adjacency"])
        client.set_tag(run_id, "radpriv.unit", privacy["unit"])
        logger.log_metrics({
            "privacy/epsilon": privacy["epsilon"], "privacy/delta": privacy["delta"],
            "privacy/noise_multiplier": privacy["noise_multiplier"],
            "privacy/sample_rate": privacy["sample_rate"], "privacy/steps": float(privacy["steps"]),
            # privacy/epsilon_add_remove (+ its dp-accounting check), privacy/epsilon_cross_check_*, …
            **{k: float(v) for k, v in privacy["independent_check"].items()
               if k != "privacy/epsilon" and isinstance(v, (int, float))},
            **({"privacy/epsilon_total": float(privacy["epsilon_total"])} if "epsilon_total" in privacy else {}),
        })
    thresholds = module.thresholds.cpu().tolist()
    label_schema = {"dataset": table.name, "labels": list(table.label_names),
                    "thresholds": dict(zip(table.label_names, thresholds)),
                    "thresholds_chosen_on": privacy["record_sets"]["validation"]["use"]}
    f1_by_label = {n: float(test_metrics.get(f"test/f1/{n}", 0.0)) for n in table.label_names}
    eps_txt = f"ε={privacy['epsilon']:.3g}" if privacy["private"] else "non-private"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = save_bundle(
            tmp / "bundle", module.net, tokenizer, spec, finetune_mode=cfg.finetune.mode,
            label_names=table.label_names, thresholds=thresholds, max_length=int(cfg.data.max_length),
            # privacy facts + the keyed digest that lets a later warm start refuse this run's reports
            extra={**release.bundle_facts(privacy, table.name, release.train_digest(folder, dm.splits["train"])),
                   # what the test metrics were computed in: a reload in it reproduces them
                   "trained_precision": str(cfg.trainer.precision)},
        )
        (tmp / "label_schema.json").write_text(json.dumps(label_schema, indent=2))
        (tmp / "privacy.json").write_text(json.dumps(privacy, indent=2, default=float))
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (tmp / "plots").mkdir()
        per_label_f1_bar(f1_by_label, tmp / "plots" / "per_label_f1.png",
                         f"{table.name} · {cfg.model.name} · {cfg.finetune.mode} · {eps_txt}")
        for name in ("label_schema.json", "privacy.json", "config.yaml"):
            client.log_artifact(run_id, str(tmp / name))
        if teacher_record is not None:
            (tmp / TEACHER_ARTIFACT).write_text(json.dumps(release.published_provenance(teacher_record),
                                                           indent=2, default=float))
            client.log_artifact(run_id, str(tmp / TEACHER_ARTIFACT))
        client.log_artifacts(run_id, str(tmp / "plots"), "plots")
        if (bundle / "adapter").is_dir():
            client.log_artifacts(run_id, str(bundle / "adapter"), "adapter")
        if cfg.tracking.log_model:
            mlflow.set_tracking_uri(mlflow_run.tracking_uri(cfg.tracking.uri))
            with mlflow.start_run(run_id=run_id):
                log_pyfunc(bundle, table.label_names)
    # the UI's Datasets column (metadata only) and Description (the guarantee first)
    log_split_inputs(client, run_id, table, dm.splits, folder, privacy.get("n_train"))
    set_run_note(client, run_id, run_note(privacy, cfg, test_metrics, cfg.tracking.get("register")))
    metrics = {k: float(v) for k, v in test_metrics.items()}
    if privacy["private"]:
        metrics.update({"privacy/epsilon": privacy["epsilon"], "privacy/delta": privacy["delta"],
                        "privacy/epsilon_add_remove": privacy["epsilon_add_remove"]})
    return {"run_id": run_id, "experiment": mlflow_run.experiment_name(cfg), "metrics": metrics}
