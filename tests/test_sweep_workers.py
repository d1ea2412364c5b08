"""Several `radpriv sweep` workers on one command: claims in the tracking database (claims.py),
two processes splitting a grid (and training the public model of their warm cells once), a dead
worker's cell taken over and resumed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import lightning as L
import mlflow
import pytest
from omegaconf import OmegaConf
from sqlalchemy import MetaData, create_engine, select, update

from radpriv.cli import main
from radpriv.errors import ConfigError
from radpriv.sweep import claims
from radpriv.sweep.claims import CLAIMED, DONE, ClaimStore
from tests.helpers.cli import sweep_json

pytestmark = pytest.mark.integration  # make test-all (the integration tier)

ROOT = Path(__file__).resolve().parents[1]
# tiny encoders, one epoch, one thread each, no bars: a cell trains in seconds
TRAIN = ["data=ct_rate_text", "data.max_length=48", "trainer.max_epochs=1", "trainer.num_threads=1",
         "trainer.progress_bar=false", "privacy.expected_batch_size=8", "privacy.max_physical_batch_size=4",
         "trainer.eval_batch_size=16"]
SWEEP = [*TRAIN, "sweep.bootstrap.n_resamples=50", "sweep.progress_bar=false", "sweep.baselines=[]",
         "sweep.models=[tiny_bert]", "sweep.seeds=[42]"]
ONE_CELL = ["sweep.epsilons=[]", "sweep.nonprivate=[lora]"]  # tiny_bert-lora-seed42
TTL, BEAT = 2.0, 0.5


@pytest.fixture
def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'claims.db'}"


def store(db: str, worker: str, ttl: float = TTL) -> ClaimStore:
    return ClaimStore(db, ttl_s=ttl, heartbeat_s=BEAT, worker=worker)


def age_claim(uri: str, key: str, seconds: float) -> None:
    """Move a claim's last heartbeat `seconds` into the past: its worker stopped beating then."""
    engine = create_engine(uri)
    table = claims._table(MetaData())
    with engine.begin() as conn:
        conn.execute(update(table).where(table.c.cell_key == key)
                     .values(heartbeat_at=int((time.time() - seconds) * 1000)))
    engine.dispose()


def rows(uri: str) -> list:
    engine = create_engine(uri)
    with engine.connect() as conn:
        out = conn.execute(select(claims._table(MetaData()))).all()
    engine.dispose()
    return out


# --------------------------------------------------------------------------------------------
# claims.py on a temporary sqlite database
# --------------------------------------------------------------------------------------------


def test_a_cell_is_claimed_once_and_the_second_claimer_loses(db):
    a, b = store(db, "host-a-1-aaa"), store(db, "host-b-2-bbb")
    first = a.claim("k1")
    assert first.won and first.other is None
    second = b.claim("k1")
    assert not second.won and second.other.worker == "host-a-1-aaa" and second.other.state == CLAIMED
    assert a.claim("k1").won  # its own claim: still its own
    assert b.claim("k2").won  # another cell is free
    assert {(r.cell_key, r.worker, r.state) for r in rows(db)} == {("k1", "host-a-1-aaa", CLAIMED),
                                                                   ("k2", "host-b-2-bbb", CLAIMED)}


def test_an_expired_claim_goes_to_exactly_one_of_two_racing_claimers(db):
    dead, b, c = store(db, "dead"), store(db, "b"), store(db, "c")
    assert dead.claim("k").won
    assert not b.claim("k").won  # alive: no takeover
    age_claim(db, "k", TTL + 1)
    # the race, step by step: both read the stale row, b's compare-and-set lands first
    stale = c.get("k")
    taken = b.claim("k")
    assert taken.won and taken.other.worker == "dead"  # it says whose claim it took over
    c.get = lambda key: stale  # c acts on what it read before b's update
    lost = c.claim("k")
    assert not lost.won
    assert [(r.worker, r.state) for r in rows(db)] == [("b", CLAIMED)]


