"""Crash and resume: a run SIGKILLed mid-epoch and started again with the same command ends
with the same ε and step count as an uninterrupted run, in the same MLflow run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from tests.synthetic import write_fabricated_ct_csv

# batches of 2 reports: ~140 steps per epoch, long enough to be killed in the middle of one
COMMAND = ["model=tiny_bert", "data=ct_rate_text", "data.max_length=64", "trainer.max_epochs=3",
           "trainer.progress_bar=false", "privacy.expected_batch_size=2",
           "privacy.max_physical_batch_size=2", "privacy.epsilon=3", "tracking.log_model=false"]


def start(workdir: Path, csv_path: Path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    env.pop("MLFLOW_RUN_ID", None)
    return subprocess.Popen([sys.executable, "-m", "radpriv.cli", "train", *COMMAND,
                             f"data.path={csv_path}"], cwd=workdir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def reference_steps(reference: dict, workdir: Path) -> float:
    return mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_run(
        reference["run_id"]).data.metrics["privacy/steps"]


def finish(proc: subprocess.Popen) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1]), err


@pytest.mark.timeout(600)
def test_a_killed_run_resumes_to_the_same_epsilon_and_steps(tmp_path):
    csv_path = tmp_path / "reports.csv"
    write_fabricated_ct_csv(csv_path, n=400)
    reference_dir, crash_dir = tmp_path / "reference", tmp_path / "crash"
    reference_dir.mkdir()
    crash_dir.mkdir()

    reference, _ = finish(start(reference_dir, csv_path))

    proc = start(crash_dir, csv_path)
    started = time.monotonic()
    deadline = started + 240
    while not list(crash_dir.glob("checkpoints/*/last.ckpt")):  # epoch 1 is done...
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    time.sleep(0.2)  # ...and epoch 2 is under way
    assert proc.poll() is None, "the run ended before it could be killed mid-epoch"
    os.killpg(proc.pid, signal.SIGKILL)
    killed_after = time.monotonic() - started
    proc.communicate()
    (state,) = crash_dir.glob("checkpoints/*/run.json")
    killed_run = json.loads(state.read_text())["run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{crash_dir / 'mlflow.db'}")
    steps_at_kill = client.get_run(killed_run).data.metrics["privacy/steps"]
    assert 0 < steps_at_kill < reference_steps(reference, reference_dir), "not killed mid-training"

    resumed, err = finish(start(crash_dir, csv_path))
    assert "resuming run" in err
    assert resumed["run_id"] == killed_run
    for key in ("privacy/epsilon", "privacy/steps"):
        got = mlflow.MlflowClient(f"sqlite:///{crash_dir / 'mlflow.db'}").get_run(killed_run).data.metrics[key]
        want = mlflow.MlflowClient(f"sqlite:///{reference_dir / 'mlflow.db'}").get_run(
            reference["run_id"]).data.metrics[key]
        assert got == pytest.approx(want, rel=1e-9), key
    assert mlflow.MlflowClient(f"sqlite:///{crash_dir / 'mlflow.db'}").get_run(killed_run).info.status == "FINISHED"
    # the run's own time counts the killed invocation's epoch 1 (carried in the checkpoint)
    times = mlflow.MlflowClient(f"sqlite:///{crash_dir / 'mlflow.db'}").get_run(killed_run).data.metrics
    assert 0 < times["time/earlier_invocations_s"] < killed_after
    assert times["time/cumulative_s"] == pytest.approx(times["time/total_s"] + times["time/earlier_invocations_s"])
    plain = mlflow.MlflowClient(f"sqlite:///{reference_dir / 'mlflow.db'}").get_run(reference["run_id"]).data.metrics
    assert plain["time/earlier_invocations_s"] == 0
    assert plain["time/cumulative_s"] == pytest.approx(plain["time/total_s"])


def test_the_run_key_ignores_how_a_run_is_shown_and_threaded_but_not_what_it_computes():
    from radpriv.config import compose
    from radpriv.tracking.resume import legacy_run_key, run_key, run_keys

    base = compose(["model=tiny_bert", "data=ct_rate_text"])
    key = run_key(base, "data")
    for shown in (["trainer.progress_bar=false"], ["trainer.num_threads=1"], ["trainer.log_every_n_steps=1"],
                  ["tracking.experiment=x"]):
        assert run_key(compose(["model=tiny_bert", "data=ct_rate_text", *shown]), "data") == key, shown
    for computed in (["privacy.epsilon=3"], ["privacy.max_physical_batch_size=2"], ["seed=1"]):
        assert run_key(compose(["model=tiny_bert", "data=ct_rate_text", *computed]), "data") != key, computed
    assert run_key(base, "other data") != key
    threaded = compose(["model=tiny_bert", "data=ct_rate_text", "trainer.num_threads=1"])
    assert run_keys(threaded, "data") == [key, legacy_run_key(threaded, "data")]
    assert legacy_run_key(threaded, "data") != legacy_run_key(base, "data")  # as before: in the key
