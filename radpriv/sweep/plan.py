"""`radpriv sweep sweep.plan_only=true`: where a sweep stands, without training anything.

A sweep that runs for hours, across sessions or on several workers (docs/COMMANDS.md, "In
parallel") raises the same question again and again: which cells are done, which are under way,
and how much is left. The answer comes from the lookups the sweep itself makes — the search for
a finished run by run key, and the epoch-end checkpoint a started cell resumes from — so a cell
called finished here is exactly one the sweep will reuse. With `sweep.init_from=public` the
public models the warm cells start from are looked up the same way (under their own run keys,
in their own experiments), since the sweep trains each of them, under its own claim, first.
Nothing is opened or written: no MLflow run, no checkpoint.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from radpriv.data.table import ReportTable
from radpriv.process_memory import PEAK_RESIDENT_METRIC, machine_memory_bytes
from radpriv.sweep.claims import Claim
from radpriv.sweep.grid import Cell
from radpriv.sweep.run import hms, public_corpora, run_train_seconds
from radpriv.tracking.resume import find_finished, find_resume_point_of

log = logging.getLogger(__name__)

FINISHED, STARTED, TO_TRAIN = "finished", "started", "to train"


class _Described:
    """describe() of the states below, from the fields they share."""

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


@dataclass(frozen=True)
class CellState(_Described):
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

    @property
    def group(self) -> str:
        """What its time and memory are estimated from: the finished cells of its model and kind."""
        return f"{self.cell.model} {self.cell.kind}"


@dataclass(frozen=True)
class PublicState(_Described):
    """A public model that warm cells start from: the fields after `warm_cells` as CellState's."""

    name: str  # its registered name, e.g. radpriv-public-ct_rate18-minilm
    model: str  # the sweep's model it was made for
    seed: int
    warm_cells: tuple[str, ...]  # the cells that start from it
    status: str
    run_id: str | None = None
    train_seconds: float | None = None
    epochs_done: int = 0
    max_epochs: int = 0
    checkpoint_age_s: float | None = None
    peak_resident_gb: float | None = None
    claim: str | None = None
    claimed_by: str | None = None

    @property
    def group(self) -> str:
        # the public models of one model (one per seed) train on the same public corpus: a
        # finished one estimates the others
        return f"{self.model} public model"


def checkpoint_epochs(path: Path) -> int:
    """Completed epochs in an epoch-end checkpoint: Lightning stores the 0-based index of the
    epoch that ended. Memory-mapped, so a full fine-tuning checkpoint is not read whole; these
    are radpriv's own checkpoints, the files `radpriv train` itself resumes from."""
    import torch

    return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["epoch"]) + 1


def run_state(found, keys: list[str], max_epochs: int, client, checkpoint_root: Path | None,
              claim: Claim | None, ttl_s: float) -> dict:
    """The state fields (CellState's after `cell`) of what trains under run keys `keys`: finished
    (`found`: its finished run, else None), started (the checkpoint the next training resumes
    from, as radpriv.train finds it) or to train."""
    if found is not None:
        m = found.data.metrics
        return {"status": FINISHED, "run_id": found.info.run_id, "train_seconds": run_train_seconds(m),
                "peak_resident_gb": m.get(PEAK_RESIDENT_METRIC)}
    held = {} if claim is None else {"claim": claim.describe(ttl_s), "claimed_by": claim.worker}
    point = find_resume_point_of(checkpoint_root, keys, client) if checkpoint_root is not None else None
    if point is not None and point.run_id is not None:
        written = point.checkpoint if point.checkpoint is not None else point.directory
        return {"status": STARTED, "run_id": point.run_id,
                "epochs_done": checkpoint_epochs(point.checkpoint) if point.checkpoint else 0,
                "max_epochs": max_epochs, "checkpoint_age_s": max(0.0, time.time() - written.stat().st_mtime),
                **held}
    return {"status": TO_TRAIN, "max_epochs": max_epochs, **held}


