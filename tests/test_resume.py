"""Crash and resume under DP: a run SIGKILLed in epoch 2 and started again with the same command
finishes in the same MLflow run with fresh noise, and its accountant counts every noisy step that
ran in either invocation (the killed partial epoch included)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.synthetic import write_fabricated_ct_csv

pytestmark = pytest.mark.integration  # make test-all (the integration tier)

COMMAND = ["model=tiny_bert", "data=ct_rate_text", "data.max_length=32", "trainer.max_epochs=3",
           "trainer.progress_bar=false", "privacy.expected_batch_size=8",
           "privacy.max_physical_batch_size=8", "privacy.epsilon=3", "tracking.log_model=false"]

# Runs `radpriv train` with a probe on the one place noise is added: after every noisy update
# that reached the weights it appends a digest of that step's noise to PROBE (fsynced), and it
# SIGKILLs its own process after KILL_AT such updates — a kill at a known point in epoch 2.
PROBE_SCRIPT = r"""
import hashlib, os, signal, sys
from radpriv.privacy import dp_step

probe, kill_at = os.environ["PROBE"], int(os.environ.get("KILL_AT", "0"))
add_noise, step = dp_step.NoisyDPOptimizer.add_noise, dp_step.NoisyDPOptimizer.step
state = {"updates": 0}

def probed_add_noise(self):
    add_noise(self)
    p = self.params[0]
    noise = p.grad.detach() - p.summed_grad.detach().view_as(p)
    self._probe_digest = hashlib.sha256(noise.numpy().tobytes()).hexdigest()

