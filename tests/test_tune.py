"""`radpriv tune`: nested runs, a resumable RDB study, and the search's privacy cost.

The accounting is checked against dp_accounting and radpriv.privacy.replace_one_rdp computed
here, independently of radpriv/tune's own composition; the end-to-end tests train tiny random
encoders on fabricated reports.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import optuna
import pytest
from dp_accounting.rdp.rdp_privacy_accountant import _compute_rdp_repeat_and_select, compute_epsilon
from omegaconf import OmegaConf

from radpriv.cli import main, run
from radpriv.config import compose
from radpriv.errors import ConfigError, PrivacyError
from radpriv.privacy import replace_one_rdp
from radpriv.privacy.accounting import RDP_ORDERS, calibrate_noise_multiplier, default_delta, epsilon_spent
from radpriv.tune import ledger, privacy_cost, privacy_filter, study_record
from radpriv.tune.privacy_cost import Mechanism
from radpriv.tune.sampling import TrialSeededRandomSampler
from tests.helpers.cli import TINY, error_lines
from tests.synthetic import PATIENT_CSV, write_patient_csv

SMALL = [*TINY, "trainer.max_epochs=1"]
REPO = Path(__file__).resolve().parents[1]
ORDERS = list(RDP_ORDERS)


def tune(capsys, overrides) -> dict:
    assert run(["tune", *overrides]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def children(client, parent_id):
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}'")


def run_rdp(mech, orders):
    """A run's replace-one RDP, composed here from the per-step values."""
    sigma, q, steps = mech
    return steps * replace_one_rdp.rdp(q, sigma, orders)


def planned_search(args):
    """What `radpriv tune` plans for these overrides (N, δ, the recipe's run): data-independent."""
    from radpriv.tune.study import prepare

    cfg = compose(["+tune=default", *args])
    return prepare(cfg, args)


def budget_for(args, runs: float) -> float:
    """The ε at which `runs` of the planned run fit the filter (e.g. 3.5: two trials, the retrain
    and half a run to spare)."""
    search = planned_search(args)
    return privacy_filter.planned_budget(search.planned, runs, search.delta)[0]


def study_with(record: dict, storage: str | None = None, name: str = "s"):
    study = optuna.create_study(study_name=name, storage=storage)
    study.set_user_attr(ledger.STUDY_ATTR, record)
    return study


def claim(study, kind, ident, mech, state=ledger.ADMITTED, cost=None):
    ledger.write_claim(study, ledger.claim_key(kind, ident),
                       ledger.claim_record(kind, None if mech is None else Mechanism(*mech), None, cost), state)


def secrets_absent_from_mlflow(client, run_ids, secret) -> bool:
    for run_id in run_ids:
        data = client.get_run(run_id).data
        if any(str(secret) in str(v) for v in [*data.params.values(), *data.tags.values()]):
            return False
    return True


# --------------------------------------------------------------------------------------------
# accounting (no training)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target, mean, shape", [(1.0, 8, math.inf), (4.0, 3, 1.0), (1.0, 10, 0.5)])
def test_random_search_total_is_replace_one_repeat_and_select_and_meets_the_target(target, mean, shape):
    n = 2700
    q, steps = privacy_cost.trial_rate_and_steps(n, 64, 2)
    delta = default_delta(n)
    sigma = privacy_cost.calibrate_search_noise(target, delta, q, steps, mean, shape, n_finals=1)
    plan = {"noise_multiplier": sigma, "sample_rate": q, "steps": steps, "mean": mean, "shape": shape,
            "target_epsilon": target}
    record = {"accounting": "random_search", "adjacency": "replace_one", "delta": delta, "random_search": plan,
              "public_randomness": None}
    # each run is calibrated by train (replace-one) to the ε a σ just above spends alone: σ' ≥ σ
    per_run = epsilon_spent("prv", (sigma * (1 + privacy_cost.RUN_SIGMA_MARGIN), q, steps), delta,
                            relation="replace_one")
    sigma_run = float(calibrate_noise_multiplier(per_run, delta, q, steps, accountant="prv", relation="replace_one"))
    assert sigma_run >= sigma
    study = study_with(record)
    for i in range(3):
        claim(study, "trial", i, (sigma_run, q, steps))
    claim(study, "retrain", "p", (sigma_run, q, steps))
    got = ledger.search_privacy(study, record)

    def direct(s):
        one = run_rdp((s, q, steps), ORDERS)
        total = np.asarray(_compute_rdp_repeat_and_select(ORDERS, one, mean, shape)) + one
        return compute_epsilon(ORDERS, total, delta)[0]

    assert got["epsilon_total"] == pytest.approx(direct(sigma_run), rel=1e-9)
    assert 0.97 * target <= got["epsilon_total"] <= target
    assert (1 - privacy_cost.CALIBRATION_REL_TOL) * target <= direct(sigma) <= target
    # a trial with less noise than the calibration voids the analysis: refused by the ledger
    claim(study, "trial", 3, (0.9 * sigma, q, steps))
    with pytest.raises(PrivacyError, match="calibrated"):
        ledger.search_privacy(study, record)