def test_racing_threads_each_cell_taken_over_by_exactly_one(db):
    keys = [f"k{i}" for i in range(8)]
    dead = store(db, "dead")
    for k in keys:
        assert dead.claim(k).won
        age_claim(db, k, TTL + 1)
    workers = [store(db, f"w{i}") for i in range(4)]
    start, won = threading.Barrier(len(workers)), {}

    def run(w: ClaimStore) -> None:
        start.wait()
        won[w.worker] = [k for k in keys if w.claim(k).won]

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(k for ks in won.values() for k in ks) == sorted(keys)  # each exactly once
    assert {r.cell_key: r.worker for r in rows(db)} == {k: w for w, ks in won.items() for k in ks}


def test_a_done_cell_is_never_claimed_again_and_a_released_one_at_once(db):
    a, b = store(db, "a"), store(db, "b")
    assert a.claim("done").won and a.claim("failed").won
    a.done("done")
    age_claim(db, "done", 3600)  # done does not expire
    refused = b.claim("done")
    assert not refused.won and refused.other.state == DONE
    a.release("failed")  # a failed on it: the row goes
    assert b.claim("failed").won
    assert {(r.cell_key, r.worker, r.state) for r in rows(db)} == {("done", "a", DONE), ("failed", "b", CLAIMED)}
    # a done cell whose run is gone is reopened, and only a done row is dropped
    assert not b.reopen("failed") and b.reopen("done") and b.claim("done").won


def test_the_heartbeat_keeps_a_claim_alive_and_notices_a_takeover(db, caplog):
    a = store(db, "a", ttl=10).start()
    try:
        assert a.claim("k").won
        age_claim(db, "k", 5)
        time.sleep(3 * BEAT)
        assert a.get("k").age_s() < 3 * BEAT  # refreshed by the thread
        assert not store(db, "b", ttl=10).claim("k").won
    finally:
        a.close()
    age_claim(db, "k", 11)  # a stopped beating (closed): b takes the cell over
    assert store(db, "b", ttl=10).claim("k").won
    assert a.beat() == ["k"] and "lost its claim on cell k" in caplog.text


def test_claims_settings_and_stores_that_cannot_hold_them(caplog):
    ok = {"enabled": True, "heartbeat_s": 30, "ttl_s": 300, "poll_s": 5}
    claims.check_settings(OmegaConf.create(ok))
    for bad, message in [({"ttl_s": 30}, "at least 2 × sweep.claims.heartbeat_s"),
                         ({"heartbeat_s": 0}, "heartbeat_s=0: must be > 0"),
                         ({"poll_s": -1}, "poll_s=-1: must be > 0"),
                         ({"ttl_s": "soon"}, "must be numbers of seconds")]:
        with pytest.raises(ConfigError, match=message):
            claims.check_settings(OmegaConf.create({**ok, **bad}))
    caplog.set_level("INFO", logger="radpriv")
    assert claims.open_store(OmegaConf.create(ok), "http://tracking.example:5000") is None
    assert "claims off: the tracking URI http://tracking.example:5000 is not a SQL database" in caplog.text
    assert claims.open_store(OmegaConf.create({**ok, "enabled": False}), "sqlite:///x.db") is None
    assert "sweep.claims.enabled=false" in caplog.text
    assert claims.is_sql_uri("postgresql+psycopg://u:p@h/db") and not claims.is_sql_uri("https://h")
    assert "p@" not in claims.safe_uri("postgresql+psycopg://u:secret@h/db")


