"""`radpriv tune` (issue 4): nested runs, a resumable RDB study, and the search's privacy cost.

The accounting is checked against dp_accounting events built here, independently of
radpriv/tune; the end-to-end tests train tiny random encoders on fabricated reports.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import dp_accounting
import mlflow
import numpy as np
import optuna
import pytest
from dp_accounting import NeighboringRelation
from dp_accounting.dp_event import RepeatAndSelectDpEvent
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from radpriv.cli import main, run
from radpriv.config import compose
from radpriv.privacy.accounting import RDP_ORDERS, calibrate_noise_multiplier, default_delta, epsilon_spent
from radpriv.tune import ledger, privacy_cost
from radpriv.tune.privacy_cost import Mechanism
from radpriv.tune.sampling import TrialSeededRandomSampler
from tests.test_train_e2e import TINY, error_lines

SMALL = [*TINY, "trainer.max_epochs=1"]
REPO = Path(__file__).resolve().parents[1]


def tune(capsys, overrides) -> dict:
    assert run(["tune", *overrides]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def children(client, parent_id):
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}'")


def event(sigma, q, steps):
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)


def direct_rdp(evt, delta):
    return RdpAccountant(list(RDP_ORDERS), NeighboringRelation.ADD_OR_REMOVE_ONE).compose(evt).get_epsilon(delta)


def direct_pld(runs, delta):
    acc = PLDAccountant(NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-4)
    return acc.compose(dp_accounting.ComposedDpEvent([event(*r) for r in runs])).get_epsilon(delta)


# --------------------------------------------------------------------------------------------
# accounting (no training)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target, mean, shape", [(1.0, 8, math.inf), (4.0, 3, 1.0), (1.0, 10, 0.5)])
def test_random_search_total_matches_dp_accounting_and_meets_the_target(target, mean, shape):
    n = 2700
    q, steps = privacy_cost.trial_rate_and_steps(n, 64, 2)
    delta = default_delta(n)
    sigma = privacy_cost.calibrate_search_noise(target, delta, q, steps, mean, shape, n_finals=1)
    plan = {"noise_multiplier": sigma, "sample_rate": q, "steps": steps, "mean": mean, "shape": shape,
            "target_epsilon": target}
    # each run is calibrated by train to the ε that σ spends alone (PRV): it gets σ' ≥ σ
    per_run = epsilon_spent("prv", (sigma, q, steps), delta)
    sigma_run = float(calibrate_noise_multiplier(per_run, delta, q, steps, accountant="prv"))
    assert sigma_run >= sigma
    book = ledger.Ledger(trials=[Mechanism(sigma_run, q, steps)] * 3, finals=[Mechanism(sigma_run, q, steps)])
    got = ledger.search_privacy(book, "random_search", delta, plan)
    direct = direct_rdp(dp_accounting.ComposedDpEvent([
        RepeatAndSelectDpEvent(event(sigma_run, q, steps), mean, shape), event(sigma_run, q, steps)]), delta)
    assert got["epsilon_total"] == pytest.approx(direct, rel=1e-9)
    assert 0.97 * target <= got["epsilon_total"] <= target
    # the calibration itself lands within 0.5 % under the target
    at_sigma = direct_rdp(dp_accounting.ComposedDpEvent([
        RepeatAndSelectDpEvent(event(sigma, q, steps), mean, shape), event(sigma, q, steps)]), delta)
    assert (1 - privacy_cost.CALIBRATION_REL_TOL) * target <= at_sigma <= target
    # a trial with less noise than the calibration is refused by the ledger
    with pytest.raises(Exception, match="calibrated"):
        ledger.search_privacy(ledger.Ledger(trials=[Mechanism(0.9 * sigma, q, steps)]), "random_search", delta, plan)


def test_compose_total_is_the_pld_composition_of_every_run_and_exceeds_each():
    delta = 1e-5
    runs = [(1.1, 0.02, 300), (0.8, 0.05, 120), (2.0, 0.01, 500)]
    per_run_eps = [epsilon_spent("prv", r, delta) for r in runs]
    book = ledger.Ledger(trials=[Mechanism(*r) for r in runs[:2]], trial_epsilons=per_run_eps[:2],
                         finals=[Mechanism(*runs[2])], final_epsilons=per_run_eps[2:])
    got = ledger.search_privacy(book, "compose", delta)
    assert got["runs_composed"] == 3
    assert got["epsilon_total"] == pytest.approx(direct_pld(runs, delta), rel=2e-3)
    assert got["epsilon_total"] > max(per_run_eps)
    assert got["epsilon_total_rdp"] >= got["epsilon_total_pld"]
    # a run on the private data without DP voids the guarantee
    book.nonprivate_trials = 1
    assert math.isinf(ledger.search_privacy(book, "compose", delta)["epsilon_total"])


@pytest.mark.parametrize("shape", [math.inf, 1.0, 0.5, 0.0])
def test_the_number_of_trials_follows_the_accountants_distribution(shape):
    from dp_accounting.rdp.rdp_privacy_accountant import _truncated_negative_binomial_mean

    rng = np.random.default_rng(1)
    draws = np.array([privacy_cost.draw_trial_count(6.0, shape, rng) for _ in range(4000)])
    assert draws.mean() == pytest.approx(6.0, rel=0.05)
    if math.isinf(shape):
        assert (draws == 0).any()  # Poisson: K = 0 happens (e^-6 · 4000 ≈ 10 times)
    else:
        assert draws.min() >= 1
        gamma = privacy_cost.truncated_nb_gamma(shape, 6.0)
        assert _truncated_negative_binomial_mean(gamma, shape) == pytest.approx(6.0, rel=1e-6)


def test_random_proposals_depend_only_on_the_seed_and_the_trial_number(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    a = optuna.create_study(study_name="s", storage=storage, sampler=TrialSeededRandomSampler(3))
    b = optuna.load_study(study_name="s", storage=storage, sampler=TrialSeededRandomSampler(3))
    t0 = a.ask()
    t1 = b.ask()  # a second worker, same seed: the next trial number, another proposal
    x0, x1 = t0.suggest_float("lr", 1e-3, 1e-1, log=True), t1.suggest_float("lr", 1e-3, 1e-1, log=True)
    assert (t0.number, t1.number) == (0, 1) and x0 != x1 and 1e-3 <= min(x0, x1) <= max(x0, x1) <= 1e-1
    again = optuna.create_study(sampler=TrialSeededRandomSampler(3)).ask()
    assert again.suggest_float("lr", 1e-3, 1e-1, log=True) == x0  # reproducible from the seed


# --------------------------------------------------------------------------------------------
# bad input: one line, exit 2, no MLflow run
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, message", [
    ("tune.accounting=guess", "tune.accounting='guess'"),
    ("tune.n_trials=0", "at least 1 trial"),
    ("tune.n_trials=-3", "at least 1 trial"),
    ("tune.storage=nosuchdb://x", "cannot be opened"),
    ("tune.storage=sqlite:////no/such/folder/o.db", "cannot be opened"),
    ("tune.space.lr=[0.1,0.01]", "low < high"),
    ("tune.space.max_epochs=[3,3]", "low < high"),
    ("tune.accounting=random_search tune.space.expected_batch_size=[8,16]", "same DP mechanism"),
    ("tune.accounting=random_search tune.sampler=tpe", "tune.sampler=random"),
    ("tune.accounting=random_search privacy.epsilon=null", "finite privacy.epsilon"),
    ("tune.accounting=public", "tune.public_data"),
    ("tune.register=m tune.retrain_best=false", "tune.retrain_best=true"),
])
def test_bad_tune_settings_are_one_line_errors(tracking_uri, reports_csv, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", *SMALL, f"data.path={reports_csv[0]}", *extra.split()])
    lines = error_lines(capsys.readouterr().err)
    assert exit_info.value.code == 2 and len(lines) == 1 and message in lines[0], lines
    if Path(tracking_uri.removeprefix("sqlite:///")).exists():
        client = mlflow.MlflowClient(tracking_uri)
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def _write_public(private: Path, public: Path, keep: int) -> None:
    """`public`: the private CSV's rows, all but the first `keep` reworded (so not the same reports)."""
    rows = list(csv.reader(private.open(encoding="utf-8")))
    for i, row in enumerate(rows[1:]):
        if i >= keep:
            row[1] = f"public reworded {i}. {row[1]}"
    with public.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


