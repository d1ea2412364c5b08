"""PATE: the noisy vote, the partition, the privacy accounting, bad input, and a tiny end-to-end run."""

from __future__ import annotations

import csv
import json
import math

import mlflow
import numpy as np
import pytest
from scipy import stats

from radpriv.cli import run
from radpriv.errors import ConfigError, DataError, PrivacyError
from radpriv.teacher import pate
from tests.synthetic import synthetic_table

TINY = ["model=tiny_bert", "data=ct_rate_text", "data.max_length=48", "trainer.max_epochs=1",
        "trainer.progress_bar=false", "trainer.eval_batch_size=16", "privacy.expected_batch_size=8"]


# --------------------------------------------------------------------------- noisy vote

def test_vote_noise_has_the_configured_standard_deviation():
    """Fixed votes, many queries: noisy − true counts are N(0, σ²) (mean, sd, and a KS test)."""
    k, sigma = 7, 3.0
    counts = np.tile(np.arange(k + 1), (2500, 1))  # 2500 reports × 8 labels, every count 0..k
    labels, noisy = pate.noisy_vote(counts, k, sigma, np.random.default_rng(1))
    noise = (noisy - counts).ravel()
    n = noise.size
    assert abs(noise.mean()) < 4 * sigma / math.sqrt(n)
    # sd of the sample sd ≈ σ/√(2n): 5 of them is a generous, still sharp, band
    assert abs(noise.std(ddof=1) - sigma) < 5 * sigma / math.sqrt(2 * n)
    assert stats.kstest(noise / sigma, "norm").pvalue > 1e-3
    assert np.array_equal(labels, (noisy > k / 2).astype(int))
    # a vote count far above k/2 is almost always 1, far below almost always 0, k/2 a coin
    assert labels[:, k].mean() > 0.85 and labels[:, 0].mean() < 0.15
    # P(label 1 | count c) = Φ((c − k/2)/σ), for every count
    for c in range(k + 1):
        p = stats.norm.cdf((c - k / 2) / sigma)
        assert abs(labels[:, c].mean() - p) < 4 * math.sqrt(p * (1 - p) / 2500) + 1e-9


def test_vote_without_meaningful_noise_is_the_majority():
    counts = np.array([[0, 1, 2, 3, 4, 5]])
    labels, _ = pate.noisy_vote(counts, 5, 1e-9, np.random.default_rng(0))
    assert labels.tolist() == [[0, 0, 0, 1, 1, 1]]


# --------------------------------------------------------------------------- accounting

