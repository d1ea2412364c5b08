"""Claims on a sweep's cells: how several `radpriv sweep` workers running the same command split
the grid, with no scheduler but the tracking database they already share.

One row per claimed cell in the table `radpriv_sweep_claims` of the MLflow tracking database
(sqlite on one machine, PostgreSQL across machines; plain SQLAlchemy Core, nothing
dialect-specific). The row's key is the cell's run key — a keyed digest (tracking/release.py),
safe to store; nothing of the data (text, ids, counts) goes in the table. The public model that
warm cells start from is claimed the same way, under its own run key (obtain.py).

- Claiming is atomic: a worker INSERTs the row (a primary-key violation: someone else has it),
  or takes over an expired claim by a compare-and-set UPDATE on the stale row it read (worker
  and heartbeat_at): of two workers racing for it, exactly one changes a row.
- A live claim's heartbeat_at is refreshed every `heartbeat_s` by a daemon thread; a claim
  whose heartbeat is older than `ttl_s` belongs to a dead (or stalled) worker, and the next
  worker takes the cell over. Training resumes from the unfinished MLflow run's epoch-end
  checkpoint (tracking/resume.py), so the cell continues where the dead worker stopped — when
  the workers share `tracking.checkpoint_dir` and the private folder.
- The finished MLflow run, not this table, says a cell is done: `done` only stops other
  workers from claiming a cell between its last MLflow write and their next search.

Times are the workers' wall clocks in epoch milliseconds: workers on several machines need
clocks within a small fraction of `ttl_s` of each other (NTP).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from omegaconf import DictConfig

from radpriv.errors import ConfigError

log = logging.getLogger(__name__)

TABLE = "radpriv_sweep_claims"
CLAIMED, DONE = "claimed", "done"
# the databases an MLflow tracking URI may name (anything else, e.g. an http server: no claims)
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
SQLITE_BUSY_TIMEOUT_S = 60  # workers wait for one another's short writes instead of failing


def _table(metadata):
    from sqlalchemy import BigInteger, Column, String, Table

    return Table(
        TABLE, metadata,
        Column("cell_key", String(64), primary_key=True),  # the cell's run key (a keyed digest)
        Column("worker", String(255), nullable=False),
        Column("claimed_at", BigInteger, nullable=False),  # epoch ms
        # epoch ms; integers, so that the compare-and-set compares exactly what was read
        Column("heartbeat_at", BigInteger, nullable=False),
        Column("state", String(16), nullable=False),  # claimed | done
    )


@dataclass(frozen=True)
class Claim:
    cell_key: str
    worker: str
    claimed_at: int  # epoch ms
    heartbeat_at: int  # epoch ms
    state: str  # CLAIMED | DONE

    def age_s(self, now_s: float | None = None) -> float:
        """Seconds since the holder's last heartbeat."""
        return max(0.0, (time.time() if now_s is None else now_s) - self.heartbeat_at / 1000)

    def expired(self, ttl_s: float, now_s: float | None = None) -> bool:
        return self.state == CLAIMED and self.age_s(now_s) > ttl_s

    def describe(self, ttl_s: float, now_s: float | None = None) -> str:
        age = self.age_s(now_s)
        if self.state == DONE:
            return f"done by {self.worker}"
        note = " — expired: the next worker takes it over" if age > ttl_s else ""
        return f"claimed by {self.worker}, heartbeat {age:.0f} s ago{note}"


@dataclass(frozen=True)
class Outcome:
    """What a claim attempt got: the cell (won), or not, and the row that stands in the way
    (lost) or the expired claim it took over (won)."""

    won: bool
    other: Claim | None = None


def worker_id() -> str:
    """hostname-pid-random: unique across machines and restarts, readable in logs."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def is_sql_uri(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0].lower() in SQL_SCHEMES


def safe_uri(uri: str) -> str:
    """The URI without its password, for log lines."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(uri).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse: show its host part only
        return uri.rsplit("@", 1)[-1]