@pytest.mark.parametrize("keep, message", [(10**6, "the same reports as"), (5, "of the reports of")])
def test_public_search_refuses_data_that_holds_private_training_reports(tracking_uri, reports_csv, capsys,
                                                                        tmp_path, keep, message):
    public = tmp_path / "public.csv"
    _write_public(reports_csv[0], public, keep)
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", *SMALL, f"data.path={reports_csv[0]}", "tune.accounting=public",
              "tune.public_data=ct_rate_text", f"tune.public_data_path={public}",
              f"tune.storage=sqlite:///{tmp_path / 'p.db'}"])
    lines = error_lines(capsys.readouterr().err)
    assert exit_info.value.code == 2 and len(lines) == 1 and message in lines[0], lines


# --------------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------------


class _PruneTrialOne(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return trial.number == 1


def test_composed_search_end_to_end_then_resumed(tracking_uri, reports_csv, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("radpriv.tune.sampling.make_pruner", lambda *a: _PruneTrialOne())
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [*SMALL, f"data.path={reports_csv[0]}", "privacy.epsilon=2", f"tune.storage={storage}"]
    out = tune(capsys, [*args, "tune.n_trials=3", "tune.register=tuned-ct"])
    client = mlflow.MlflowClient(tracking_uri)
    parent = client.get_run(out["run_id"])
    assert parent.data.tags["radpriv.tune.role"] == "parent" and parent.info.status == "FINISHED"
    runs = {r.data.tags["radpriv.tune.role"] + r.data.tags.get("radpriv.tune.trial", ""): r
            for r in children(client, out["run_id"])}
    assert set(runs) == {"trial0", "trial1", "trial2", "final"}
    assert runs["trial1"].data.tags.get("radpriv.tune.pruned") == "true" and runs["trial1"].info.status == "KILLED"
    assert all(runs[k].data.tags["radpriv.tune.study"] == out["study"] for k in runs)
    # one split (the study's seed), but each trial its own training randomness
    assert len({runs[f"trial{i}"].data.params["seed"] for i in range(3)} | {runs["final"].data.params["seed"]}) == 4
    assert runs["final"].data.params["seed"] == runs["trial0"].data.tags["radpriv.tune.split_seed"] == "42"

    # best parameters and value on the parent; the best is the best completed trial
    values = {k: runs[k].data.metrics["val/f1_weighted"] for k in ("trial0", "trial2")}
    assert out["best_value"] == pytest.approx(max(values.values()))
    assert parent.data.metrics["tune/best_value"] == pytest.approx(out["best_value"])
    assert {f"best.{k}" for k in ("lr", "max_grad_norm")} <= set(parent.data.params)
    assert float(parent.data.params["best.lr"]) == pytest.approx(out["best_params"]["lr"])
    assert parent.data.metrics["tune/trials_pruned"] == 1
    arts = {a.path for a in client.list_artifacts(out["run_id"])} | \
        {a.path for a in client.list_artifacts(out["run_id"], "plots")}
    assert {"tune_privacy.json", "trials.csv", "plots/optimization_history.png",
            "plots/param_importances.png"} <= arts

    # ε_total: the PLD composition of the 4 private runs (pruned trial with its planned steps)
    study = optuna.load_study(study_name=out["study"], storage=storage)
    trial_runs = [tuple(t.user_attrs["mechanism"]) for t in study.trials]
    final = [tuple(v["mechanism"]) for k, v in study.user_attrs.items() if k.startswith("radpriv.final.")]
    assert len(trial_runs) == 3 and len(final) == 1
    # trial 0 is the recipe itself (tune.enqueue_recipe): the study holds default vs tuned
    recipe = compose(["+tune=default", *args])
    assert study.trials[0].params == pytest.approx({"lr": recipe.finetune.lr,
                                                    "max_grad_norm": recipe.privacy.max_grad_norm})
    assert study.trials[0].user_attrs.get("radpriv.recipe") is True
    assert not study.trials[2].user_attrs.get("radpriv.recipe") and study.trials[2].params != study.trials[0].params
    for key, mech in [("trial0", trial_runs[0]), ("final", final[0])]:
        m = runs[key].data.metrics
        assert (m["privacy/noise_multiplier"], m["privacy/sample_rate"], m["privacy/steps"]) == \
            pytest.approx(mech)
    delta = out["privacy"]["delta"]
    total = parent.data.metrics["privacy/epsilon_total"]
    assert total == pytest.approx(direct_pld(trial_runs + final, delta), rel=2e-3)
    assert total > max(r.data.metrics["privacy/epsilon"] for r in runs.values() if "privacy/epsilon" in r.data.metrics)

    # the retrained model is registered as the champion, with the search's total beside its own ε
    champion = client.get_model_version_by_alias("tuned-ct", "champion")
    assert champion.run_id == out["final_run_id"] == runs["final"].info.run_id
    assert float(champion.tags["radpriv.tune.epsilon_total"]) == pytest.approx(total, rel=1e-5)
    assert champion.tags["radpriv.tune.accounting"] == "compose"

    # the same command resumes the study: one more trial in the same storage, a new parent run,
    # and ε_total now composes 5 runs
    out2 = tune(capsys, [*args, "tune.n_trials=1", "tune.retrain_best=false"])
    assert out2["study"] == out["study"] and out2["run_id"] != out["run_id"]
    study = optuna.load_study(study_name=out["study"], storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert out2["privacy"]["runs_composed"] == 5
    assert out2["privacy"]["epsilon_total"] > total
    assert len(children(client, out2["run_id"])) == 1


@pytest.mark.slow
def test_random_search_end_to_end(tracking_uri, reports_csv, capsys, tmp_path):
    target = 6.0
    args = [*SMALL, f"data.path={reports_csv[0]}", f"privacy.epsilon={target}", "tune.accounting=random_search",
            f"tune.storage=sqlite:///{tmp_path / 'r.db'}", "tune.n_trials=2", "tune.trials_seed=1"]
    out = tune(capsys, args)
    p = out["privacy"]
    study = optuna.load_study(study_name=out["study"], storage=f"sqlite:///{tmp_path / 'r.db'}")
    k = study.user_attrs[ledger.TRIAL_COUNT_ATTR]
    assert len(study.trials) == p["private_trials"] == k >= 1
    assert p["epsilon_total"] <= target and p["epsilon_total"] >= 0.95 * target
    client = mlflow.MlflowClient(tracking_uri)
    sigma = {"trial": [], "final": []}
    for r in children(client, out["run_id"]):
        sigma[r.data.tags["radpriv.tune.role"]].append(r.data.metrics["privacy/noise_multiplier"])
    assert len(sigma["trial"]) == k and len(sigma["final"]) == 1
    assert min(sigma["trial"] + sigma["final"]) >= p["calibrated_noise_multiplier"]
    q, steps = p["sample_rate"], p["steps"]
    direct = direct_rdp(dp_accounting.ComposedDpEvent([
        RepeatAndSelectDpEvent(event(min(sigma["trial"], default=p["calibrated_noise_multiplier"]), q, steps),
                               2.0, math.inf), event(sigma["final"][0], q, steps)]), p["delta"])
    assert p["epsilon_total"] == pytest.approx(direct, rel=0.01)
    # a second retrain would spend more than the requested total: refused, one line
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", *args])
    lines = error_lines(capsys.readouterr().err)
    assert exit_info.value.code == 2 and len(lines) == 1 and "another retrain" in lines[0]


@pytest.mark.slow
def test_public_search_under_mlflow_run_spends_only_the_final_runs_epsilon(tracking_uri, reports_csv, capsys,
                                                                         tmp_path, monkeypatch):
    public = tmp_path / "public.csv"
    _write_public(reports_csv[0], public, keep=0)
    client = mlflow.MlflowClient(tracking_uri)
    outer = client.create_run(client.create_experiment("projects")).info.run_id  # what `mlflow run` opens
    monkeypatch.setenv("MLFLOW_RUN_ID", outer)
    out = tune(capsys, [*SMALL, f"data.path={reports_csv[0]}", "privacy.epsilon=2", "tune.accounting=public",
                        "tune.public_data=ct_rate_text", f"tune.public_data_path={public}", "tune.n_trials=1",
                        f"tune.storage=sqlite:///{tmp_path / 'p.db'}"])
    assert out["run_id"] == outer and os.environ["MLFLOW_RUN_ID"] == outer
    roles = {r.data.tags["radpriv.tune.role"]: r for r in children(client, outer)}
    assert set(roles) == {"trial", "final"}
    assert roles["trial"].data.params["data.path"] == str(public)
    final_eps = roles["final"].data.metrics["privacy/epsilon"]
    assert out["privacy"]["epsilon_total"] == pytest.approx(final_eps, rel=0.01)
    assert out["privacy"]["public_trials"] == 1 and out["privacy"]["runs_composed"] == 1


@pytest.mark.slow
def test_two_workers_share_one_study(tracking_uri, reports_csv, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    cmd = [sys.executable, "-m", "radpriv.cli", "tune", *SMALL, f"data.path={reports_csv[0]}", "privacy.epsilon=2",
           f"tune.storage={storage}", "tune.n_trials=2", "tune.retrain_best=false", "tune.pruning=false",
           "trainer.num_threads=1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # the tracking store exists before the workers start (two MLflow clients creating one fresh
    # sqlite store at the same instant race on its schema; the Optuna storage here is fresh)
    mlflow.MlflowClient(tracking_uri).search_experiments()
    workers = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=900)
        assert w.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="ct_rate_text-tiny_bert-lora-eps2-compose", storage=storage)
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len({t.params["lr"] for t in study.trials}) == 4  # no worker repeated another's proposal
