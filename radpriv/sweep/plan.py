"""`radpriv sweep sweep.plan_only=true`: where a sweep stands, without training anything.

A sweep that runs for hours, across sessions or on several workers (docs/COMMANDS.md, "In
parallel") raises the same question again and again: which cells are done, which are under way,
and how much is left. The answer comes from the lookups the sweep itself makes — the search for
a finished run by run key, and the epoch-end checkpoint a started cell resumes from — so a cell
called finished here is exactly one the sweep will reuse. Nothing is opened or written: no
MLflow run, no checkpoint.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from radpriv.process_memory import PEAK_RESIDENT_METRIC, machine_memory_bytes
from radpriv.sweep.claims import Claim
from radpriv.sweep.grid import Cell
from radpriv.sweep.run import hms, run_train_seconds
from radpriv.tracking.resume import find_finished, find_resume_point_of

log = logging.getLogger(__name__)

FINISHED, STARTED, TO_TRAIN = "finished", "started", "to train"


@dataclass(frozen=True)
class CellState:
    cell: Cell
    status: str  # FINISHED | STARTED | TO_TRAIN
    run_id: str | None = None
    train_seconds: float | None = None  # finished: the run's own training time
    epochs_done: int = 0  # started: epochs its checkpoint holds (it resumes after them)
    max_epochs: int = 0
    checkpoint_age_s: float | None = None  # started: seconds since its checkpoint was written
    peak_resident_gb: float | None = None  # finished: its training's peak resident memory, if logged
    claim: str | None = None  # unfinished: the worker holding it and its heartbeat's age (claims.py)
    claimed_by: str | None = None  # that worker's id

    def describe(self) -> str:
        if self.status == FINISHED:
            took = "" if self.train_seconds is None else f", trained in {hms(self.train_seconds)}"
            return f"finished (run {self.run_id}{took})"
        held = f"; {self.claim}" if self.claim else ""
        if self.status == STARTED:
            age = "" if self.checkpoint_age_s is None else f", written {hms(self.checkpoint_age_s)} ago"
            # a live worker and a killed one look alike from here: the checkpoint's age tells them apart
            if self.max_epochs and self.epochs_done >= self.max_epochs:
                return (f"started (run {self.run_id}; all {self.max_epochs} epochs in its checkpoint{age}: "
                        f"being tested and logged, or killed after training and finished by the next sweep{held})")
            return (f"started (run {self.run_id}; {self.epochs_done} of {self.max_epochs} epochs in its "
                    f"checkpoint{age}; the next sweep resumes it{held})")
        return f"to train{held}"


def checkpoint_epochs(path: Path) -> int:
    """Completed epochs in an epoch-end checkpoint: Lightning stores the 0-based index of the
    epoch that ended. Memory-mapped, so a full fine-tuning checkpoint is not read whole; these
    are radpriv's own checkpoints, the files `radpriv train` itself resumes from."""
    import torch

    return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["epoch"]) + 1


def cell_state(cell: Cell, keys: list[str], max_epochs: int, client, search_ids: list[str],
               checkpoint_root: Path | None, claim: Claim | None = None, ttl_s: float = 0.0) -> CellState:
    """The cell's state; `keys` are its run keys (the first is the one a sweep would train under);
    `claim`: a sweep worker's claim on it, if any (a claim expires after `ttl_s` without heartbeat)."""
    found = find_finished(client, search_ids, keys) if search_ids else None
    if found is not None:
        m = found.data.metrics
        return CellState(cell, FINISHED, found.info.run_id, run_train_seconds(m),
                         peak_resident_gb=m.get(PEAK_RESIDENT_METRIC))
    held = {} if claim is None else {"claim": claim.describe(ttl_s), "claimed_by": claim.worker}
    point = find_resume_point_of(checkpoint_root, keys, client) if checkpoint_root is not None else None
    if point is not None and point.run_id is not None:
        written = point.checkpoint if point.checkpoint is not None else point.directory
        return CellState(cell, STARTED, point.run_id,
                         epochs_done=checkpoint_epochs(point.checkpoint) if point.checkpoint else 0,
                         max_epochs=max_epochs, checkpoint_age_s=max(0.0, time.time() - written.stat().st_mtime),
                         **held)
    return CellState(cell, TO_TRAIN, max_epochs=max_epochs, **held)