def test_a_random_search_with_a_known_seed_claims_no_epsilon():
    q, steps, delta = 0.05, 40, 1e-4
    plan = {"noise_multiplier": 3.0, "sample_rate": q, "steps": steps, "mean": 4.0, "shape": math.inf,
            "target_epsilon": 2.0}
    record = {"accounting": "random_search", "adjacency": "replace_one", "delta": delta, "random_search": plan,
              "public_randomness": "tune.trials_seed"}
    study = study_with(record)
    claim(study, "trial", 0, (3.0, q, steps))
    got = ledger.search_privacy(study, record)
    assert math.isinf(got["epsilon_total"]) and got["guarantee"].startswith("none: tune.trials_seed")
    assert 0 < got["epsilon_if_secret"] < math.inf


def _search(mode: str, seed=None, trials_seed=None, budget=None):
    """The few fields of a Search that study_record.new_record reads."""
    cfg = OmegaConf.create({"tune": {"seed": seed, "trials_seed": trials_seed, "n_trials": 4, "shape": math.inf}})
    plan = {"noise_multiplier": 3.0, "sample_rate": 0.1, "steps": 20, "delta": 1e-4, "mean": 4.0,
            "shape": math.inf, "target_epsilon": 2.0}
    return SimpleNamespace(cfg=cfg, mode=mode, delta=1e-4, n_private=1000, unit="report", epsilon=2.0, budget=budget,
                           random_search=plan if mode == "random_search" else None,
                           planned=Mechanism(3.0, 0.1, 20))


def test_a_new_studys_secrets_come_from_fresh_entropy_and_a_known_seed_is_recorded():
    a, b = study_record.new_record(_search("random_search")), study_record.new_record(_search("random_search"))
    assert a["proposal_seed"] != b["proposal_seed"]  # a fresh secret per study
    assert a["public_randomness"] is None and a["trial_count"] >= 0
    seeded = study_record.new_record(_search("random_search", seed=3, trials_seed=1))
    assert seeded["proposal_seed"] == 3 and seeded["public_randomness"] == "tune.seed and tune.trials_seed"
    again = study_record.new_record(_search("random_search", seed=3, trials_seed=1))
    assert again["trial_count"] == seeded["trial_count"]  # reproducible: which is why it claims nothing
    # compose: the filter is fixed here, before the study exists; a known seed costs nothing there
    composed = study_record.new_record(_search("compose", seed=3))
    assert composed["public_randomness"] is None and composed["filter"]["source"].startswith("planned: 4 trials")


def test_the_filter_budget_order_and_conversion():
    n = 2609
    q, steps = privacy_cost.trial_rate_and_steps(n, 256, 8)
    delta = default_delta(n)
    mech = Mechanism(5.0, q, steps)
    orders = [a for a in ORDERS if a > 1.01]
    rho = run_rdp((5.0, q, steps), orders)
    planned = privacy_filter.create(None, delta, mech, 8, reserve_retrain=True)
    one = float(run_rdp((5.0, q, steps), [planned.order])[0])
    # the default budget: the cheapest ε at which 8 trials + 1 retrain fit at some order (that order is α)
    assert planned.budget_epsilon == pytest.approx(min(compute_epsilon([a], [9 * r], delta)[0]
                                                       for a, r in zip(orders, rho)), rel=1e-8)
    assert 9 * one <= planned.rdp_budget <= 9 * one * (1 + 1e-6)
    # B(α) converts back to the budget with dp_accounting's own RDP → (ε, δ) conversion
    assert compute_epsilon([planned.order], [planned.rdp_budget], delta)[0] == pytest.approx(
        planned.budget_epsilon, rel=1e-12)
    assert privacy_filter.fits(planned, [one] * 8, [], candidate_is_trial=True)  # 8 trials + room for the retrain
    assert not privacy_filter.fits(planned, [one] * 9, [], candidate_is_trial=True)
    assert privacy_filter.fits(planned, [one] * 8, [one], candidate_is_trial=False)  # the retrain takes the room
    assert not privacy_filter.fits(planned, [one] * 8, [one, one], candidate_is_trial=False)
    assert not privacy_filter.fits(planned, [math.inf], [], candidate_is_trial=True)  # a run without DP
    # an explicit budget: α is the order that admits the most planned runs
    chosen = privacy_filter.create(5.0, delta, mech, 8, reserve_retrain=True)
    most = max(math.floor(privacy_filter.rdp_budget(5.0, delta, a) / r) for a, r in zip(orders, rho))
    assert chosen.planned_runs_fit == most and chosen.budget_epsilon == 5.0
    with pytest.raises(ConfigError, match="cannot pay for one trial and the retrain"):
        privacy_filter.create(0.05, delta, mech, 8, reserve_retrain=True)