def cell_state(cell: Cell, keys: list[str], max_epochs: int, client, search_ids: list[str],
               checkpoint_root: Path | None, claim: Claim | None = None, ttl_s: float = 0.0) -> CellState:
    """The cell's state; `keys` are its run keys (the first is the one a sweep would train under);
    `claim`: a sweep worker's claim on it, if any (a claim expires after `ttl_s` without heartbeat)."""
    found = find_finished(client, search_ids, keys) if search_ids else None
    return CellState(cell, **run_state(found, keys, max_epochs, client, checkpoint_root, claim, ttl_s))


def needed_public_models(warm: list[tuple[Cell, DictConfig, ReportTable]]) -> list[tuple]:
    """[(radpriv.train.PublicModel, its warm cells)]: the distinct public models that the warm
    cells, given with their configs and tables, start from — one per claim key (its run key),
    usually one per model and seed."""
    from radpriv.train import public_model

    corpus_of = public_corpora()  # read once a seed, as the sweep reads it
    needed: dict[str, tuple] = {}
    for cell, cfg, table in warm:
        model = public_model(cfg, corpus_of(cell, cfg, table))
        needed.setdefault(model.keys[0], (model, []))[1].append(cell)
    return list(needed.values())


def public_state(model, cells: list[Cell], client, claim: Claim | None = None, ttl_s: float = 0.0) -> PublicState:
    """The state of a public model (radpriv.train.PublicModel) and the warm `cells` that start
    from it: found where the sweep finds it, resumed from where its training would resume."""
    from radpriv.train import find_public_model

    run_id = find_public_model(model)
    root = model.cfg.tracking.checkpoint_dir
    fields = run_state(None if run_id is None else client.get_run(run_id), model.keys,
                       int(model.cfg.trainer.max_epochs), client, Path(root) if root else None, claim, ttl_s)
    return PublicState(model.name, cells[0].model, int(model.cfg.seed), tuple(c.name for c in cells), **fields)


def estimate_left(states: list[CellState | PublicState]) -> tuple[float, int, list[str]]:
    """(seconds of one worker for the unfinished cells (and public models) that have an estimate,
    how many have one, the groups of those that have none).

    A cell still to train costs the median training time of the finished cells of the same
    model and kind (DP-LoRA at any ε, LoRA, full fine-tuning); a started one, the share of it
    for the epochs it has not done. A public model is estimated likewise from the finished public
    models of its model. A group with nothing finished yet has no estimate: it is named, not
    guessed.
    """
    done: dict[str, list[float]] = defaultdict(list)
    for s in states:
        if s.status == FINISHED and s.train_seconds is not None:
            done[s.group].append(s.train_seconds)
    left, estimated, unknown = 0.0, 0, []
    for s in states:
        if s.status == FINISHED:
            continue
        times = done.get(s.group)
        if not times:
            unknown.append(s.group)
            continue
        remaining = 1.0 if s.status == TO_TRAIN else max(0.0, 1 - s.epochs_done / max(s.max_epochs, 1))
        left += statistics.median(times) * remaining
        estimated += 1
    return left, estimated, sorted(set(unknown))


def peak_memory_by_kind(states: list[CellState | PublicState]) -> dict[str, float]:
    """'model kind' -> the largest peak resident memory a finished cell (or public model) of it
    logged (GB). The largest, not the median: what decides whether two workers fit is the worst
    cell."""
    peaks: dict[str, float] = {}
    for s in states:
        if s.status == FINISHED and s.peak_resident_gb is not None:
            peaks[s.group] = max(peaks.get(s.group, 0.0), s.peak_resident_gb)
    return dict(sorted(peaks.items(), key=lambda kv: -kv[1]))


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _left_tail(left: float, estimated: int, pending: int, no_cells: int, no_publics: int,
               publics_pending: bool, unknown: list[str]) -> str:
    """The summary line's end: what is left and how long it takes."""
    if not pending:
        return "nothing left to train: the next `radpriv sweep` with these settings writes the table"
    if estimated == pending:
        publics = "; each public model: the median finished one of its model" if publics_pending else ""
        return (f"about {hms(left)} of one worker left (each cell: the median finished cell of its model "
                f"and kind{publics})")
    known = f"{hms(left)} for the {estimated} with an estimate, " if estimated else ""
    what = " and ".join(x for x in (no_cells and _count(no_cells, "cell"),
                                    no_publics and _count(no_publics, "public model")) if x)
    return f"{known}no estimate yet for {what} (nothing finished yet of {', '.join(unknown)})"