def check_settings(c: DictConfig) -> None:
    """One-line errors for settings that cannot work, before anything is trained."""
    try:
        heartbeat, ttl, poll = float(c.heartbeat_s), float(c.ttl_s), float(c.poll_s)
    except (TypeError, ValueError):
        raise ConfigError(f"sweep.claims: heartbeat_s, ttl_s and poll_s must be numbers of seconds, got "
                          f"{c.heartbeat_s!r}, {c.ttl_s!r}, {c.poll_s!r}") from None
    if not heartbeat > 0:
        raise ConfigError(f"sweep.claims.heartbeat_s={c.heartbeat_s}: must be > 0 seconds, e.g. 30")
    if not poll > 0:
        raise ConfigError(f"sweep.claims.poll_s={c.poll_s}: must be > 0 seconds, e.g. 5")
    # one slow heartbeat write must not hand a live worker's cell to another
    if not ttl >= 2 * heartbeat:
        raise ConfigError(f"sweep.claims.ttl_s={c.ttl_s} must be at least 2 × sweep.claims.heartbeat_s="
                          f"{c.heartbeat_s}, or a live worker's claim expires between its heartbeats")


def _engine(uri: str):
    from sqlalchemy import create_engine

    # check_same_thread: the heartbeat thread uses the pool's connections too
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False} if uri.startswith("sqlite") else {}
    return create_engine(uri, connect_args=connect_args, pool_pre_ping=True)


