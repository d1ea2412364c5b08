"""The empirical audit (issue 5, part 4): the bound's arithmetic, its power, and no canary text
or membership anywhere it should not be."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binom

from radpriv.audit.canaries import make_canaries, public_words, with_canaries
from radpriv.audit.one_run_bound import epsilon_lower_bound, guesses, p_value
from radpriv.audit.run import EXIT_PRIVACY_BUG, privacy_bug
from radpriv.cli import main
from radpriv.config import compose
from radpriv.data.patients import PatientIndex, training_units
from radpriv.data.schemas import CT_RATE18
from radpriv.data.sources import load_table
from radpriv.errors import ConfigError
from tests.helpers.cli import TINY, all_files_text
from tests.synthetic import CT_PATIENT_CSV, synthetic_table, write_ct_patient_csv

# ---- the bound (Steinke, Nasr & Jagielski 2023) -------------------------------------------------

def test_all_correct_guesses_worked_example():
    """δ = 0, 100 guesses all correct: P = q^100 = 0.05 ⇒ q = 0.05^(1/100), ε = log(q/(1-q)) ≈ 3.493."""
    q = 0.05 ** (1 / 100)
    by_hand = math.log(q / (1 - q))
    assert by_hand == pytest.approx(3.493, abs=1e-3)
    assert epsilon_lower_bound(1000, 100, 100, delta=0.0) == pytest.approx(by_hand, rel=1e-6)


def test_delta_term_worked_example():
    """m=10, r=4, v=4, ε=0 (q=½), δ=0.01, by hand: P[Bin ≥ 4] = 1/16; the averaged tails
    P[4-i ≤ Bin < 4]/i are 4/16, 10/32, 14/48, 15/64 for i=1..4, max 5/16;
    p = 1/16 + 5/16 · 2·10·0.01 = 0.125."""
    assert p_value(10, 4, 4, 0.0, 0.01) == pytest.approx(0.125, rel=1e-12)
    assert p_value(10, 4, 4, 0.0, 0.0) == pytest.approx(1 / 16, rel=1e-12)


def test_pure_dp_bound_is_the_binomial_tail_root():
    m, r, v = 1000, 200, 150
    root = brentq(lambda e: binom.sf(v - 1, r, 1 / (1 + math.exp(-e))) - 0.05, 0, 10)
    assert epsilon_lower_bound(m, r, v, delta=0.0) == pytest.approx(root, rel=1e-6)


def _theorem_p_value(m, r, v, eps, delta):
    """The theorem's p-value computed another way: the whole Binomial(r, q) pmf, tails by slicing."""
    q = math.exp(eps) / (1 + math.exp(eps))
    pmf = binom.pmf(np.arange(r + 1), r, q)
    tail = pmf[v:].sum()
    alpha = max((pmf[v - i:v].sum() / i for i in range(1, v + 1)), default=0.0)
    return min(1.0, tail + 2 * m * delta * alpha)


@pytest.mark.parametrize("m,r,v,delta", [(1000, 100, 90, 1e-5), (500, 100, 80, 1.5e-4), (200, 40, 36, 1e-3)])
def test_bound_with_delta_matches_an_independent_root_of_the_theorem(m, r, v, delta):
    root = brentq(lambda e: _theorem_p_value(m, r, v, e, delta) - 0.05, 0, 20, xtol=1e-12)
    assert epsilon_lower_bound(m, r, v, delta) == pytest.approx(root, rel=1e-6, abs=1e-9)
    assert 0 < epsilon_lower_bound(m, r, v, delta) < epsilon_lower_bound(m, r, v, 0.0)


