"""Obtaining one finished run that several sweep workers may need — a cell, or the public model
the warm cells start from: reuse it if it is finished; else claim it (claims.py), train it and
mark it done; else step aside for the live worker that holds it, and look again on the next pass.

A target may need another first (a warm cell, its public model): that one is obtained the same
way, under its own claim, before the target is claimed, so a worker waiting for the public model
holds no cell meanwhile and trains the cells it can.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from radpriv.sweep import claims

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    name: str  # how log lines name it
    key: str  # its claim's key: the run key it is trained under (a keyed digest)
    find: Callable[[], str | None]  # the run id of a finished run of it, else None
    train: Callable[[], str]  # train it here; the run id
    needs: Target | None = None  # obtained first: what it trains from


@dataclass(frozen=True)
class Held:
    """Another live worker's claim on `target` (the one asked for, or what it needs)."""

    target: Target
    claim: claims.Claim


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def obtain(target: Target, store: claims.ClaimStore | None, t0: float) -> tuple[str, bool] | Held:
    """(run id, reused) of `target`: its finished run, else one trained here (claimed first when
    workers share the sweep); or the claim of the live worker that holds it or what it needs."""
    for _ in range(2):
        found = target.find()
        if found is not None:
            return found, True
        if target.needs is not None:
            got = obtain(target.needs, store, t0)
            if isinstance(got, Held):
                return got
        if store is None:
            log.info("sweep: %s: training (elapsed %s)", target.name, hms(time.perf_counter() - t0))
            return target.train(), False
        outcome = store.claim(target.key)
        if outcome.won:
            break
        if outcome.other.state != claims.DONE:
            return Held(target, outcome.other)
        # marked done after the run's last write: our search above may have come just before it;
        # if the run is still not found (deleted from MLflow), the target is free again
        if target.find() is None and store.reopen(target.key):
            log.warning("sweep: %s: %s marked it done but no finished run of it is found: training it again",
                        target.name, outcome.other.worker)
    else:  # done, not found, and reopened by another worker meanwhile: the next pass looks again
        return Held(target, store.get(target.key) or outcome.other)
    took_over = outcome.other
    log.info("sweep: %s: training (elapsed %s)%s", target.name, hms(time.perf_counter() - t0),
             "" if took_over is None else f"; taken over from {took_over.worker}, whose heartbeat stopped "
             f"{took_over.age_s():.0f} s ago (resuming from its checkpoint, if it wrote one)")
    try:
        run_id = target.train()
    except BaseException:
        _quietly(store.release, target.key)  # the next worker may try; this one reports its error
        raise
    # the finished run is what counts: a claim left behind expires, and no one retrains a found run
    _quietly(store.done, target.key)
    return run_id, False


def _quietly(step, key: str) -> None:
    """A claim update that must not mask the error being raised or fail a trained run."""
    try:
        step(key)
    except Exception as e:  # noqa: BLE001 - an unreachable database: the claim expires after ttl_s
        log.warning("sweep: could not update the claim on %s: %s", key, (str(e).splitlines() or [repr(e)])[0])