class ClaimStore:
    """This worker's view of the claims table (see the module docstring)."""

    def __init__(self, uri: str, ttl_s: float, heartbeat_s: float, worker: str | None = None,
                 create: bool = True) -> None:
        from sqlalchemy import MetaData

        self.uri, self.ttl_s, self.heartbeat_s = uri, float(ttl_s), float(heartbeat_s)
        self.worker = worker or worker_id()
        self.engine = _engine(uri)
        self.table = _table(MetaData())
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if create:
            self._create_table()

    # -- the table ---------------------------------------------------------------------------

    def _create_table(self) -> None:
        from sqlalchemy.exc import DBAPIError
        from sqlalchemy.schema import CreateTable

        for attempt in range(4):
            try:
                with self.engine.begin() as conn:
                    conn.execute(CreateTable(self.table, if_not_exists=True))
                return
            except DBAPIError as e:
                # workers starting together: PostgreSQL's IF NOT EXISTS can still collide in its
                # catalogue; the table is there on the next try
                if attempt == 3:
                    raise ConfigError(f"sweep.claims: cannot create table {TABLE} in {safe_uri(self.uri)}: "
                                      f"{_first_line(e)} (sweep.claims.enabled=false runs without claims)") from None
                time.sleep(0.2 * (attempt + 1))

    def _exists(self) -> bool:
        from sqlalchemy import inspect

        return inspect(self.engine).has_table(TABLE)

    @staticmethod
    def _now_ms() -> int:
        return int(time.time() * 1000)

    def _row(self, conn, key: str) -> Claim | None:
        from sqlalchemy import select

        row = conn.execute(select(self.table).where(self.table.c.cell_key == key)).first()
        return None if row is None else Claim(row.cell_key, row.worker, int(row.claimed_at),
                                              int(row.heartbeat_at), row.state)

    def get(self, key: str) -> Claim | None:
        with self.engine.connect() as conn:
            return self._row(conn, key)

    def claims(self, keys: Iterable[str]) -> dict[str, Claim]:
        """The rows of these cell keys (none if no worker ever made the table: read-only)."""
        from sqlalchemy import select

        keys = list(keys)
        if not keys or not self._exists():
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(self.table).where(self.table.c.cell_key.in_(keys))).all()
        return {r.cell_key: Claim(r.cell_key, r.worker, int(r.claimed_at), int(r.heartbeat_at), r.state)
                for r in rows}

    # -- claiming ----------------------------------------------------------------------------

    def claim(self, key: str) -> Outcome:
        """Claim the cell `key`: a new row, or the takeover of an expired claim."""
        from sqlalchemy import insert, update
        from sqlalchemy.exc import IntegrityError

        for _ in range(3):  # a row released between our INSERT and our read: try again
            now = self._now_ms()
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(self.table).values(cell_key=key, worker=self.worker, claimed_at=now,
                                                           heartbeat_at=now, state=CLAIMED))
                self._hold(key)
                return Outcome(True)
            except IntegrityError:
                pass  # someone has a row for it
            row = self.get(key)
            if row is None:
                continue
            if row.state == CLAIMED and row.worker == self.worker:
                self._hold(key)
                return Outcome(True)
            if row.state == DONE or not row.expired(self.ttl_s, now / 1000):
                return Outcome(False, row)
            t = self.table.c
            stmt = (update(self.table)
                    .where(t.cell_key == key, t.worker == row.worker, t.heartbeat_at == row.heartbeat_at,
                           t.state == CLAIMED)
                    .values(worker=self.worker, claimed_at=now, heartbeat_at=now))
            with self.engine.begin() as conn:
                won = conn.execute(stmt).rowcount == 1
            if won:
                self._hold(key)
                return Outcome(True, row)
            return Outcome(False, self.get(key) or row)  # another worker took it over first
        return Outcome(False, self.get(key))

    def done(self, key: str) -> None:
        """The cell's run is finished: no worker claims it again."""
        self._finish(key, delete=False)

    def release(self, key: str) -> None:
        """Give the cell up (this worker failed on it): the next worker claims it at once."""
        self._finish(key, delete=True)

    def _finish(self, key: str, delete: bool) -> None:
        from sqlalchemy import delete as sql_delete
        from sqlalchemy import update

        t = self.table.c
        with self._lock:
            self._held.discard(key)
        mine = (t.cell_key == key) & (t.worker == self.worker)
        stmt = (sql_delete(self.table).where(mine) if delete
                else update(self.table).where(mine).values(state=DONE, heartbeat_at=self._now_ms()))
        with self.engine.begin() as conn:
            changed = conn.execute(stmt).rowcount
        if not changed:
            log.warning("sweep: worker %s no longer held cell %s (another worker took its claim over)",
                        self.worker, key)

    def reopen(self, key: str) -> bool:
        """Drop a `done` row whose finished run is gone (deleted from MLflow): claimable again.
        Only a done row is deleted, so a claim another worker has made since stays."""
        from sqlalchemy import delete

        t = self.table.c
        with self.engine.begin() as conn:
            return conn.execute(delete(self.table).where(t.cell_key == key, t.state == DONE)).rowcount == 1

    # -- heartbeat ---------------------------------------------------------------------------

    def _hold(self, key: str) -> None:
        with self._lock:
            self._held.add(key)

    def beat(self) -> list[str]:
        """Refresh this worker's live claims; the keys it found taken over (logged)."""
        from sqlalchemy import update

        t = self.table.c
        with self._lock:
            held = sorted(self._held)
        lost = []
        for key in held:
            stmt = (update(self.table).where(t.cell_key == key, t.worker == self.worker, t.state == CLAIMED)
                    .values(heartbeat_at=self._now_ms()))
            with self.engine.begin() as conn:
                if conn.execute(stmt).rowcount != 1:
                    lost.append(key)
        for key in lost:
            with self._lock:
                self._held.discard(key)
            log.warning("sweep: worker %s lost its claim on cell %s: no heartbeat reached the database for "
                        "over %g s, and another worker took the cell over", self.worker, key, self.ttl_s)
        return lost

    def _beat_forever(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.beat()
            except Exception as e:  # noqa: BLE001 - a busy or unreachable database: the next beat may pass
                log.warning("sweep: heartbeat of worker %s failed: %s", self.worker, _first_line(e))

    def start(self) -> ClaimStore:
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat_forever, name="radpriv-sweep-heartbeat", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.engine.dispose()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def open_store(c: DictConfig, uri: str) -> ClaimStore | None:
    """This worker's claim store, heartbeat running; None (one line saying why) when claims are
    off: the sweep then trains every cell it does not find finished, as a single worker does."""
    if not bool(c.enabled):
        log.info("sweep: claims off (sweep.claims.enabled=false): this worker trains every cell it does "
                 "not find finished; do not start another on the same cells")
        return None
    if not is_sql_uri(uri):
        log.info("sweep: claims off: the tracking URI %s is not a SQL database (sqlite, PostgreSQL, ...) where "
                 "workers could share them; this worker trains every cell it does not find finished",
                 safe_uri(uri))
        return None
    store = ClaimStore(uri, float(c.ttl_s), float(c.heartbeat_s))
    log.info("sweep: worker %s; cells are claimed in table %s of %s (heartbeat every %g s, a claim expires "
             "after %g s without one)", store.worker, TABLE, safe_uri(uri), store.heartbeat_s, store.ttl_s)
    return store.start()


def read_claims(c: DictConfig, uri: str, keys: Iterable[str]) -> dict[str, Claim]:
    """The claims on these cells, for `sweep.plan_only` (reads only; creates nothing)."""
    if not bool(c.enabled) or not is_sql_uri(uri):
        return {}
    store = ClaimStore(uri, float(c.ttl_s), float(c.heartbeat_s), worker="plan", create=False)
    try:
        return store.claims(keys)
    finally:
        store.close()
