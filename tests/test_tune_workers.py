"""Several `radpriv tune` workers on one study: one Optuna storage, one MLflow store.

Against a real PostgreSQL server (and an `mlflow server` backed by it) that the fixture starts
from the PostgreSQL binaries installed on the machine — the set-up of docs/SCALING.md, part 2.
Without PostgreSQL (or psycopg) that variant is skipped with the reason, and the same check runs
against sqlite files instead.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pytest

from radpriv.tune import ledger
from tests.helpers.cli import TINY

pytestmark = pytest.mark.integration  # make test-all (the integration tier)

ROOT = Path(__file__).resolve().parents[1]
# tune.budget: room for both workers' trials (the default would be one worker's planned cost)
WORKER = [*TINY, "trainer.max_epochs=1", "privacy.epsilon=2", "tune.n_trials=2", "tune.budget=100",
          "tune.retrain_best=false", "tune.pruning=false", "trainer.num_threads=1", "tracking.log_model=false"]
STUDY = "ct_rate_text-tiny_bert-lora-eps2-compose"


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return versions[-1] if versions else None


def postgres_missing() -> str | None:
    """Why a PostgreSQL server cannot be started here (None: it can)."""
    if not (_pg_bin("initdb") and _pg_bin("pg_ctl")):
        return "PostgreSQL is not installed (no initdb/pg_ctl; apt-get install postgresql)"
    if importlib.util.find_spec("psycopg") is None:
        return "the psycopg driver is not installed (pip install 'psycopg[binary]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server on a free local port with databases `optuna` and `mlflow`;
    yields its base URL `postgresql+psycopg://radpriv@127.0.0.1:<port>`."""
    reason = postgres_missing()
    if reason:
        pytest.skip(reason)
    import psycopg

    # in the system temp folder: pytest's own (mode 700, root's) is closed to the postgres user
    root = Path(tempfile.mkdtemp(prefix="radpriv-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    as_user = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        pw = pwd.getpwnam("postgres")
        for p in (root, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    def pg(*args: str) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(args)}: {done.stderr[-2000:]}"

    pg(_pg_bin("initdb"), "-D", str(data), "-U", "radpriv", "--auth=trust", "-E", "UTF8", "--no-sync")
    port = _free_port()
    pg(_pg_bin("pg_ctl"), "-D", str(data), "-l", str(data / "server.log"), "-w", "-o",
       f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        with psycopg.connect(f"host=127.0.0.1 port={port} user=radpriv dbname=postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE optuna")
            c.execute("CREATE DATABASE mlflow")
        yield f"postgresql+psycopg://radpriv@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mlflow_server(postgres, tmp_path_factory):
    """`mlflow server` on the PostgreSQL database `mlflow`, serving artifacts from a local folder."""
    port = _free_port()
    artifacts = tmp_path_factory.mktemp("mlartifacts")
    log = open(artifacts.parent / "mlflow-server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"{postgres}/mlflow",
                             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (artifacts.parent / "mlflow-server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not come up"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def run_two_workers(workdir: Path, csv_path: Path, storage: str, tracking_uri: str) -> list[dict]:
    """Two `radpriv tune` processes started at the same moment on one storage and one store."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [sys.executable, "-m", "radpriv.cli", "tune", *WORKER, f"data.path={csv_path}", f"tune.storage={storage}"]
    workers = [subprocess.Popen(cmd, cwd=workdir, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE) for _ in range(2)]
    outs = []
    for w in workers:
        out, err = w.communicate(timeout=840)
        assert w.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


def check_one_study_and_one_experiment(outs: list[dict], storage: str, tracking_uri: str) -> None:
    assert {o["study"] for o in outs} == {STUDY}
    study = optuna.load_study(study_name=STUDY, storage=storage)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]  # 2 workers × 2 trials, one numbering
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len({t.params["lr"] for t in study.trials}) == 4  # no worker repeated another's proposal
    # one record (written by whichever worker created the study) and one admitted claim per trial
    record = study.user_attrs[ledger.STUDY_ATTR]
    assert record["filter"]["budget_epsilon"] == 100 and record["seeds"]["seed"] is None
    claims = ledger.claims(study)
    assert [c.state for c in claims] == ["admitted"] * 4
    assert sum(c.cost for c in claims) <= record["filter"]["rdp_budget"]

    client = mlflow.MlflowClient(tracking_uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len({r.info.experiment_id for r in runs}) == 1  # one experiment holds both workers' runs
    parents = [r for r in runs if r.data.tags.get("radpriv.tune.role") == "parent"]
    trials = [r for r in runs if r.data.tags.get("radpriv.tune.role") == "trial"]
    assert len(parents) == 2 and len(trials) == 4 and len(runs) == 6
    assert all(r.data.tags["radpriv.tune.study"] == STUDY for r in runs)
    by_parent = {p.info.run_id: sorted(int(t.data.tags["radpriv.tune.trial"]) for t in trials
                                       if t.data.tags["mlflow.parentRunId"] == p.info.run_id) for p in parents}
    assert sorted(n for ns in by_parent.values() for n in ns) == [0, 1, 2, 3]
    assert all(len(ns) == 2 for ns in by_parent.values())  # each worker nested its own trials
    assert all(r.info.status == "FINISHED" and "val/f1_weighted" in r.data.metrics for r in trials)
    # the secret proposal seed stays in the study storage
    seed = str(record["proposal_seed"])
    assert not any(seed in str(v) for r in runs for v in [*r.data.params.values(), *r.data.tags.values()])


@pytest.mark.timeout(900)
def test_two_workers_share_one_study_on_postgresql_and_an_mlflow_server(postgres, mlflow_server, tmp_path,
                                                                         reports_csv):
    storage = f"{postgres}/optuna"
    outs = run_two_workers(tmp_path, reports_csv[0], storage, mlflow_server)
    check_one_study_and_one_experiment(outs, storage, mlflow_server)


@pytest.mark.timeout(900)
@pytest.mark.skipif(postgres_missing() is None, reason="the PostgreSQL variant runs the same check here")
def test_two_workers_share_one_study_on_sqlite(tmp_path, reports_csv):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # create the tracking store before the workers start: two MLflow clients creating one fresh
    # sqlite schema at the same instant race on it (a server-backed store has no such race)
    mlflow.MlflowClient(tracking_uri).search_experiments()
    outs = run_two_workers(tmp_path, reports_csv[0], storage, tracking_uri)
    check_one_study_and_one_experiment(outs, storage, tracking_uri)