def _steps(who):
    return [(who, "pending"), (who, "verify"), (who, "settle")]


def _interleavings():
    for slots in itertools.combinations(range(6), 3):  # where A's three steps go among six
        a, b = iter(_steps("A")), iter(_steps("B"))
        yield [next(a) if i in slots else next(b) for i in range(6)]


@pytest.mark.parametrize("order", list(_interleavings()))
def test_two_interleaved_claimers_never_admit_beyond_the_budget(tmp_path, order):
    """Record-then-verify on one sqlite storage, two handles (two workers): room for one more run
    of cost 1.5 (B = 3, 1 admitted), two claim it, in every interleaving of their steps."""
    storage = f"sqlite:///{tmp_path / 'ledger.db'}"
    flt = privacy_filter.Filter(budget_epsilon=1.0, delta=1e-5, order=8.0, rdp_budget=3.0, reserve_retrain=False,
                                source="test", planned_mechanism=[1.0, 0.1, 10], planned_rdp=1.5, planned_runs_fit=2)
    first = study_with({"accounting": "public"}, storage)
    second = optuna.load_study(study_name="s", storage=storage)
    claim(first, "retrain", "old", (1.0, 0.1, 10), cost=1.0)
    handles = {"A": first, "B": second}
    records = {w: ledger.claim_record("retrain", Mechanism(1.0, 0.1, 10), None, 1.5) for w in handles}
    rule = ledger.filter_rule(flt, "retrain")
    decided = {}
    for who, step in order:
        key = ledger.claim_key("retrain", who)
        if step == "pending":
            ledger.write_claim(handles[who], key, records[who], ledger.PENDING)
        elif step == "verify":
            decided[who] = ledger.verify(handles[who], key, rule)[0]
        else:
            ledger.write_claim(handles[who], key, records[who], ledger.ADMITTED if decided[who] else ledger.WITHDRAWN)
    admitted = [c for c in ledger.claims(first) if c.state == ledger.ADMITTED]
    assert math.fsum(c.cost for c in admitted) <= flt.rdp_budget
    if order[:3] == _steps("A") or order[:3] == _steps("B"):  # one after the other: exactly one fits
        assert len(admitted) == 2


def test_a_claim_left_pending_by_a_dead_worker_counts_as_spent():
    flt = privacy_filter.Filter(budget_epsilon=1.0, delta=1e-5, order=8.0, rdp_budget=3.0, reserve_retrain=False,
                                source="test", planned_mechanism=[1.0, 0.1, 10], planned_rdp=1.5, planned_runs_fit=2)
    study = study_with({"accounting": "public"})
    claim(study, "retrain", "old", (1.0, 0.1, 10), cost=1.0)
    record = ledger.claim_record("retrain", Mechanism(1.0, 0.1, 10), None, 1.5)
    rule = ledger.filter_rule(flt, "retrain")
    ledger.write_claim(study, ledger.claim_key("retrain", "dead"), record, ledger.PENDING)
    assert not ledger.admit(study, ledger.claim_key("retrain", "late"), record, rule, pause_s=0.0)
    ledger.write_claim(study, ledger.claim_key("retrain", "dead"), record, ledger.WITHDRAWN)  # (had it withdrawn)
    assert ledger.admit(study, ledger.claim_key("retrain", "late"), record, rule, pause_s=0.0)


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
    other = optuna.create_study(sampler=TrialSeededRandomSampler()).ask()  # no seed: a fresh secret one
    assert other.suggest_float("lr", 1e-3, 1e-1, log=True) != x0


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
    ("tune.budget=-1", "tune.budget=-1"),
    ("tune.budget=lots", "not a number"),
    ("tune.accounting=random_search tune.budget=3", "leave tune.budget=null"),
    ("privacy.epsilon=null tune.budget=3", "privacy.epsilon=null"),
    ("privacy.epsilon=2 tune.budget=0.01", "cannot pay for one trial and the retrain"),
    ("tune.seed=abc", "tune.seed='abc'"),
    ("tune.models=[tiny_bert,tiny_bert]", "listed twice"),
    ("tune.models=[tiny_bert,gpt5]", "unknown model 'gpt5'"),
    ("tune.models=[]", "searches no model"),
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


