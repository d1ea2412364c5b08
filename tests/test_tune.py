"""`radpriv tune` (issue 4): nested runs, resumable RDB study, and the search's privacy cost."""

from __future__ import annotations

import json
import math

import mlflow
import optuna
import pytest

from radpriv.cli import main
from radpriv.privacy.accounting import default_delta, epsilon_spent
from radpriv.tune import privacy_cost
from tests.synthetic import write_fabricated_ct_csv
from tests.test_train_e2e import TINY, error_lines

SMALL = [*TINY, "trainer.max_epochs=1", "tune.pruning=false"]


def tune(capsys, overrides) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", *overrides])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err[-2000:]
    return json.loads(captured.out.strip().splitlines()[-1])


def _children(client, parent):
    exp = client.get_run(parent).info.experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")


def test_composed_search_logs_nested_runs_and_counts_every_private_run(tracking_uri, reports_csv, capsys, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [*SMALL, f"data.path={reports_csv[0]}", "privacy.epsilon=2", f"tune.storage={storage}",
            "tune.n_trials=2"]
    out = tune(capsys, args)
    client = mlflow.MlflowClient(tracking_uri)
    parent = client.get_run(out["run_id"])
    children = _children(client, out["run_id"])
    assert len(children) == 3  # two trials and the retrained best
    assert {f"best.{k}" for k in out["best_params"]} <= set(parent.data.params)
    assert parent.data.metrics["tune/best_value"] == pytest.approx(out["best_value"])
    arts = {a.path for a in client.list_artifacts(out["run_id"], "plots")}
    assert {"plots/optimization_history.png", "plots/param_importances.png"} <= arts

    # ε_total is the composition of the three private runs, each of which spent its own ε
    history = [tuple(r["mechanism"]) for r in _mechanisms(storage, out["study"])]
    assert len(history) == 3
    delta = out["privacy"]["delta"]
    total = parent.data.metrics["privacy/epsilon_total"]
    assert total == pytest.approx(epsilon_spent("prv", history, delta), rel=1e-9)
    assert total > max(epsilon_spent("prv", h, delta) for h in history)
    assert out["privacy"]["epsilon_total_pld"] == pytest.approx(total, rel=0.01)

    # the same command again resumes the study: one more trial, and ε_total now counts 5 runs
    out2 = tune(capsys, [*args[:-1], "tune.n_trials=1"])
    study = optuna.load_study(study_name=out["study"], storage=storage)
    assert len(study.trials) == 3
    assert out2["privacy"]["runs_composed"] == 5
    assert out2["privacy"]["epsilon_total"] > total


def _mechanisms(storage, name):
    study = optuna.load_study(study_name=name, storage=storage)
    trials = [{"mechanism": t.user_attrs["mechanism"]} for t in study.trials]
    return trials + [{"mechanism": m} for m in study.user_attrs["radpriv.final_runs"]]


def test_random_search_calibrates_each_trial_so_the_total_meets_epsilon(tracking_uri, reports_csv, capsys, tmp_path):
    target = 4.0
    out = tune(capsys, [*SMALL, f"data.path={reports_csv[0]}", f"privacy.epsilon={target}",
                        f"tune.storage=sqlite:///{tmp_path / 'o.db'}", "tune.accounting=random_search",
                        "tune.n_trials=2", "tune.seed=3"])
    p = out["privacy"]
    assert p["trials"] == p["trials_drawn"] >= 1
    # recompute the total directly with dp-accounting's repeat-and-select event
    n_train = 42  # the fabricated CSV's training split (tests/synthetic.py, seed 42 split)
    q, steps = privacy_cost.trial_rate_and_steps(n_train, 8, 1)
    mech = privacy_cost.Mechanism(p["noise_multiplier"], q, steps)
    direct = privacy_cost.repeat_and_select_epsilon(mech, default_delta(n_train), 2.0, math.inf, mech)
    assert p["epsilon_total"] == pytest.approx(direct, rel=1e-9)
    assert 0.95 * target <= p["epsilon_total"] <= target
    # every trial trained with at least the calibrated σ
    client = mlflow.MlflowClient(tracking_uri)
    for run in _children(client, out["run_id"]):
        assert run.data.metrics["privacy/noise_multiplier"] >= p["noise_multiplier"] * (1 - 1e-9)


def test_public_search_spends_only_the_final_runs_epsilon(tracking_uri, reports_csv, capsys, tmp_path):
    public = tmp_path / "public.csv"
    write_fabricated_ct_csv(public, seed=7)
    base = [*SMALL, f"data.path={reports_csv[0]}", "privacy.epsilon=2", f"tune.storage=sqlite:///{tmp_path / 'p.db'}",
            "tune.accounting=public", "tune.public_data=ct_rate_text", "tune.n_trials=1"]
    out = tune(capsys, [*base, f"tune.public_data_path={public}"])
    final = mlflow.MlflowClient(tracking_uri).get_run(out["final_run_id"])
    assert out["privacy"]["epsilon_total"] == pytest.approx(final.data.metrics["privacy/epsilon"], rel=1e-6)

    with pytest.raises(SystemExit) as exit_info:  # the "public" data is the private data
        main(["tune", *base, f"tune.public_data_path={reports_csv[0]}"])
    assert exit_info.value.code == 2
    assert "same reports" in error_lines(capsys.readouterr().err)[0]


@pytest.mark.parametrize("extra, message", [
    ("tune.accounting=guess", "tune.accounting"),
    ("tune.n_trials=0", "at least 1 trial"),
    ("tune.storage=nosuchdb://x", "cannot be opened"),
    ("tune.space.lr=[0.1,0.01]", "low < high"),
    ("tune.accounting=random_search tune.space.expected_batch_size=[8,16]", "same mechanism"),
    ("tune.accounting=public", "tune.public_data"),
])
def test_bad_tune_settings_are_one_line_errors(tracking_uri, reports_csv, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", *SMALL, f"data.path={reports_csv[0]}", *extra.split()])
    lines = error_lines(capsys.readouterr().err)
    assert exit_info.value.code == 2 and len(lines) == 1 and message in lines[0], lines