def estimate_left(states: list[CellState]) -> tuple[float, int, list[str]]:
    """(seconds of one worker for the unfinished cells that have an estimate, how many have one,
    the model/kind pairs of those that have none).

    A cell still to train costs the median training time of the finished cells of the same
    model and kind (DP-LoRA at any ε, LoRA, full fine-tuning); a started one, the share of it
    for the epochs it has not done. A model and kind with no finished cell yet has no estimate:
    it is named, not guessed.
    """
    done: dict[tuple, list[float]] = defaultdict(list)
    for s in states:
        if s.status == FINISHED and s.train_seconds is not None:
            done[(s.cell.model, s.cell.kind)].append(s.train_seconds)
    left, estimated, unknown = 0.0, 0, []
    for s in states:
        if s.status == FINISHED:
            continue
        times = done.get((s.cell.model, s.cell.kind))
        if not times:
            unknown.append(f"{s.cell.model} {s.cell.kind}")
            continue
        remaining = 1.0 if s.status == TO_TRAIN else max(0.0, 1 - s.epochs_done / max(s.max_epochs, 1))
        left += statistics.median(times) * remaining
        estimated += 1
    return left, estimated, sorted(set(unknown))


def peak_memory_by_kind(states: list[CellState]) -> dict[str, float]:
    """'model kind' -> the largest peak resident memory a finished cell of it logged (GB). The
    largest, not the median: what decides whether two workers fit is the worst cell."""
    peaks: dict[str, float] = {}
    for s in states:
        if s.status == FINISHED and s.peak_resident_gb is not None:
            kind = f"{s.cell.model} {s.cell.kind}"
            peaks[kind] = max(peaks.get(kind, 0.0), s.peak_resident_gb)
    return dict(sorted(peaks.items(), key=lambda kv: -kv[1]))


def summarize(states: list[CellState]) -> dict:
    """Log one line per cell and a summary; the summary, for the CLI's JSON line."""
    n = len(states)
    for i, s in enumerate(states, 1):
        log.info("sweep plan: [%d/%d] %s: %s", i, n, s.cell.name, s.describe())
    counts = {k: sum(s.status == k for s in states) for k in (FINISHED, STARTED, TO_TRAIN)}
    left, estimated, unknown = estimate_left(states)
    pending = n - counts[FINISHED]
    spent = [s.train_seconds for s in states if s.status == FINISHED and s.train_seconds is not None]
    if not pending:
        tail = "nothing left to train: the next `radpriv sweep` with these settings writes the table"
    elif estimated == pending:
        tail = f"about {hms(left)} of one worker left (each cell: the median finished cell of its model and kind)"
    else:
        known = f"{hms(left)} for the {estimated} with an estimate, " if estimated else ""
        tail = (f"{known}no estimate yet for {pending - estimated} (no finished cell of "
                f"{', '.join(unknown)})")
    log.info("sweep plan: %d of %d cells finished (%s of training), %d started, %d to train; %s",
             counts[FINISHED], n, hms(sum(spent)), counts[STARTED], counts[TO_TRAIN], tail)
    peaks = peak_memory_by_kind(states)
    if peaks:
        machine = machine_memory_bytes()
        log.info("sweep plan: peak resident memory of one cell (finished cells that logged it): %s%s; "
                 "workers running at once need the sum of their cells' peaks",
                 ", ".join(f"{k} {v:.1f} GB" for k, v in peaks.items()),
                 "" if machine is None else f"; this machine has {machine / 2**30:.1f} GB")
    return {"plan_only": True, "cells": n, "finished": counts[FINISHED], "started": counts[STARTED],
            "to_train": counts[TO_TRAIN], "finished_train_time_s": round(sum(spent), 1),
            "estimated_left_s": round(left, 1) if estimated == pending else None,
            "cells_without_estimate": pending - estimated,
            "peak_resident_gb": {k: round(v, 2) for k, v in peaks.items()},
            "states": [{"cell": s.cell.name, "status": s.status, "run_id": s.run_id,
                        "epochs_done": s.epochs_done if s.status == STARTED else None,
                        **({"claimed_by": s.claimed_by} if s.claimed_by else {})} for s in states]}
