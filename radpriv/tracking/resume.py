"""Crash and resume: the same command, started again, continues the run it had begun.

A run's checkpoints live in `<checkpoint_dir>/<run key>/`, where the key is a keyed hash
(HMAC under the private folder's secret, radpriv/tracking/release.py) of the resolved config
and the data's content: the same command on the same data, on a machine with the same private
folder, finds them again. Beside `last.ckpt` (written at every epoch end: trainable weights,
optimizer, loops, and the DP callback's accountant history) sit `run.json`, naming the MLflow
run it belongs to, and the run's step journal (`steps.log`, kept across its invocations and
started afresh with each new run).

Only epoch-end checkpoints are kept. A run killed mid-epoch resumes from the last completed
epoch. Under DP the resumed epoch draws new batches and new noise (fresh entropy at every
invocation), and the noisy steps the killed invocation took after its last checkpoint stay in
the accountant's total through the step journal (radpriv/privacy/step_journal.py): a resumed
run reports every noisy step that ran, so its ε is slightly above an uninterrupted run's.
Non-private runs redraw the epoch from (seed, epoch) and end where an uninterrupted run does.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
COMPLETE_TAG = "radpriv.complete"  # set as the very last write of a training run
RUN_KEY_TAG = "radpriv.run_key"  # run_key() of the run's config and data (keyed: safe to publish)
CHECKPOINT = "last.ckpt"
JOURNAL = "steps.log"
# settings that change where a run is written or what it is called, not what it computes
_NOT_IN_KEY = ("tracking", "run_name", "run_id")
# settings that change how a run is shown or how many cores it uses, not what it computes:
# a sweep's workers run with trainer.num_threads=1 and no progress bar, and the final command
# that builds the table must find their cells whatever it sets. (The thread count can change
# floating-point summation order, as a different CPU can; it draws no different random numbers.
# Settings that do change the draws, such as the physical batch dropout masks are drawn for,
# stay in the key.)
_EXECUTION_ONLY = (("trainer", "progress_bar"), ("trainer", "num_threads"), ("trainer", "log_every_n_steps"),
                   ("trainer", "num_workers"), ("trainer", "pin_memory"))
# fp32 is what every run computed before trainer.precision existed: it keeps their keys
_FP32 = "32-true"


_WARM_ONLY = ("public", "warm")


def run_key(cfg: DictConfig, data_fingerprint: str, folder) -> str:
    """What a run computes: its config, less where it is written and how it is run, and its data,
    keyed with `folder`'s secret (a `release.PrivateFolder`): an unkeyed hash of the data would let
    anyone who reads the tag test a guess of the training set."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for key in _NOT_IN_KEY:
        resolved.pop(key, None)
    for section, key in _EXECUTION_ONLY:
        resolved.get(section, {}).pop(key, None)
    if (resolved.get("trainer") or {}).get("precision") == _FP32:
        resolved["trainer"].pop("precision")
    finetune = resolved.get("finetune") or {}
    if finetune.get("prefix_cache_dtype") == "float32":  # as every earlier run cached
        finetune.pop("prefix_cache_dtype")
    if not finetune.get("init_from"):  # warm-start settings change nothing of a cold run
        for key in _WARM_ONLY:
            finetune.pop(key, None)
    return folder.digest("run-key", json.dumps(resolved, sort_keys=True, default=str), data_fingerprint)[:20]


def run_keys(cfg: DictConfig, data_fingerprint: str, folder) -> list[str]:
    """Every key a run of this config may carry (one: see run_key)."""
    return [run_key(cfg, data_fingerprint, folder)]


@dataclass(frozen=True)
class ResumePoint:
    directory: Path
    run_id: str | None = None  # the unfinished MLflow run to continue in
    checkpoint: Path | None = None  # the epoch-end checkpoint to continue from

    @property
    def journal(self) -> Path:
        """Where the run records its noisy steps (radpriv/privacy/step_journal.py): one file per
        checkpoint lineage, whatever MLflow run id each invocation logs into."""
        return self.directory / JOURNAL

    def record(self, run_id: str) -> None:
        """Name the MLflow run these checkpoints belong to (written before training starts); a new
        run (nothing unfinished to continue) starts with an empty step journal."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.run_id is None:
            self.journal.unlink(missing_ok=True)
        tmp = self.directory / (RUN_FILE + ".tmp")
        tmp.write_text(json.dumps({"run_id": run_id}))
        os.replace(tmp, self.directory / RUN_FILE)


def find_resume_point_of(root: Path, keys: list[str], client) -> ResumePoint:
    """The first of `keys` (run_keys) with an unfinished start to continue; else a fresh start
    under the first key."""
    for key in keys:
        point = find_resume_point(root, key, client)
        if point.run_id is not None:
            return point
    return ResumePoint(Path(root) / keys[0])


def find_resume_point(root: Path, key: str, client) -> ResumePoint:
    """What an earlier, unfinished start of the same command left, if anything."""
    directory = Path(root) / key
    state = directory / RUN_FILE
    if not state.is_file():
        return ResumePoint(directory)
    run_id = json.loads(state.read_text()).get("run_id")
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - a deleted run or another tracking store
        log.info("not resuming: run %s of %s is not in this tracking store; starting a new run",
                 run_id, directory)
        return ResumePoint(directory)
    # not the run's status: Lightning marks a run FINISHED when `fit` ends, before test/logging
    if run.data.tags.get(COMPLETE_TAG) == "true":
        return ResumePoint(directory)  # the same command ran to the end before: a new run
    checkpoint = directory / CHECKPOINT
    return ResumePoint(directory, run_id, checkpoint if checkpoint.is_file() else None)


def find_finished(client, experiment_ids: list[str], keys: list[str]):
    """The newest finished run with one of these run keys and a logged model, else None."""
    for key in keys:
        runs = client.search_runs(
            experiment_ids, f"tags.`radpriv.run_key` = '{key}' and tags.`radpriv.complete` = 'true'",
            order_by=["attributes.start_time DESC"], max_results=50)
        for run in runs:
            if client.list_artifacts(run.info.run_id, "model"):
                return run
    return None



class TrainingClock(L.Callback):
    """Seconds of training a run had in earlier invocations, carried in its checkpoints.

    A run killed and resumed is timed by the invocation that finished it (`time/total_s`); what
    the killed ones spent would vanish from the cost a sweep reports. The clock's state, saved
    with every epoch-end checkpoint, is the training time up to that checkpoint; a resumed run
    reads it back as `earlier_s`. Work after the last checkpoint of a killed invocation is
    redone, so it is not counted: it bought nothing in the final run.
    """

    def __init__(self) -> None:
        self.earlier_s = 0.0
        self._fit_start: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def state_dict(self) -> dict:
        this = time.perf_counter() - self._fit_start if self._fit_start is not None else 0.0
        return {"train_seconds": self.earlier_s + this}

    def load_state_dict(self, state_dict: dict) -> None:
        self.earlier_s = float(state_dict.get("train_seconds", 0.0))


class EpochEndCheckpoint(L.Callback):
    """Write `last.ckpt` at every epoch end, atomically (a temp file, then a rename): a kill at
    any moment leaves either the previous epoch's checkpoint or this one, never a torn file."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / (CHECKPOINT + ".tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # optimizer + accountant state: needed to resume
        os.replace(tmp, self.directory / CHECKPOINT)
