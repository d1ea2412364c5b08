"""`radpriv evaluate run_id=<id> data=<name> data.path=<file>`: score a logged model.

`run_id=` takes a run id or any other model reference radpriv/tracking/model_ref.py resolves
(`runs:/<id>/model`, `models:/<name>@<alias>`, `models:/<name>/<version>`, a bundle folder).

Every usable row of the given file is evaluated (the file's own train/val/test split is
ignored), with the per-label thresholds stored in the model. Read-only: nothing is written to
the tracking store.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig

from radpriv.data.sources import load_table
from radpriv.errors import ConfigError, ModelError
from radpriv.model.bundle import load_bundle, predict_proba
from radpriv.model.metrics import classification_metrics

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict:
    from radpriv.tracking.model_ref import local_bundle

    if not cfg.run_id:
        raise ConfigError("evaluate needs run_id=<MLflow run id>")
    table = load_table(cfg.data, int(cfg.seed))
    run_id = str(cfg.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_bundle(local_bundle(run_id, cfg.tracking.uri, Path(tmp), f"run_id={run_id}").folder)
    if list(model.label_names) != list(table.label_names):
        raise ModelError(f"the model's labels {model.label_names} differ from {table.name}'s "
                         f"{list(table.label_names)}: evaluate it on data with the same label schema")
    probs = predict_proba(model, table.texts, batch_size=int(cfg.trainer.eval_batch_size))
    metrics = classification_metrics(probs, torch.as_tensor(table.labels), model.thresholds,
                                     model.label_names)
    return {"run_id": str(cfg.run_id), "dataset": table.name, "n_reports": len(table),
            "metrics": {f"eval/{k}": v for k, v in metrics.items()}}
