"""One training run of a search (a trial or the retrained best), nested under the study's parent.

A run is an ordinary `radpriv.train.train` run; what the search adds is its place in MLflow
(parent run, experiment, tags, name) and :class:`PlanRecorder`, which hands the run's privacy
plan to the study's ledger at fit start — after σ is calibrated, before the first private batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
from omegaconf import DictConfig, open_dict

from radpriv.config import compose
from radpriv.privacy.callback import DPCallback, PrivacyPlan
from radpriv.tune.privacy_cost import Mechanism


def strip_tune_overrides(overrides: Sequence[str]) -> list[str]:
    """The user's overrides minus the `tune` ones: what every training run starts from."""
    def key(ov: str) -> str:
        return ov.lstrip("+~").partition("=")[0]

    return [ov for ov in overrides if key(ov) != "tune" and not key(ov).startswith("tune.")]


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
        cfg.tracking.tags = {**(cfg.tracking.get("tags") or {}), **{k: str(v) for k, v in tags.items()}}
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