def _direct_dp_accounting(sigma, L, Q, delta):
    """The same bound computed straight from dp-accounting's PLD library, written independently:
    the Gaussian mechanism with the vote noise σ and the query's L2 sensitivity √L (no noise
    multiplier), self-composed Q times."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    one = pld.from_gaussian_mechanism(standard_deviation=sigma, sensitivity=math.sqrt(L))
    return one.self_compose(Q).get_epsilon_for_delta(delta)


@pytest.mark.parametrize("sigma, L, Q, delta", [(40.0, 18, 50, 1e-5), (8.0, 1, 20, 1e-4)])
def test_reported_epsilon_equals_an_independent_dp_accounting_computation(sigma, L, Q, delta):
    cost = pate.pate_epsilon(sigma, L, Q, delta)
    direct = _direct_dp_accounting(sigma, L, Q, delta)
    assert cost["epsilon_pld"] == pytest.approx(direct, rel=2e-3)
    # the exact Gaussian-DP value is a lower envelope the PLD upper bound must not undercut
    assert cost["epsilon_exact"] <= cost["epsilon_pld"] * (1 + 1e-3)
    assert cost["epsilon_exact"] == pytest.approx(cost["epsilon_pld"], rel=0.02)
    assert cost["epsilon_rdp"] >= cost["epsilon_pld"] * 0.999  # RDP is the looser bound
    assert cost["epsilon"] == max(cost["epsilon_pld"], cost["epsilon_exact"])
    assert cost["noise_multiplier"] == pytest.approx(sigma / math.sqrt(L))


def test_exact_gaussian_epsilon_matches_the_closed_form_privacy_profile():
    """δ(ε) of μ-GDP at the returned ε is the δ asked for (Balle & Wang 2018)."""
    mu, delta = 1.3, 1e-5
    eps = pate.gaussian_dp_epsilon(mu, delta)
    profile = stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)
    assert profile == pytest.approx(delta, rel=1e-6)


def test_more_labels_queries_or_less_noise_cost_more():
    base = pate.pate_epsilon(50, 18, 20, 1e-5)["epsilon"]
    assert pate.pate_epsilon(50, 18, 40, 1e-5)["epsilon"] > base
    assert pate.pate_epsilon(50, 36, 20, 1e-5)["epsilon"] > base
    assert pate.pate_epsilon(25, 18, 20, 1e-5)["epsilon"] > base
    assert pate.pate_epsilon(50, 18, 0, 1e-5)["epsilon"] == 0.0
    with pytest.raises(PrivacyError):
        pate.pate_epsilon(0, 18, 10, 1e-5)


# --------------------------------------------------------------------------- partition

def test_partition_depends_on_the_patient_alone():
    patients = [f"p{i}" for i in range(300)]
    parts = pate.partition_of(patients, 42, 5)
    assert set(parts) == set(range(5)) and min(np.bincount(parts)) > 30
    # adding a patient (one expert report) changes no other patient's teacher
    assert pate.partition_of([*patients[:150], "new", *patients[150:]], 42, 5) == [*parts[:150],
                                                                                     *pate.partition_of(["new"], 42, 5),
                                                                                     *parts[150:]]


def test_teacher_tables_are_disjoint_and_keep_validation_and_test():
    table = synthetic_table(n=60)
    tables, sizes, n_train = pate.teacher_tables(table, 3, seed=0)
    trains = [{i for i, s in zip(t.ids, t.split) if s == "train"} for t in tables]
    assert sum(sizes) == n_train == sum(len(t) for t in trains)
    assert all(not (a & b) for i, a in enumerate(trains) for b in trains[i + 1:])
    held = {i for i, s in zip(table.ids, table.split) if s != "train"}
    assert all(held <= set(t.ids) for t in tables)


def test_k_larger_than_the_expert_reports_allow_is_one_line():
    table = synthetic_table(n=20)
    n_train = table.split.count("train")
    with pytest.raises(DataError, match="pate.k"):
        pate.teacher_tables(table, n_train + 1, seed=0)
    with pytest.raises(ConfigError):
        pate.teacher_tables(table, 1, seed=0)


@pytest.mark.parametrize("args, match", [
    (["pate.k=5", "pate.input=a.csv", "pate.output=b.csv"], "pate.sigma"),
    (["pate.k=5", "pate.sigma=0", "pate.input=a.csv", "pate.output=b.csv"], "sigma"),
    (["pate.k=1", "pate.sigma=3", "pate.input=a.csv", "pate.output=b.csv"], "pate.k"),
    (["pate.k=3", "pate.sigma=3", "pate.input=a.csv", "pate.output=b.csv", "privacy.epsilon=1"], "without DP"),
    (["pate.k=3", "pate.sigma=3", "pate.input=a.csv", "pate.output=b.csv", "trainer.thresholds=validation"],
     "fixed"),
    (["pate.bogus=1"], "unexpected"),
])
def test_bad_arguments_are_one_line_errors(args, match):
    with pytest.raises((ConfigError, PrivacyError), match=match):
        pate.parse_args(args)


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_pate_labels_with_two_tiny_teachers(tracking_uri, reports_csv, tmp_path, capsys):
    csv_path, texts = reports_csv
    unlabelled = tmp_path / "unlabelled.csv"
    with unlabelled.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "report_text"])
        w.writerows([[f"u{i}", t] for i, t in enumerate(texts[:12])] + [["empty", ""]])
    out = tmp_path / "pate.csv"
    assert run(["label", "teacher.mode=pate", *TINY, f"data.path={csv_path}", "pate.k=2", "pate.sigma=30",
                f"pate.input={unlabelled}", f"pate.output={out}", "pate.seed=3", "pate.progress_bar=false"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(summary["teacher_runs"]) == 2
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 13 and rows[-1]["Cardiomegaly"] == ""
    assert {r["Cardiomegaly"] for r in rows[:-1]} <= {"0", "1"}
    prov = json.loads((tmp_path / "pate.csv.provenance.json").read_text())
    assert prov["mode"] == "pate" and prov["teacher_guarantee"]["protected"] is True
    n_expert = prov["teacher"]["n_expert_train_reports"]
    expected = pate.pate_epsilon(30, 18, 12, 1 / n_expert ** 1.1)
    assert prov["teacher_guarantee"]["epsilon"] == pytest.approx(expected["epsilon"])
    assert prov["pate"]["n_queries"] == 12
    assert not any(t in json.dumps(prov) for t in texts)
    client = mlflow.MlflowClient(tracking_uri)
    parent = client.get_run(summary["run_id"])
    assert parent.data.metrics["pate/epsilon"] == pytest.approx(expected["epsilon"])
    for rid in summary["teacher_runs"]:
        child = client.get_run(rid)
        assert child.data.tags["mlflow.parentRunId"] == summary["run_id"]
        assert child.data.params["privacy.epsilon"] == "None"
        assert child.data.params["trainer.thresholds"] == "fixed"