def probed_step(self, *args, **kwargs):
    out = step(self, *args, **kwargs)
    digest = getattr(self, "_probe_digest", None)
    if digest is not None:  # a noisy update was applied (skipped chunks add no noise)
        self._probe_digest = None
        with open(probe, "a") as f:
            f.write(digest + "\n"); f.flush(); os.fsync(f.fileno())
        state["updates"] += 1
        if state["updates"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return out

dp_step.NoisyDPOptimizer.add_noise, dp_step.NoisyDPOptimizer.step = probed_add_noise, probed_step
from radpriv.cli import main
main(["train", *sys.argv[1:]])
"""


def start(workdir: Path, csv_path: Path, probe: Path, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}", "PROBE": str(probe),
           "KILL_AT": str(kill_at)}
    env.pop("MLFLOW_RUN_ID", None)
    return subprocess.run([sys.executable, "-c", PROBE_SCRIPT, *COMMAND, f"data.path={csv_path}"], cwd=workdir,
                          env=env, text=True, capture_output=True, timeout=400)


@pytest.mark.timeout(900)
def test_a_run_killed_in_epoch_two_resumes_with_fresh_noise_and_counts_every_step(tmp_path):
    from radpriv.privacy.accounting import epsilon_spent

    csv_path = tmp_path / "reports.csv"
    write_fabricated_ct_csv(csv_path, n=120)
    workdir, probe = tmp_path / "run", tmp_path / "noise.txt"
    workdir.mkdir()

    # how many steps an epoch has: from a first, uninterrupted reference run's plan
    reference = start(tmp_path, csv_path, tmp_path / "reference_noise.txt")
    assert reference.returncode == 0, reference.stderr[-2000:]
    summary = json.loads(reference.stdout.strip().splitlines()[-1])
    ref_metrics = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(summary["run_id"]).data.metrics
    planned = int(ref_metrics["privacy/steps"])
    per_epoch = planned // 3
    assert planned == 3 * per_epoch and per_epoch >= 4

    killed = start(workdir, csv_path, probe, kill_at=per_epoch + 3)  # epoch 2, after its 3rd noisy update
    assert killed.returncode == -9, killed.stderr[-2000:]
    (state,) = workdir.glob("checkpoints/*/run.json")
    run_id = json.loads(state.read_text())["run_id"]
    ran_before_kill = probe.read_text().split()
    assert len(ran_before_kill) == per_epoch + 3

    resumed = start(workdir, csv_path, probe)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming run" in resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["run_id"] == run_id
    noise = probe.read_text().split()
    ran = len(noise)
    assert ran == (per_epoch + 3) + 2 * per_epoch  # the resume redid epoch 2 and ran epoch 3
    # fresh noise: the resumed epoch's noise repeats none of the earlier epochs' (nor the killed 3 steps')
    assert len(set(noise)) == ran
    assert not set(noise) & set((tmp_path / "reference_noise.txt").read_text().split())  # nor another run's

    run = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_run(run_id)
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert m["privacy/steps"] == ran  # every noisy step that ran, not the planned count
    delta, sigma, q = m["privacy/delta"], m["privacy/noise_multiplier"], m["privacy/sample_rate"]
    assert m["privacy/epsilon"] == pytest.approx(epsilon_spent("prv", (sigma, q, ran), delta, "replace_one"))
    assert m["privacy/epsilon"] > ref_metrics["privacy/epsilon"]  # the killed steps cost privacy
    # the run's own time counts the killed invocation's epoch 1 (carried in the checkpoint)
    assert m["time/earlier_invocations_s"] > 0
    assert m["time/cumulative_s"] == pytest.approx(m["time/total_s"] + m["time/earlier_invocations_s"])


def test_the_same_dp_command_twice_gives_different_weights_and_non_private_identical(tmp_path, tracking_uri, capsys):
    """DP noise and batches come from fresh entropy, never the logged seed (which seed_everything
    sets identically for both runs); non-private runs stay reproducible from it."""
    import torch
    from safetensors.torch import load_file

    from radpriv.cli import run

    csv_path = tmp_path / "reports.csv"
    write_fabricated_ct_csv(csv_path, n=60)
    client = mlflow.MlflowClient(tracking_uri)

    def adapter_bytes(epsilon: str) -> bytes:
        assert run(["train", *COMMAND[:-2], "trainer.max_epochs=1", f"privacy.epsilon={epsilon}",
                    f"data.path={csv_path}", "seed=0", "tracking.checkpoint_dir=null"]) == 0
        run_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"]
        local = Path(client.download_artifacts(run_id, "adapter", str(tmp_path / run_id)))
        weights = (load_file(str(local / "adapter_model.safetensors"))
                   | load_file(str(local / "classifier_head.safetensors")))
        return b"".join(weights[k].to(torch.float32).numpy().tobytes() for k in sorted(weights))

    assert adapter_bytes("1") != adapter_bytes("1")
    assert adapter_bytes("null") == adapter_bytes("null")


def test_the_run_key_ignores_how_a_run_is_shown_and_threaded_but_not_what_it_computes(tmp_path):
    from radpriv.config import compose
    from radpriv.tracking.release import PrivateFolder
    from radpriv.tracking.resume import run_key

    folder = PrivateFolder(tmp_path / "private")
    base = compose(["model=tiny_bert", "data=ct_rate_text"])
    key = run_key(base, "data", folder)
    for shown in (["trainer.progress_bar=false"], ["trainer.num_threads=1"], ["trainer.log_every_n_steps=1"],
                  ["tracking.experiment=x"], ["tracking.private_dir=elsewhere"]):
        assert run_key(compose(["model=tiny_bert", "data=ct_rate_text", *shown]), "data", folder) == key, shown
    for computed in (["privacy.epsilon=3"], ["privacy.max_physical_batch_size=2"], ["seed=1"]):
        assert run_key(compose(["model=tiny_bert", "data=ct_rate_text", *computed]), "data", folder) != key, computed
    assert run_key(base, "other data", folder) != key
    # keyed: another machine's secret gives another key, so the published tag tests no guess of the data
    assert run_key(base, "data", PrivateFolder(tmp_path / "other")) != key