def _study(out, storage):
    study = optuna.load_study(study_name=out["study"], storage=storage)
    return study, study.user_attrs[ledger.STUDY_ATTR]


def _live_costs(study, flt):
    """Each live claim's ρ(α), recomputed here from its mechanism."""
    live = [c for c in ledger.claims(study) if c.live]
    return [float(run_rdp(c.mechanism.as_list(), [flt["order"]])[0]) for c in live]


@pytest.mark.integration
def test_composed_search_end_to_end_then_resumed(tracking_uri, reports_csv, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("radpriv.tune.sampling.make_pruner", lambda *a: _PruneTrialOne())
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [*SMALL, f"data.path={reports_csv[0]}", "privacy.epsilon=2", f"tune.storage={storage}"]
    budget = budget_for(args, 6.5)  # 3 trials + retrain now, one more trial (+ the retrain's room) later
    args.append(f"tune.budget={budget!r}")
    out = tune(capsys, [*args, "tune.n_trials=3", "tune.register=tuned-ct"])
    client = mlflow.MlflowClient(tracking_uri)
    parent = client.get_run(out["run_id"])
    assert parent.data.tags["radpriv.tune.role"] == "parent" and parent.info.status == "FINISHED"
    runs = {r.data.tags["radpriv.tune.role"] + r.data.tags.get("radpriv.tune.trial", ""): r
            for r in children(client, out["run_id"])}
    assert set(runs) == {"trial0", "trial1", "trial2", "final"}
    assert runs["trial1"].data.tags.get("radpriv.tune.pruned") == "true" and runs["trial1"].info.status == "KILLED"
    assert all(runs[k].data.tags["radpriv.tune.study"] == out["study"] for k in runs)
    # one split (the study's seed), but each trial its own initialisation
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

    # ε_total is the filter's budget; every run (the pruned trial with its planned steps) claimed
    # its replace-one RDP at α before its first batch, and together they fit B(α)
    study, record = _study(out, storage)
    flt = record["filter"]
    assert flt["budget_epsilon"] == pytest.approx(budget, rel=1e-12) and flt["source"] == "tune.budget"
    assert parent.data.metrics["privacy/epsilon_total"] == pytest.approx(budget, rel=1e-9)
    live = [c for c in ledger.claims(study) if c.live]
    assert sorted(c.key for c in live) == sorted([*(ledger.claim_key("trial", i) for i in range(3)),
                                                  ledger.claim_key("retrain", out["run_id"])])
    costs = _live_costs(study, flt)
    assert [c.cost for c in live] == pytest.approx(costs, rel=1e-12)
    assert math.fsum(costs) <= flt["rdp_budget"]
    assert parent.data.metrics["privacy/budget_used"] == pytest.approx(math.fsum(costs) / flt["rdp_budget"])
    assert parent.data.tags["radpriv.tune.guarantee"].startswith("every run that trained on the private data")
    # trial 0 is the recipe itself (tune.enqueue_recipe): the study holds default vs tuned
    recipe = compose(["+tune=default", *args])
    assert study.trials[0].params == pytest.approx({"lr": recipe.finetune.lr,
                                                    "max_grad_norm": recipe.privacy.max_grad_norm})
    assert study.trials[0].user_attrs.get("radpriv.recipe") is True
    assert not study.trials[2].user_attrs.get("radpriv.recipe") and study.trials[2].params != study.trials[0].params
    by_key = {c.key: c.mechanism for c in live}
    for key, claimed in [("trial0", ledger.claim_key("trial", 0)),
                         ("final", ledger.claim_key("retrain", out["run_id"]))]:
        m = runs[key].data.metrics
        assert (m["privacy/noise_multiplier"], m["privacy/sample_rate"], m["privacy/steps"]) == \
            pytest.approx(by_key[claimed].as_list())
    # the proposals' seed is a secret of the study storage: in no MLflow param or tag
    assert record["seeds"]["seed"] is None
    assert secrets_absent_from_mlflow(client, [out["run_id"], *(r.info.run_id for r in runs.values())],
                                      record["proposal_seed"])

    # the retrained model is registered as the champion, with the search's total beside its own ε
    champion = client.get_model_version_by_alias("tuned-ct", "champion")
    assert champion.run_id == out["final_run_id"] == runs["final"].info.run_id
    assert float(champion.tags["radpriv.tune.epsilon_total"]) == pytest.approx(budget, rel=1e-5)
    assert champion.tags["radpriv.tune.accounting"] == "compose"

    # the same command resumes the study: one more trial in the same storage, a new parent run,
    # under the same budget (tune.budget=null: the stored one)
    out2 = tune(capsys, [*args[:-1], "tune.n_trials=1", "tune.retrain_best=false"])
    assert out2["study"] == out["study"] and out2["run_id"] != out["run_id"]
    study, _ = _study(out, storage)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert out2["privacy"]["private_trials"] == 4 and out2["privacy"]["epsilon_total"] == pytest.approx(budget)
    assert out2["privacy"]["filter"]["budget_used"] > out["privacy"]["filter"]["budget_used"]
    assert math.fsum(_live_costs(study, flt)) <= flt["rdp_budget"]
    assert len(children(client, out2["run_id"])) == 1


@pytest.mark.integration
def test_a_composed_search_stops_at_its_budget(tracking_uri, reports_csv, capsys, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [*SMALL, f"data.path={reports_csv[0]}", "privacy.epsilon=2", f"tune.storage={storage}",
            "tune.n_trials=5", "tune.pruning=false"]
    budget = budget_for(args, 3.5)  # two trials and the retrain fit; a third trial + the retrain's room do not
    args.append(f"tune.budget={budget!r}")
    out = tune(capsys, args)
    client = mlflow.MlflowClient(tracking_uri)
    study, record = _study(out, storage)
    flt = record["filter"]
    states = {c.key: c.state for c in ledger.claims(study)}
    assert states == {ledger.claim_key("trial", 0): "admitted", ledger.claim_key("trial", 1): "admitted",
                      ledger.claim_key("trial", 2): "withdrawn", ledger.claim_key("retrain", out["run_id"]): "admitted"}
    assert [t.number for t in study.trials] == [0, 1, 2]  # the study stopped at the refusal
    assert "refused" in study.trials[2].user_attrs and "refused" not in study.trials[1].user_attrs
    runs = {r.data.tags["radpriv.tune.role"] + r.data.tags.get("radpriv.tune.trial", ""): r
            for r in children(client, out["run_id"])}
    refused = runs["trial2"]
    assert refused.data.tags["radpriv.tune.refused"] == "true" and refused.info.status == "KILLED"
    assert not any(k.startswith(("privacy/", "val/", "train/")) for k in refused.data.metrics)  # never trained
    assert all("val/f1_weighted" in runs[k].data.metrics for k in ("trial0", "trial1", "final"))
    parent = client.get_run(out["run_id"])
    assert parent.data.metrics["tune/trials_refused"] == 1 and "trial 2" in parent.data.tags["radpriv.tune.refused"]
    assert out["status"].startswith("budget exhausted") and out["final_run_id"]
    assert math.fsum(_live_costs(study, flt)) <= flt["rdp_budget"]
    assert parent.data.metrics["privacy/epsilon_total"] == pytest.approx(budget)

    # another invocation trains nothing: its first trial and then its retrain are refused
    out2 = tune(capsys, args)
    study, _ = _study(out, storage)
    assert [c.state for c in ledger.claims(study) if c.key == ledger.claim_key("trial", 3)] == ["withdrawn"]
    assert sum(c.live for c in ledger.claims(study)) == 3 and out2["final_run_id"] is None
    assert out2["status"].startswith("retrain refused")
    assert [r.data.tags.get("radpriv.tune.refused") for r in children(client, out2["run_id"])] == ["true"]
    assert math.fsum(_live_costs(study, flt)) <= flt["rdp_budget"]
    # the budget was fixed when the study was created: another one is refused, one line
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", *args[:-1], f"tune.budget={2 * budget!r}"])
    lines = error_lines(capsys.readouterr().err)
    assert exit_info.value.code == 2 and len(lines) == 1 and "tune.budget" in lines[0], lines


@pytest.mark.integration
def test_a_search_across_two_models_keeps_one_ledger_and_registers_the_winner(tracking_uri, reports_csv, capsys,
                                                                             tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # bert_small is not in this machine's HF cache: skipped
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [*SMALL, f"data.path={reports_csv[0]}", "privacy.epsilon=2", f"tune.storage={storage}", "model=minilm",
            "tune.models=[tiny_bert,bert_small,tiny_albert]", "tune.n_trials=4", "tune.pruning=false",
            "tune.register=multi"]
    assert run(["tune", *args]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    skipped = [ln for ln in captured.err.splitlines() if "bert_small" in ln and "skipped" in ln]
    assert len(skipped) == 1 and "not available here" in skipped[0], skipped
    assert out["study"] == "ct_rate_text-tiny_bert+tiny_albert-lora-eps2-compose"
    client = mlflow.MlflowClient(tracking_uri)
    parent = client.get_run(out["run_id"])
    assert parent.data.tags["radpriv.tune.models"] == "tiny_bert,tiny_albert"
    assert parent.data.tags["radpriv.tune.skipped_models"] == "bert_small"
    study, record = _study(out, storage)
    # the model is a dimension of the one study; each model's first trial is the recipe
    assert [t.params["model"] for t in study.trials[:2]] == ["tiny_bert", "tiny_albert"]
    assert all(t.user_attrs.get("radpriv.recipe") for t in study.trials[:2])
    runs = {r.data.tags["radpriv.tune.role"] + r.data.tags.get("radpriv.tune.trial", ""): r
            for r in children(client, out["run_id"])}
    assert set(runs) == {"trial0", "trial1", "trial2", "trial3", "final"}
    for t in study.trials:  # each trial's run trained the model it was given, and says so
        trial_run = runs[f"trial{t.number}"]
        assert trial_run.data.tags["radpriv.tune.model"] == trial_run.data.params["model.name"] == t.params["model"]
    trained = {t.params["model"] for t in study.trials}
    assert trained == {"tiny_bert", "tiny_albert"}

    # one ledger: every trial of both models and the retrain claimed its replace-one RDP there,
    # and together they fit the filter, whose budget is ε_total
    flt = record["filter"]
    live = [c for c in ledger.claims(study) if c.live]
    assert sorted(c.key for c in live) == sorted([*(ledger.claim_key("trial", i) for i in range(4)),
                                                  ledger.claim_key("retrain", out["run_id"])])
    costs = _live_costs(study, flt)
    assert [c.cost for c in live] == pytest.approx(costs, rel=1e-12) and math.fsum(costs) <= flt["rdp_budget"]
    # dp_accounting's RDP → (ε, δ) conversion of the composed runs stays within ε_total
    composed = compute_epsilon([flt["order"]], [math.fsum(costs)], record["delta"])[0]
    assert composed <= parent.data.metrics["privacy/epsilon_total"] == pytest.approx(flt["budget_epsilon"])
    for claimed in live:  # the ledger's mechanism is the one each run logged
        key = "final" if claimed.kind == "retrain" else f"trial{claimed.key.rsplit('.', 1)[-1]}"
        m = runs[key].data.metrics
        assert (m["privacy/noise_multiplier"], m["privacy/sample_rate"], m["privacy/steps"]) == \
            pytest.approx(claimed.mechanism.as_list())

    # the winner (model, lr, C) is retrained, registered as the champion, and compared per model
    best = max((t for t in study.trials if t.value is not None), key=lambda t: t.value)
    assert out["best_params"] == best.params and parent.data.params["best.model"] == best.params["model"]
    final = runs["final"]
    assert final.data.params["model.name"] == final.data.tags["radpriv.tune.model"] == best.params["model"]
    assert float(final.data.params["finetune.lr"]) == pytest.approx(best.params["lr"])
    champion = client.get_model_version_by_alias("multi", "champion")
    assert champion.run_id == out["final_run_id"] == final.info.run_id
    arts = {a.path for a in client.list_artifacts(out["run_id"])}
    assert {"model_comparison.csv", "model_comparison.png", "trials.csv", "tune_privacy.json"} <= arts
    table = list(csv.DictReader(open(client.download_artifacts(out["run_id"], "model_comparison.csv",
                                                               str(tmp_path)))))
    assert [row["model"] for row in table] == ["tiny_bert", "tiny_albert"]
    for row in table:
        mine = [t for t in study.trials if t.params["model"] == row["model"]]
        top = max(mine, key=lambda t: t.value)
        assert int(row["trials"]) == len(mine) and int(row["best_trial"]) == top.number
        assert float(row["val_f1_weighted"]) == pytest.approx(top.value)
        top_run = runs[f"trial{top.number}"].data.metrics
        assert float(row["test_f1_weighted"]) == pytest.approx(top_run["test/f1_weighted"])
        assert float(row["epsilon_run"]) == pytest.approx(top_run["privacy/epsilon"])
        assert parent.data.metrics[f"compare/{row['model']}/best_val_f1_weighted"] == pytest.approx(top.value)


def test_a_search_across_models_with_none_available_is_one_line(tracking_uri, reports_csv, capsys, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", *SMALL, f"data.path={reports_csv[0]}", f"tune.storage=sqlite:///{tmp_path / 'o.db'}",
              "tune.models=[bert_small,bert_medium]"])
    lines = error_lines(capsys.readouterr().err)
    assert exit_info.value.code == 2 and lines[-1].count("none of the models") == 1, lines


@pytest.mark.slow
def test_random_search_end_to_end(tracking_uri, reports_csv, capsys, tmp_path):
    target = 6.0
    storage = f"sqlite:///{tmp_path / 'r.db'}"
    args = [*SMALL, f"data.path={reports_csv[0]}", f"privacy.epsilon={target}", "tune.accounting=random_search",
            f"tune.storage={storage}", "tune.n_trials=2", "tune.trials_seed=1"]
    out = tune(capsys, args)
    p = out["privacy"]
    study, record = _study(out, storage)
    k = record["trial_count"]
    assert len(study.trials) == p["private_trials"] == k >= 1
    # a known seed (here K's) claims no ε; the total the search would have with secret ones is still kept
    assert p["epsilon_total"] == "inf" and p["guarantee"].startswith("none: tune.trials_seed")
    assert 0.95 * target <= p["epsilon_if_secret"] <= target
    client = mlflow.MlflowClient(tracking_uri)
    parent = client.get_run(out["run_id"])
    assert "privacy/epsilon_total" not in parent.data.metrics
    assert parent.data.tags["radpriv.tune.guarantee"].startswith("none:")
    sigma = {"trial": [], "final": []}
    for r in children(client, out["run_id"]):
        sigma[r.data.tags["radpriv.tune.role"]].append(r.data.metrics["privacy/noise_multiplier"])
    assert len(sigma["trial"]) == k and len(sigma["final"]) == 1
    assert min(sigma["trial"] + sigma["final"]) >= p["calibrated_noise_multiplier"]
    q, steps = p["sample_rate"], p["steps"]
    one = run_rdp((min(sigma["trial"]), q, steps), ORDERS)
    total = np.asarray(_compute_rdp_repeat_and_select(ORDERS, one, 2.0, math.inf)) + \
        run_rdp((sigma["final"][0], q, steps), ORDERS)
    assert p["epsilon_if_secret"] == pytest.approx(compute_epsilon(ORDERS, total, p["delta"])[0], rel=1e-9)
    # a second retrain would spend more than the requested total: refused, logged, nothing trains
    out2 = tune(capsys, args)
    assert out2["final_run_id"] is None and out2["status"].startswith("retrain refused")
    assert not children(client, out2["run_id"])


@pytest.mark.slow
def test_public_search_under_mlflow_run_spends_only_the_retrains_budget(tracking_uri, reports_csv, capsys,
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
    # the default budget is one retrain's, under the filter (RDP at α, converted): at least its own ε
    final_eps = roles["final"].data.metrics["privacy/epsilon"]
    p = out["privacy"]
    assert p["filter"]["source"] == "planned: one retrain" and final_eps <= p["epsilon_total"] < 1.6 * final_eps
    assert p["public_trials"] == 1 and p["private_final_runs"] == 1 and p["filter"]["budget_remaining"] < 1e-6


@pytest.mark.slow
def test_two_workers_share_one_study(tracking_uri, reports_csv, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    cmd = [sys.executable, "-m", "radpriv.cli", "tune", *SMALL, f"data.path={reports_csv[0]}", "privacy.epsilon=2",
           f"tune.storage={storage}", "tune.n_trials=2", "tune.retrain_best=false", "tune.pruning=false",
           "tune.budget=100", "trainer.num_threads=1"]
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
    assert [c.state for c in ledger.claims(study)] == ["admitted"] * 4


# --------------------------------------------------------------------------------------------
# the patient unit: the search plans per patient, as each run's own calibration counts
# --------------------------------------------------------------------------------------------

# tiny runs on fabricated patients holding 1–6 reports; a step takes up to 6 reports of a patient
PATIENTS = ["model=tiny_bert", "data.max_length=32", "trainer.max_epochs=1", "trainer.progress_bar=false",
            "privacy.expected_batch_size=4", "privacy.max_physical_batch_size=8",
            "privacy.max_reports_per_patient=6", "trainer.eval_batch_size=32", "tracking.log_model=false",
            "trainer.num_threads=1", *PATIENT_CSV]


@pytest.fixture
def patient_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("patients") / "patients.csv"
    write_patient_csv(path, n_patients=40, seed=0)
    return path


def _train_split(args):
    """(training patients, training reports) of the data these overrides name, counted here."""
    from radpriv.data.sources import load_table

    cfg = compose(["+tune=default", *args])
    table = load_table(cfg.data, int(cfg.seed))
    rows = [i for i, s in enumerate(table.split) if s == "train"]
    return len({table.patient_ids[i] for i in rows}), len(rows)


@pytest.mark.integration
def test_the_search_plans_per_patient_where_training_does(patient_csv):
    args = [*PATIENTS, f"data.path={patient_csv}", "privacy.epsilon=2"]
    patients, reports = _train_split(args)
    assert patients < reports  # patients with several reports: the two Ns differ
    b, epochs = 4, 1
    for mode in ("compose", "random_search"):
        search = planned_search([*args, f"tune.accounting={mode}", "tune.n_trials=2"])
        assert (search.unit, search.n_private) == ("patient", patients)
        assert search.delta == pytest.approx(default_delta(patients), rel=1e-12)
        q, steps = b / patients, epochs * math.ceil(patients / b)
        assert (search.planned.sample_rate, search.planned.steps) == (q, steps)
        if mode == "random_search":
            assert (search.random_search["sample_rate"], search.random_search["steps"]) == (q, steps)
    # the report unit asked for on the same data: N counts reports again
    as_report = planned_search([*args, "privacy.unit=report"])
    assert (as_report.unit, as_report.n_private) == ("report", reports)
    assert as_report.planned.sample_rate == b / reports


def test_a_study_keeps_the_unit_it_was_created_with(patient_csv):
    args = [*PATIENTS, f"data.path={patient_csv}", "privacy.epsilon=2", "tune.n_trials=2"]
    search = planned_search(args)
    record = study_record.new_record(search)
    assert record["unit"] == "patient" and record["n_private"] == search.n_private
    study = study_with(record)
    study_record.check_record(study, record, search)  # the same settings: accepted
    with pytest.raises(ConfigError, match=r"privacy.unit \(resolved\)=patient, this command gives report"):
        study_record.check_record(study, record, planned_search([*args, "privacy.unit=report"]))
    # a record from before the patient unit is a report-unit study
    old = {k: v for k, v in record.items() if k != "unit"}
    assert ledger.record_unit(old) == "report"
    assert ledger.search_privacy(study_with(old, name="o"), old)["unit"] == "report"


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["random_search", "compose"])
def test_a_search_at_the_patient_unit_runs_the_mechanism_it_planned(tracking_uri, patient_csv, capsys, tmp_path, mode):
    """The trials' own calibration (radpriv.train) counts patients; the search's plan must too, or a
    random search's trials are refused as another mechanism and the filter plans another run."""
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    extra = (["tune.accounting=random_search", "privacy.epsilon=8", "tune.shape=1"] if mode == "random_search"
             else ["privacy.epsilon=4", "tune.retrain_best=false", "tune.pruning=false"])
    args = [*PATIENTS, f"data.path={patient_csv}", f"tune.storage={storage}", "tune.n_trials=1", *extra]
    patients, _ = _train_split(args)
    search = planned_search(args)
    out = tune(capsys, args)  # K = 1: a truncated geometric with mean 1
    study, record = _study(out, storage)
    assert record["unit"] == "patient" and out["privacy"]["unit"] == "patient"
    assert "each patient of the private training split" in out["privacy"]["guarantee"]
    client = mlflow.MlflowClient(tracking_uri)
    assert client.get_run(out["run_id"]).data.tags["radpriv.unit"] == "patient"
    runs = children(client, out["run_id"])
    assert len(runs) == (2 if mode == "random_search" else 1)  # (the retrain), the trial
    for child in runs:
        m = child.data.metrics
        assert (m["privacy/sample_rate"], int(m["privacy/steps"])) == (search.planned.sample_rate, search.planned.steps)
        assert m["privacy/delta"] == pytest.approx(search.delta, rel=1e-12)
        assert child.data.tags["radpriv.unit"] == "patient"
        facts = json.loads(Path(mlflow.artifacts.download_artifacts(
            run_id=child.info.run_id, artifact_path="privacy.json",
            dst_path=str(tmp_path / child.info.run_id))).read_text())
        assert facts["unit"] == "patient" and facts["n_train_patients"] == patients == search.n_private
    (trial_claim,) = [c for c in ledger.claims(study) if c.kind == "trial"]
    assert trial_claim.state == ledger.ADMITTED
    if mode == "random_search":
        planned = (search.planned.sample_rate, search.planned.steps)
        assert (out["privacy"]["sample_rate"], out["privacy"]["steps"]) == planned
    else:  # the recipe's trial is the filter's planned run, σ included
        assert trial_claim.mechanism.as_list() == pytest.approx(record["filter"]["planned_mechanism"], rel=1e-9)