def summarize(states: list[CellState], publics: list[PublicState] = ()) -> dict:
    """Log one line per public model and per cell and a summary; the summary, for the CLI's JSON
    line. `publics`: the public models the warm cells start from (none: a cold sweep)."""
    for p in publics:  # first, as the sweep trains each before the warm cells that start from it
        before = "" if p.status == FINISHED else f", trained before {'it' if len(p.warm_cells) == 1 else 'them'}"
        log.info("sweep plan: public model %s, seed %d (the start of %s%s): %s", p.name, p.seed,
                 _count(len(p.warm_cells), "warm cell"), before, p.describe())
    n = len(states)
    for i, s in enumerate(states, 1):
        log.info("sweep plan: [%d/%d] %s: %s", i, n, s.cell.name, s.describe())
    counts = {k: sum(s.status == k for s in states) for k in (FINISHED, STARTED, TO_TRAIN)}
    pending_publics = [p for p in publics if p.status != FINISHED]
    left, estimated, unknown = estimate_left([*publics, *states])
    pending = n - counts[FINISHED] + len(pending_publics)
    no_publics = sum(p.group in unknown for p in pending_publics)
    no_cells = pending - estimated - no_publics
    tail = _left_tail(left, estimated, pending, no_cells, no_publics, bool(pending_publics), unknown)
    spent = [s.train_seconds for s in states if s.status == FINISHED and s.train_seconds is not None]
    public_note = "" if not publics else (
        f"; {len(publics) - len(pending_publics)} of {_count(len(publics), 'public model')} finished"
        + (" (each trains before its warm cells)" if pending_publics else ""))
    log.info("sweep plan: %d of %d cells finished (%s of training), %d started, %d to train%s; %s",
             counts[FINISHED], n, hms(sum(spent)), counts[STARTED], counts[TO_TRAIN], public_note, tail)
    peaks = peak_memory_by_kind([*publics, *states])
    if peaks:
        machine = machine_memory_bytes()
        log.info("sweep plan: peak resident memory of one cell (finished cells that logged it): %s%s; "
                 "workers running at once need the sum of their cells' peaks",
                 ", ".join(f"{k} {v:.1f} GB" for k, v in peaks.items()),
                 "" if machine is None else f"; this machine has {machine / 2**30:.1f} GB")
    return {"plan_only": True, "cells": n, "finished": counts[FINISHED], "started": counts[STARTED],
            "to_train": counts[TO_TRAIN], "finished_train_time_s": round(sum(spent), 1),
            "estimated_left_s": round(left, 1) if estimated == pending else None,
            "cells_without_estimate": no_cells,
            "public_models_without_estimate": no_publics,
            "peak_resident_gb": {k: round(v, 2) for k, v in peaks.items()},
            "public_models": [{"public_model": p.name, "seed": p.seed, "status": p.status, "run_id": p.run_id,
                               "epochs_done": p.epochs_done if p.status == STARTED else None,
                               "warm_cells": list(p.warm_cells),
                               **({"claimed_by": p.claimed_by} if p.claimed_by else {})} for p in publics],
            "states": [{"cell": s.cell.name, "status": s.status, "run_id": s.run_id,
                        "epochs_done": s.epochs_done if s.status == STARTED else None,
                        **({"claimed_by": s.claimed_by} if s.claimed_by else {})} for s in states]}
