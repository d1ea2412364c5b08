"""Where a training run is written: tracking URI, experiment, run, params and artifacts."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from radpriv.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri(configured: str | None = None) -> str:
    """The tracking URI: config, then MLFLOW_TRACKING_URI, then a local sqlite database.

    MLflow 3 refuses a `./mlruns` file store, so a bare path or `file:` URI is an error here
    rather than a confusing failure later.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("file:") or "://" not in uri and not uri.startswith(("databricks",)):
        raise ConfigError(
            f"tracking URI {uri!r} is a file store, which MLflow 3 refuses: use a database "
            "such as sqlite:///mlflow.db or an http(s):// tracking server"
        )
    return uri


def experiment_name(cfg: Mapping) -> str:
    return cfg["tracking"]["experiment"] or f"radpriv-{cfg['data']['name']}"


def flatten(cfg: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested config → {"a.b.c": "value"} for MLflow params (values cut to MLflow's limit)."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


def client(cfg: Mapping):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri(cfg["tracking"]["uri"]))


def make_logger(cfg: Mapping, run_name: str | None = None, run_id: str | None = None):
    """Lightning's MLFlowLogger bound to the right store.

    It joins, in this order: the run `mlflow run` made (MLFLOW_RUN_ID), the unfinished run
    being resumed (`run_id`), or a new run (nested under tracking.parent_run_id when set).
    """
    from lightning.pytorch.loggers import MLFlowLogger

    from radpriv.tracking.parent_run import mlflow_run_id

    return MLFlowLogger(
        experiment_name=experiment_name(cfg),
        tracking_uri=tracking_uri(cfg["tracking"]["uri"]),
        run_id=mlflow_run_id() or run_id or None,
        run_name=run_name,
        log_model=False,
        tags=run_tags(cfg),
    )


def run_tags(cfg: Mapping) -> dict[str, str]:
    tags = {"radpriv.dataset": cfg["data"]["name"], "radpriv.model": cfg["model"]["name"]}
    tags.update({str(k): str(v) for k, v in (cfg["tracking"]["tags"] or {}).items()})
    parent = cfg["tracking"]["parent_run_id"]
    if parent:
        tags["mlflow.parentRunId"] = str(parent)  # how the MLflow UI nests child runs
    return tags


def join_resumed_run(logger, cfg: Mapping, params: dict[str, str]) -> dict[str, str]:
    """Of `params`, those the resumed run has not logged yet; the run's tags follow `cfg`.

    MLflow refuses to change a logged param. A resumed run has the same run key, so the same
    config but for what the key leaves out (tracking.*: the store, the parent sweep, tags): a
    cell that one sweep started and a later one finishes differs in tracking.parent_run_id.
    Those params keep the first start's values; the tags, which MLflow lets change, follow the
    command that finishes the run, so the cell nests under the sweep that completed it.
    """
    client, run_id = logger.experiment, logger.run_id
    logged = client.get_run(run_id).data.params
    changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
    if changed:
        log.info("resumed run %s keeps its first start's %s", run_id, ", ".join(changed))
    for key, value in run_tags(cfg).items():
        client.set_tag(run_id, key, value)
    return {k: v for k, v in params.items() if k not in logged}


def mark_failed(logger) -> None:
    """Mark the run FAILED if one was started; never raises (we are already failing)."""
    try:
        if logger is not None and getattr(logger, "_run_id", None):
            logger.experiment.set_terminated(logger.run_id, "FAILED")
    except Exception:  # noqa: BLE001 - best effort while reporting another error
        pass
