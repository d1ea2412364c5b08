"""Run names that say what a run is: `minilm-openi-dp-eps0.1-seed42`, `minilm-openi-nonprivate-seed42`.

A user's `run_name` wins. `mlflow run` opens the run before radpriv starts and MLflow names it
at random (`zealous-hound-44`); such a name is replaced, a name the user gave
(`mlflow run --run-name`) is kept. Names hold only config, never anything read from the data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# MLflow's generated names: adjective-noun-number (mlflow.utils.name_utils)
_GENERATED = re.compile(r"^[a-z]+-[a-z]+-\d{1,4}$")


def run_name(cfg: Mapping) -> str:
    """`<model>-<dataset>[-full]-<dp-eps<ε>|nonprivate>[-patient]-seed<seed>` from the config."""
    eps = cfg["privacy"].get("epsilon")
    parts = [str(cfg["model"].get("name") or "custom"), str(cfg["data"]["name"])]
    if cfg["finetune"].get("mode") == "full":
        parts.append("full")
    parts.append("nonprivate" if eps is None else f"dp-eps{float(eps):g}")
    if eps is not None and cfg["privacy"].get("unit") == "patient":
        parts.append("patient")
    parts.append(f"seed{cfg.get('seed')}")
    return "-".join(parts)


def is_generated(name: str | None) -> bool:
    """Whether `name` is missing or looks like one MLflow made up."""
    return not name or bool(_GENERATED.match(name))


def name_run(client, run_id: str, cfg: Mapping) -> str:
    """Give the run its name: `cfg.run_name` if set, else the descriptive name unless the run
    already has a name a person chose. Returns the name the run has afterwards."""
    current = client.get_run(run_id).info.run_name
    wanted = cfg.get("run_name")
    if wanted or is_generated(current):
        name = str(wanted or run_name(cfg))
        if name != current:
            client.set_tag(run_id, "mlflow.runName", name)
        return name
    return current