def test_a_bad_claims_setting_is_one_line_before_anything_runs(tracking_uri, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *SWEEP, "sweep.claims.heartbeat_s=30", "sweep.claims.ttl_s=30"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "sweep.claims.ttl_s=30" in err[0], err


# --------------------------------------------------------------------------------------------
# the sweep with claims
# --------------------------------------------------------------------------------------------




def only_key(overrides: list[str]) -> str:
    """The run key (= claim key) of a one-cell grid."""
    from radpriv.config import compose
    from radpriv.data.sources import load_table
    from radpriv.sweep.grid import build_grid, training_overrides
    from radpriv.sweep.run import _cell_cfg, cell_keys

    cfg = compose(["+sweep=default", *overrides])
    (cell,) = build_grid(cfg.sweep)
    base = training_overrides(overrides)
    return cell_keys(base, cell, _cell_cfg(base, cell, "p", "e"), load_table(cfg.data, 42))[0]


def training_runs(uri: str) -> list:
    client = mlflow.MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`radpriv.run_key` != ''")


def test_a_worker_waits_for_a_cell_another_holds_and_releases_its_claim_when_it_fails(
        tracking_uri, reports_csv, capsys, monkeypatch):
    overrides = [*SWEEP, *ONE_CELL, f"data.path={reports_csv[0]}", "sweep.claims.poll_s=0.2"]
    key = only_key(overrides)

    # a failing worker gives its cell back
    def boom(cfg, table=None):
        raise RuntimeError("out of memory, say")

    with monkeypatch.context() as m:
        m.setattr("radpriv.train.train", boom)
        with pytest.raises(RuntimeError, match="out of memory"):
            main(["sweep", *overrides])
    assert rows(tracking_uri) == []
    capsys.readouterr()

    # another (live) worker holds the cell; it gives up after a while: this one trains it
    other = ClaimStore(tracking_uri, ttl_s=60, heartbeat_s=0.2, worker="other-host-7-abc").start()
    assert other.claim(key).won
    plan, err = sweep_json(capsys, [*overrides, "sweep.plan_only=true"])
    assert plan["states"][0]["claimed_by"] == "other-host-7-abc"
    assert "to train; claimed by other-host-7-abc, heartbeat 0 s ago" in err
    releaser = threading.Timer(2.0, other.release, args=(key,))
    releaser.start()
    try:
        out, err = sweep_json(capsys, overrides)
    finally:
        releaser.join()
        other.close()
    assert out["trained"] == 1
    assert "[1/1] tiny_bert-lora-seed42: claimed by other-host-7-abc, heartbeat 0 s ago: skipped for now" in err
    assert "waiting for 1 held by other workers: tiny_bert-lora-seed42 (other-host-7-abc, heartbeat" in err
    (row,) = rows(tracking_uri)
    assert row.cell_key == key and row.state == DONE and row.worker != "other-host-7-abc"


class _StopAtSecondEpoch(L.Callback):
    """A worker killed after its first epoch: the epoch-end checkpoint of epoch 1 exists."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("killed after epoch 1")


def test_a_dead_workers_claim_expires_and_the_next_worker_resumes_its_cell(tracking_uri, reports_csv, capsys):
    from radpriv.config import compose
    from radpriv.sweep.grid import Cell, cell_overrides
    from radpriv.train import train

    two_epochs = [o for o in SWEEP if o != "trainer.max_epochs=1"] + ["trainer.max_epochs=2"]
    overrides = [*two_epochs, *ONE_CELL, f"data.path={reports_csv[0]}"]
    key = only_key(overrides)
    # the dead worker: it claimed the cell, trained one epoch of two, and stopped beating 10 min ago
    dead = ClaimStore(tracking_uri, ttl_s=300, heartbeat_s=30, worker="gone-host-1-dead")
    assert dead.claim(key).won
    cell_cfg = compose(cell_overrides([o for o in overrides if not o.startswith("sweep.")],
                                      Cell("tiny_bert", "lora", None, 42)))
    with pytest.raises(RuntimeError, match="killed after epoch 1"):
        train(cell_cfg, extra_callbacks=[_StopAtSecondEpoch()])
    (started,) = training_runs(tracking_uri)
    age_claim(tracking_uri, key, 600)

    plan, err = sweep_json(capsys, [*overrides, "sweep.plan_only=true"])
    assert "1 of 2 epochs in its checkpoint" in err
    assert re.search(r"; claimed by gone-host-1-dead, heartbeat 6\d\d s ago — expired: the next worker takes it "
                     r"over\)", err)
    assert plan["states"][0]["claimed_by"] == "gone-host-1-dead"

    out, err = sweep_json(capsys, [*overrides, "sweep.claims.ttl_s=60", "sweep.claims.heartbeat_s=1"])
    assert out["trained"] == 1
    assert "taken over from gone-host-1-dead, whose heartbeat stopped 6" in err
    (finished,) = training_runs(tracking_uri)  # no new run: the dead worker's, resumed
    assert finished.info.run_id == started.info.run_id and finished.data.tags["radpriv.complete"] == "true"
    (row,) = rows(tracking_uri)
    assert row.state == DONE and row.worker != "gone-host-1-dead"


class _Worker:
    """One `radpriv sweep` process, its output read as it comes (a log line can be waited for)."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict) -> None:
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.out: list[str] = []
        self.err: list[str] = []
        # both pipes drained all along: a full pipe would block the worker
        self._readers = [threading.Thread(target=lambda s=stream, d=dest: d.extend(s), daemon=True)
                         for stream, dest in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for r in self._readers:
            r.start()

    def logged(self, text: str) -> bool:
        return any(text in line for line in list(self.err))

    def finish(self, timeout: float) -> tuple[dict, str]:
        """Its final JSON line and its stderr, once it exited cleanly."""
        self.proc.wait(timeout=timeout)
        for r in self._readers:
            r.join(timeout=10)
        err = "".join(self.err)
        assert self.proc.returncode == 0, err[-3000:]
        return json.loads("".join(self.out).strip().splitlines()[-1]), err


def start_workers(tmp_path: Path, uri: str, args: list[str], n: int = 2) -> list[_Worker]:
    """n workers of one sweep command in tmp_path (their working directory: the private folder
    and checkpoints they share), against the store `uri`."""
    # create the store first: two MLflow clients creating one fresh sqlite schema at the same
    # instant race on it (docs/SCALING.md)
    mlflow.MlflowClient(uri).search_experiments()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [sys.executable, "-m", "radpriv.cli", "sweep", *args]
    return [_Worker(cmd, tmp_path, env) for _ in range(n)]


@pytest.mark.timeout(240)
def test_two_sweep_processes_split_the_cells_and_write_the_same_table(tmp_path, reports_csv):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = ["sweep.epsilons=[]", "sweep.nonprivate=[lora,full]"]  # 2 cells, the quickest to train
    workers = start_workers(tmp_path, uri, [*SWEEP, *grid, f"data.path={reports_csv[0]}", "sweep.claims.poll_s=0.5"])
    outs, errs = zip(*(w.finish(timeout=220) for w in workers))

    runs = training_runs(uri)
    per_key = {}
    for r in runs:
        per_key.setdefault(r.data.tags["radpriv.run_key"], []).append(r)
    assert len(per_key) == 2 and all(len(rs) == 1 for rs in per_key.values())  # each cell trained once
    assert all(r.data.tags["radpriv.complete"] == "true" for r in runs)
    assert sum(o["trained"] for o in outs) == 2 and all(o["cells"] == 2 for o in outs)
    table = rows(uri)
    assert {r.cell_key for r in table} == set(per_key) and {r.state for r in table} == {DONE}

    client = mlflow.MlflowClient(uri)
    tables = []
    for o in outs:
        local = Path(client.download_artifacts(o["run_id"], "results.csv", str(tmp_path / o["run_id"])))
        tables.append(local.read_text())
    assert tables[0] == tables[1]  # the same runs, the same seeded bootstrap: the same table
    assert outs[0]["run_id"] != outs[1]["run_id"]
    assert all("cells are claimed in table radpriv_sweep_claims" in e for e in errs)


def grid_and_public_model(overrides: list[str]):
    """{cell name: claim key} of a one-model, one-seed grid with sweep.init_from=public, and the
    public model its warm cells start from (radpriv.train.PublicModel: its name and run keys)."""
    from radpriv.config import compose
    from radpriv.data.sources import load_table
    from radpriv.model.public_start import load_public_corpus
    from radpriv.sweep.grid import WARM_KIND, build_grid, training_overrides
    from radpriv.sweep.run import _cell_cfg, cell_keys
    from radpriv.train import public_model

    cfg = compose(["+sweep=default", *overrides])
    base, cells = training_overrides(overrides), build_grid(cfg.sweep)
    table = load_table(cfg.data, cells[0].seed)
    cfgs = {c: _cell_cfg(base, c, "p", "e") for c in cells}  # tracking.* is not in the run key
    keys = {c.name: cell_keys(base, c, cell_cfg, table)[0] for c, cell_cfg in cfgs.items()}
    warm = next(cell_cfg for c, cell_cfg in cfgs.items() if c.kind == WARM_KIND)
    return keys, public_model(warm, load_public_corpus(warm, table))


@pytest.mark.timeout(300)
def test_two_sweep_processes_train_the_public_model_of_their_warm_cells_once(tracking_uri, tmp_path, reports_csv):
    csv_path = reports_csv[0]
    # the private cells train on shard 1/2 of the CSV, the public model on shard 0/2;
    # 2 cold cells, then 2 warm cells that both start from one public model
    args = [*SWEEP, "data.train_shard=1/2", f"data.path={csv_path}",
            f"finetune.public.data={{name:ct_rate_text,path:{csv_path}}}", "finetune.public.max_epochs=1",
            "sweep.epsilons=[1,10]", "sweep.nonprivate=[]", "sweep.init_from=public", "sweep.claims.poll_s=0.5"]
    keys, public = grid_and_public_model(args)  # run in tmp_path: it makes the secret key the workers share
    cold = [k for name, k in keys.items() if "-public-" not in name]
    mlflow.MlflowClient(tracking_uri).search_experiments()  # MLflow's schema, then the claims table
    # a third worker holds the cold cells and the public model: both workers reach the warm
    # cells at once, and (once both wait) race for the public model
    holder = ClaimStore(tracking_uri, ttl_s=60, heartbeat_s=0.5, worker="holder-host-9-abc").start()
    assert all(holder.claim(k).won for k in [*cold, public.keys[0]])
    workers = start_workers(tmp_path, tracking_uri, args)
    try:
        deadline = time.monotonic() + 200
        while (not all(w.logged("held by other workers") for w in workers) and time.monotonic() < deadline
               and all(w.proc.poll() is None for w in workers)):
            time.sleep(0.2)
    finally:
        for k in [*cold, public.keys[0]]:
            holder.release(k)
        holder.close()
    outs, errs = zip(*(w.finish(timeout=240) for w in workers))

    runs = training_runs(tracking_uri)
    per_key = {}
    for r in runs:
        per_key.setdefault(r.data.tags["radpriv.run_key"], []).append(r)
    assert len(per_key.get(public.keys[0], [])) == 1, "the public model was not trained exactly once"
    assert set(per_key) == {*keys.values(), public.keys[0]} and all(len(rs) == 1 for rs in per_key.values())
    assert all(r.data.tags["radpriv.complete"] == "true" for r in runs)
    client = mlflow.MlflowClient(tracking_uri)
    assert [(m.name, len(client.search_model_versions(f"name='{m.name}'")))
            for m in client.search_registered_models()] == [(public.name, 1)]
    assert sum(o["trained"] for o in outs) == 4 and all(o["cells"] == 4 for o in outs)
    assert {(r.cell_key, r.state) for r in rows(tracking_uri)} == {(k, DONE) for k in per_key}
    # each waited for the public model as for a held cell, and one of them trained it
    assert all(f"public model {public.name}: claimed by holder-host-9-abc, heartbeat" in e and
               "skipped for now" in e for e in errs)
    assert sum(f"public model {public.name}: training" in e for e in errs) == 1