def test_bound_is_monotone_in_correct_guesses_and_zero_at_chance():
    bounds = [epsilon_lower_bound(1000, 200, v, delta=1e-5) for v in range(90, 201)]
    assert all(b1 <= b2 for b1, b2 in zip(bounds, bounds[1:]))
    assert bounds[-1] > bounds[70] > 0
    assert epsilon_lower_bound(1000, 200, 100, delta=1e-5) == 0.0  # exactly chance
    assert epsilon_lower_bound(1000, 200, 110, delta=1e-5) == 0.0  # chance + noise: nothing proven
    # δ and a higher confidence can only weaken the bound
    assert epsilon_lower_bound(1000, 200, 160, delta=1e-3) < epsilon_lower_bound(1000, 200, 160, delta=0.0)
    assert (epsilon_lower_bound(1000, 200, 160, 1e-5, confidence=0.99)
            < epsilon_lower_bound(1000, 200, 160, 1e-5, confidence=0.95))


def test_chance_level_guessing_gives_about_zero_on_average():
    """A model that learnt nothing about membership: random coins, scores independent of them."""
    rng = np.random.default_rng(7)
    bounds = []
    for _ in range(200):
        member = rng.random(500) < 0.5
        r, v = guesses(rng.normal(size=500), member, 50, 50)
        bounds.append(epsilon_lower_bound(500, r, v, 1e-5))
    assert np.mean(np.asarray(bounds) > 0) <= 0.1  # false "leak" at most ~5% of the time
    assert np.mean(bounds) < 0.05


def test_guesses_take_the_top_and_bottom_scores():
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.5])
    member = np.array([True, False, False, True, True])
    # "in" for 0.9 and 0.8 (one right), "out" for 0.1 (right)
    assert guesses(scores, member, 2, 1) == (3, 2)
    assert guesses(scores, member, 1, 0) == (1, 1)
    assert guesses(scores, member, 0, 2) == (2, 1)


# ---- canaries -----------------------------------------------------------------------------------

def test_canaries_are_public_words_with_a_fair_seeded_coin():
    from radpriv.model.encoder import load_encoder, resolve_spec

    _, tok = load_encoder(resolve_spec("tiny_bert"))
    vocab = set(public_words(tok))
    c = make_canaries(400, CT_RATE18, tok, seed=3, words_per_canary=12)
    again = make_canaries(400, CT_RATE18, tok, seed=3, words_per_canary=12)
    assert c.texts == again.texts and (c.member == again.member).all() and c.ids == again.ids
    assert c.texts != make_canaries(400, CT_RATE18, tok, seed=4, words_per_canary=12).texts
    assert all(len(t.split()) == 12 and set(t.split()) <= vocab for t in c.texts)
    assert all(w.isalpha() and not w.startswith("#") for w in vocab)
    assert 160 < c.member.sum() < 240 and c.labels.shape == (400, len(CT_RATE18))
    # opaque ids (not the canary's index): splits.json then shows only how many were included
    assert len(set(c.ids)) == 400 and all(re.fullmatch(r"canary-[0-9a-f]{16}", cid) for cid in c.ids)

    table = synthetic_table()
    small = make_canaries(30, table.label_names, tok, seed=0)
    audited = with_canaries(table, small)
    added = audited.subset("train")
    assert len(audited) == len(table) + small.member.sum()
    assert set(added.texts) - set(table.texts) == {t for t, m in zip(small.texts, small.member) if m}
    assert audited.subset("test").ids == table.subset("test").ids


# ---- the command --------------------------------------------------------------------------------

