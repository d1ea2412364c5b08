"""Durable step counting: every noisy step a run took, in every invocation, is on disk.

A checkpoint is written at each epoch end. A run killed in epoch e resumes from the end of
epoch e − 1, and the steps it had taken in epoch e are not in that checkpoint's accountant.
Those steps were real releases of the mechanism: their noisy updates existed, and whatever
was published meanwhile (e.g. validation metrics logged before the epoch-end checkpoint) is a
function of them. With fresh noise at every invocation the resumed epoch is a *new* set of
noisy steps, not a replay, so the run's total is every step of every invocation.

The journal is an append-only file beside the run's checkpoint (the run's private folder,
never logged). The DP optimizer's step hook appends one line per noisy step and fsyncs it
before the update reaches the weights, so no step that influenced anything can be missing
from it. On resume the accountant's history is replaced by the journal's, which holds the
checkpoint's steps and those of the killed partial epoch. A torn last line (a kill during
the write) still counts as a step: counting one step too many never under-reports ε.
"""

from __future__ import annotations

import os
from pathlib import Path


class StepJournal:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = None

    def append(self, noise_multiplier: float, sample_rate: float) -> None:
        """Record one noisy step (σ, q), durably, before its update is applied."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="ascii")
        self._file.write(f"{float(noise_multiplier)!r} {float(sample_rate)!r}\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def history(self, fallback: tuple[float, float]) -> list[tuple[float, float, int]]:
        """The steps recorded so far as an accountant history [(σ, q, n), ...].

        `fallback` = the plan's (σ, q), for a line torn by a kill mid-write.
        """
        if not self.path.is_file():
            return []
        counts: dict[tuple[float, float], int] = {}
        for line in self.path.read_text(encoding="ascii", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                sigma, q = (float(x) for x in line.split())
            except ValueError:
                sigma, q = fallback
            counts[(sigma, q)] = counts.get((sigma, q), 0) + 1
        return [(sigma, q, n) for (sigma, q), n in counts.items()]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