def _audit(overrides, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", *overrides])
    return exit_info.value.code, capsys.readouterr()


def test_a_privacy_bug_is_one_loud_line():
    summary = {"run_id": "abc", "audit": {"claimed_epsilon": 1.0, "epsilon_lower_bound": 1.7,
                                          "confidence": 0.95, "correct_guesses": 90, "guesses": 100}}
    message = privacy_bug(summary)
    assert message.startswith("PRIVACY BUG") and "\n" not in message and "1.7" in message
    summary["audit"]["epsilon_lower_bound"] = 0.4
    assert privacy_bug(summary) is None
    summary["audit"]["claimed_epsilon"] = None  # non-private: nothing claimed, nothing to refute
    summary["audit"]["epsilon_lower_bound"] = 3.0
    assert privacy_bug(summary) is None


def test_bad_audit_settings_are_one_line_errors_before_any_training(tracking_uri, reports_csv, capsys, tmp_path):
    base = [*TINY, f"data.path={reports_csv[0]}", "privacy.epsilon=1"]
    cases = [
        ([*base, "audit.canaries=0"], "at least 1 canary"),
        ([*base, "audit.canaries=-3"], "at least 1 canary"),
        ([*base, "audit.canaries=40", "audit.k_plus=50"], "exceeds audit.canaries"),
        ([*base, "audit.confidence=1.5"], "confidence"),
        ([*base, "audit.delta=1e-12"], "below the run's δ"),
        ([*TINY, f"data.path={reports_csv[0]}"], "state the claimed ε"),
    ]
    for overrides, message in cases:
        code, captured = _audit(overrides, capsys)
        lines = [ln for ln in captured.err.strip().splitlines() if ln.startswith("radpriv: error")]
        assert code == 2 and len(lines) == 1 and message in lines[0], (overrides, captured.err[-500:])
        assert "Traceback" not in captured.err and captured.out == ""
    assert not list(tmp_path.rglob("model")), "a bad setting must stop the audit before training"


@pytest.mark.integration
def test_a_non_private_audit_has_power_and_leaks_no_canary(tracking_uri, reports_csv, capsys, tmp_path):
    """Non-private full fine-tuning memorises random-label canaries: the bound is clearly > 0.
    And no canary text, id or per-canary membership reaches MLflow, checkpoints or the console."""
    from radpriv.model.encoder import load_encoder, resolve_spec

    overrides = [*TINY, f"data.path={reports_csv[0]}", "privacy.epsilon=null", "finetune=full",
                 "finetune.lr=1e-2", "finetune.warmup_ratio=0", "trainer.max_epochs=20",
                 "audit.canaries=120", "audit.words_per_canary=4", "audit.k_plus=20", "audit.k_minus=20",
                 "audit.delta=1e-6", "audit.seed=0", "tracking.checkpoint_dir=ckpt"]
    code, captured = _audit(overrides, capsys)
    assert code == 0, captured.err[-2000:]
    summary = json.loads(captured.out.strip().splitlines()[-1])
    result = summary["audit"]
    assert result["guesses"] == 40 and result["claimed_epsilon"] is None
    # 40 guesses all right would prove ε ≥ 2.55; chance-level guessing proves nothing (0)
    assert result["epsilon_lower_bound"] > 1.0, result
    assert result["canary_auc"] > 0.8 and 0.5 < result["mia_auc"] <= 1.0, result

    run = mlflow.MlflowClient(tracking_uri).get_run(summary["run_id"])
    assert run.data.metrics["audit/epsilon_lower_bound"] == pytest.approx(result["epsilon_lower_bound"])
    for key in ("audit/mia_auc", "audit/canaries", "audit/correct_guesses", "audit/guesses"):
        assert key in run.data.metrics, key
    assert run.data.tags["radpriv.audit"] == "true"
    assert not any(k.startswith("audit") for k in run.data.params), "audit.seed would regenerate the canaries"

    _, tok = load_encoder(resolve_spec("tiny_bert"))
    canaries = make_canaries(120, CT_RATE18, tok, seed=0, words_per_canary=4)
    assert (canaries.labels.shape[1], len(canaries)) == (18, 120)
    stored = all_files_text(tmp_path)  # MLflow store, its artifacts and the checkpoint dir
    printed = captured.out + captured.err
    assert (tmp_path / "ckpt").is_dir()
    for text, cid in zip(canaries.texts, canaries.ids):
        assert text not in stored and text not in printed
        assert cid not in printed
    # three consecutive words of a canary would be enough to recognise it
    for text in canaries.texts:
        words = text.split()
        for i in range(len(words) - 2):
            assert " ".join(words[i:i + 3]) not in stored + printed


@pytest.mark.integration
def test_a_private_audit_at_epsilon_one_finds_no_bug(tracking_uri, reports_csv, capsys):
    """The same memorising setting as the non-private audit, under DP at ε = 1: the bound stays at or
    below the claim it tests — the run's add/remove ε, the relation the canary experiment tests
    (canaries are added or left out), never above its replace-one guarantee."""
    overrides = [*TINY, f"data.path={reports_csv[0]}", "privacy.epsilon=1", "privacy.max_grad_norm=1.0",
                 "finetune=full", "finetune.lr=1e-2", "finetune.warmup_ratio=0", "trainer.max_epochs=4",
                 "audit.canaries=120", "audit.words_per_canary=4", "audit.k_plus=20", "audit.k_minus=20",
                 "tracking.checkpoint_dir=null", "tracking.log_model=true"]
    code, captured = _audit(overrides, capsys)
    assert code == 0, captured.err[-2000:]
    result = json.loads(captured.out.strip().splitlines()[-1])["audit"]
    run = mlflow.MlflowClient(tracking_uri).get_run(json.loads(captured.out.strip().splitlines()[-1])["run_id"])
    assert result["claimed_epsilon"] == pytest.approx(run.data.metrics["privacy/epsilon_add_remove"])
    assert result["claimed_epsilon"] < run.data.metrics["privacy/epsilon"] <= 1.0
    assert result["epsilon_lower_bound"] <= result["claimed_epsilon"]
    assert result["verdict"] == "consistent with the claimed ε"


@pytest.mark.slow
def test_the_audit_catches_a_dp_implementation_that_forgets_the_noise(
        tracking_uri, reports_csv, capsys, monkeypatch):
    """A planted bug — clipping but no noise, while the accountant counts σ — must be caught:
    the lower bound exceeds the claimed ε and the command exits with the privacy-bug status."""
    from radpriv.privacy.dp_step import NoisyDPOptimizer

    # the one place noise is added (radpriv/privacy/dp_step.py), emptied
    monkeypatch.setattr(NoisyDPOptimizer, "add_noise", lambda self: [
        setattr(p, "grad", p.summed_grad.view_as(p)) for p in self.params])
    code, captured = _audit([*TINY, f"data.path={reports_csv[0]}", "privacy.epsilon=0.2",
                             "privacy.delta=1e-6", "privacy.max_grad_norm=1.0", "finetune=full",
                             "finetune.lr=1e-2", "finetune.warmup_ratio=0", "trainer.max_epochs=40",
                             "audit.canaries=120", "audit.words_per_canary=8", "audit.k_plus=20",
                             "audit.k_minus=20", "tracking.checkpoint_dir=null"], capsys)
    assert code == EXIT_PRIVACY_BUG, [ln for ln in captured.err.splitlines() if "audit" in ln]
    bug_lines = [ln for ln in captured.err.splitlines() if "PRIVACY BUG" in ln]
    assert len(bug_lines) == 1
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["audit"]["epsilon_lower_bound"] > summary["audit"]["claimed_epsilon"]


# ---- the patient unit: canaries are patients of several reports ----------------------------------

@pytest.fixture
def ct_patient_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("patients") / "patients.csv"
    write_ct_patient_csv(path)
    return path


PATIENT_TINY = ["model=tiny_bert", *CT_PATIENT_CSV, "data.max_length=48", "trainer.progress_bar=false",
                "privacy.expected_batch_size=8", "privacy.max_physical_batch_size=8", "trainer.eval_batch_size=64"]


def test_a_canary_patient_is_copies_of_one_report_in_or_out_of_training_together(ct_patient_csv):
    from radpriv.model.encoder import load_encoder, resolve_spec

    _, tok = load_encoder(resolve_spec("tiny_bert"))
    one = make_canaries(60, CT_RATE18, tok, seed=1, words_per_canary=6)
    three = make_canaries(60, CT_RATE18, tok, seed=1, words_per_canary=6, reports_per_canary=3)
    # the same canaries as the report-level audit of that seed, each now a patient of 3 reports
    assert three.texts == one.texts and three.ids == one.ids and (three.member == one.member).all()
    assert one.reports_per_canary == 1 and three.reports_per_canary == 3
    reports = [rid for rids in three.report_ids for rid in rids]
    assert len(set(reports)) == 180 and not set(reports) & set(three.ids)  # no report id names its patient
    assert all(re.fullmatch(r"canary-[0-9a-f]{16}", rid) for rid in reports)

    table = load_table(compose([*CT_PATIENT_CSV, f"data.path={ct_patient_csv}"]).data, 42)
    audited = with_canaries(table, three)
    train = audited.subset("train")
    row = {rid: i for i, rid in enumerate(train.ids)}
    for j, cid in enumerate(three.ids):
        rows = [row[rid] for rid in three.report_ids[j] if rid in row]
        assert len(rows) == (3 if three.member[j] else 0), "a canary patient is in training whole or not at all"
        for i in rows:
            assert train.patient_ids[i] == cid and train.texts[i] == three.texts[j]
            assert (train.labels[i] == three.labels[j]).all()
    n_members = int(three.member.sum())
    assert len(PatientIndex.of(train)) == len(PatientIndex.of(table.subset("train"))) + n_members
    assert training_units(audited, "patient") == training_units(table, "patient") + n_members
    assert training_units(audited, "report") == training_units(table, "report") + 3 * n_members
    assert audited.subset("test").ids == table.subset("test").ids
    with pytest.raises(ConfigError, match="no patient ids"):
        with_canaries(replace(synthetic_table(), patient_ids=None), three)


def test_canaries_follow_the_runs_privacy_unit_or_fail_in_one_line(tracking_uri, ct_patient_csv, reports_csv,
                                                                    capsys, tmp_path):
    cases = [
        # report unit: a canary is one report; several reports in or out together test group privacy
        ([*TINY, f"data.path={reports_csv[0]}", "privacy.epsilon=1", "audit.reports_per_canary=2"],
         "the privacy unit is the report"),
        ([*PATIENT_TINY, f"data.path={ct_patient_csv}", "privacy.unit=report", "privacy.epsilon=1",
          "audit.reports_per_canary=3"], "the privacy unit is the report"),
        # patient unit: never more reports than a drawn patient brings to a step
        ([*PATIENT_TINY, f"data.path={ct_patient_csv}", "privacy.epsilon=1", "privacy.max_reports_per_patient=4",
          "audit.reports_per_canary=5"], "exceeds the run's reports per patient, 4"),
        ([*PATIENT_TINY, f"data.path={ct_patient_csv}", "privacy.epsilon=1", "audit.reports_per_canary=0"],
         "audit.reports_per_canary=0"),
    ]
    for overrides, message in cases:
        code, captured = _audit(overrides, capsys)
        lines = [ln for ln in captured.err.strip().splitlines() if ln.startswith("radpriv: error")]
        assert code == 2 and len(lines) == 1 and message in lines[0], (overrides, captured.err[-500:])
    assert not list(tmp_path.rglob("model")), "a bad setting must stop the audit before training"


@pytest.mark.integration
def test_a_patient_unit_audit_at_epsilon_one_finds_no_bug(tracking_uri, ct_patient_csv, capsys):
    """Canary patients of 4 reports each (the run's cap), DP at ε = 1 per patient: the bound
    stays at or below the add/remove ε the canary experiment tests, and the run says the unit."""
    overrides = [*PATIENT_TINY, f"data.path={ct_patient_csv}", "privacy.epsilon=1", "privacy.max_grad_norm=1.0",
                 "privacy.max_reports_per_patient=4", "finetune=full", "finetune.lr=1e-2",
                 "finetune.warmup_ratio=0", "trainer.max_epochs=4", "audit.canaries=120",
                 "audit.words_per_canary=4", "audit.k_plus=20", "audit.k_minus=20", "tracking.checkpoint_dir=null"]
    code, captured = _audit(overrides, capsys)
    assert code == 0, captured.err[-2000:]
    summary = json.loads(captured.out.strip().splitlines()[-1])
    result = summary["audit"]
    assert (result["unit"], result["reports_per_canary"]) == ("patient", 4)
    run = mlflow.MlflowClient(tracking_uri).get_run(summary["run_id"])
    assert run.data.tags["radpriv.unit"] == "patient"
    assert run.data.metrics["audit/reports_per_canary"] == 4
    assert result["claimed_epsilon"] == pytest.approx(run.data.metrics["privacy/epsilon_add_remove"])
    assert result["epsilon_lower_bound"] <= result["claimed_epsilon"] < 1.0
    assert result["verdict"] == "consistent with the claimed ε"


# ---- the white-box audit: gradient canaries through the DP-SGD step --------------------------------

WHITE_BOX = [*PATIENT_TINY, "audit.mode=white_box", "privacy.epsilon=1", "privacy.delta=1e-5",
             "trainer.max_epochs=8", "audit.canaries=500"]


@pytest.mark.integration
def test_the_white_box_audit_catches_per_report_clipping_at_the_patient_unit(tracking_uri, ct_patient_csv,
                                                                             capsys, monkeypatch):
    """The planted bug: a patient's reports clipped one by one while the accountant counts one
    clipped gradient per patient. Canary patients of k reports then weigh k·C: caught, exit 3."""
    import radpriv.privacy.dp_step as dp_step

    monkeypatch.setattr(dp_step, "per_patient", lambda params, patient: None)
    code, captured = _audit([*WHITE_BOX, f"data.path={ct_patient_csv}"], capsys)
    assert code == EXIT_PRIVACY_BUG, captured.err[-1500:]
    assert len([ln for ln in captured.err.splitlines() if "PRIVACY BUG" in ln]) == 1
    result = json.loads(captured.out.strip().splitlines()[-1])["audit"]
    assert (result["mode"], result["unit"], result["reports_per_canary"]) == ("white_box", "patient", 8)
    assert result["epsilon_lower_bound"] > result["claimed_epsilon"]


@pytest.mark.integration
def test_a_white_box_audit_of_the_patient_unit_finds_no_bug_and_logs_nothing(tracking_uri, ct_patient_csv,
                                                                               capsys, tmp_path):
    """The same audit of the correct step: the bound stays below the add/remove ε of the σ that
    `radpriv train` would calibrate (at the run's δ, even when the bound is taken at a larger
    audit.delta), and nothing reaches MLflow (no run is created)."""
    from radpriv.privacy import accounting

    code, captured = _audit([*WHITE_BOX, f"data.path={ct_patient_csv}", "audit.confidence=0.99",
                             "audit.delta=1e-4"], capsys)
    assert code == 0, captured.err[-1500:]
    summary = json.loads(captured.out.strip().splitlines()[-1])
    result = summary["audit"]
    assert summary["run_id"] is None and result["verdict"] == "consistent with the claimed ε"
    assert result["delta"] == 1e-4
    assert result["epsilon_lower_bound"] <= result["claimed_epsilon"]
    sigma, q, steps = result["noise_multiplier"], result["sample_rate"], result["steps"]
    assert accounting.epsilon_spent("prv", (sigma, q, steps), 1e-5, "replace_one") == pytest.approx(1.0, rel=0.01)
    assert result["claimed_epsilon"] == pytest.approx(accounting.epsilon_spent("prv", (sigma, q, steps), 1e-5))
    client = mlflow.MlflowClient(tracking_uri)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.integration
def test_the_white_box_audit_catches_a_step_without_noise_at_the_report_unit(tracking_uri, reports_csv, capsys,
                                                                             monkeypatch):
    from radpriv.privacy.dp_step import NoisyDPOptimizer

    monkeypatch.setattr(NoisyDPOptimizer, "add_noise", lambda self: [
        setattr(p, "grad", p.summed_grad.view_as(p)) for p in self.params])
    code, captured = _audit([*TINY, f"data.path={reports_csv[0]}", "audit.mode=white_box", "privacy.epsilon=1",
                             "privacy.delta=1e-5", "audit.canaries=200"], capsys)
    assert code == EXIT_PRIVACY_BUG, captured.err[-1500:]
    result = json.loads(captured.out.strip().splitlines()[-1])["audit"]
    assert (result["unit"], result["reports_per_canary"]) == ("report", 1)
