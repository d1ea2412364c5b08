"""The empirical audit (issue 5, part 4): the bound's arithmetic, its power, and no canary text
anywhere it should not be."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binom

from radpriv.audit.one_run_bound import epsilon_lower_bound, guesses, p_value
from radpriv.cli import main
from tests.test_train_e2e import TINY, all_files_text


def test_all_correct_guesses_worked_example():
    """δ = 0, 100 guesses all correct: P = q^100 = 0.05 ⇒ q = 0.05^(1/100), ε = log(q/(1-q)) ≈ 3.493."""
    q = 0.05 ** (1 / 100)
    by_hand = math.log(q / (1 - q))
    assert by_hand == pytest.approx(3.493, abs=1e-3)
    assert epsilon_lower_bound(1000, 100, 100, delta=0.0) == pytest.approx(by_hand, rel=1e-6)


def test_pure_dp_bound_is_the_binomial_tail_root():
    m, r, v = 1000, 200, 150
    root = brentq(lambda e: binom.sf(v - 1, r, 1 / (1 + math.exp(-e))) - 0.05, 0, 10)
    assert epsilon_lower_bound(m, r, v, delta=0.0) == pytest.approx(root, rel=1e-6)


def test_bound_grows_with_correct_guesses_and_is_zero_at_chance():
    bounds = [epsilon_lower_bound(1000, 200, v, delta=1e-5) for v in (100, 110, 130, 160, 190)]
    assert bounds[0] == 0.0 and bounds[1] == 0.0  # chance level and a little above: nothing proven
    assert bounds[2] < bounds[3] < bounds[4]
    # δ can only weaken the bound
    assert epsilon_lower_bound(1000, 200, 160, delta=1e-3) < epsilon_lower_bound(1000, 200, 160, delta=0.0)
    assert p_value(1000, 200, 160, 0.0, 0.0) < 1e-10


def test_guesses_take_the_top_and_bottom_scores():
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.5])
    member = np.array([True, False, False, True, True])
    # "in" for 0.9 and 0.8 (one right), "out" for 0.1 (right)
    assert guesses(scores, member, 2, 1) == (3, 2)


def _audit(overrides, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", *overrides])
    captured = capsys.readouterr()
    return exit_info.value.code, captured


def test_a_non_private_audit_has_power_and_leaks_no_canary_text(tracking_uri, reports_csv, capsys, tmp_path):
    """Non-private full fine-tuning memorises random-label canaries: the bound is clearly > 0."""
    from radpriv.audit.canaries import make_canaries
    from radpriv.model.encoder import load_encoder, resolve_spec

    overrides = [*TINY, f"data.path={reports_csv[0]}", "privacy.epsilon=null", "finetune=full",
                 "finetune.lr=1e-2", "finetune.warmup_ratio=0", "trainer.max_epochs=30",
                 "audit.canaries=120", "audit.words_per_canary=8", "audit.k_plus=20", "audit.k_minus=20",
                 "audit.delta=1e-6",
                 "tracking.checkpoint_dir=ckpt"]
    with pytest.raises(SystemExit):
        main(["audit", *overrides])  # exits 0 through main()
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    result = summary["audit"]
    assert result["guesses"] == 40 and result["claimed_epsilon"] is None
    assert result["epsilon_lower_bound"] > 0.5, result
    assert 0.5 < result["mia_auc"] <= 1.0

    _, tok = load_encoder(resolve_spec("tiny_bert"))
    texts = make_canaries(120, ["a", "b"], tok, seed=0, words_per_canary=8).texts
    stored = all_files_text(tmp_path)  # MLflow store, artifacts and checkpoints
    printed = captured.out + captured.err
    for text in texts:
        assert text not in stored and text not in printed


def test_bad_audit_settings_are_one_line_errors(tracking_uri, reports_csv, capsys):
    base = [*TINY, f"data.path={reports_csv[0]}"]
    for extra, message in [("audit.canaries=1", "at least 2"),
                           ("audit.k_plus=50", "exceeds audit.canaries"),
                           ("audit.confidence=1.5", "confidence")]:
        code, captured = _audit([*base, "audit.canaries=40", *extra.split()] if "canaries=1" not in extra
                                else [*base, extra], capsys)
        lines = [ln for ln in captured.err.strip().splitlines() if ln.startswith("radpriv: error")]
        assert code == 2 and lines and message in lines[-1], (extra, captured.err[-500:])


@pytest.mark.slow
def test_the_audit_catches_a_dp_implementation_that_forgets_the_noise(
        tracking_uri, reports_csv, capsys, monkeypatch):
    """A planted bug — clipping but no noise, while the accountant counts σ — must be caught:
    the lower bound exceeds the claimed ε and the command exits non-zero."""
    from opacus.optimizers import DPOptimizer

    monkeypatch.setattr(DPOptimizer, "add_noise", lambda self: [
        setattr(p, "grad", p.summed_grad.view_as(p)) for p in self.params])
    code, captured = _audit([*TINY, f"data.path={reports_csv[0]}", "privacy.epsilon=0.2",
                             "privacy.delta=1e-6", "privacy.max_grad_norm=1.0", "finetune=full",
                             "finetune.lr=1e-2", "finetune.warmup_ratio=0", "trainer.max_epochs=40",
                             "audit.canaries=120", "audit.words_per_canary=8", "audit.k_plus=20",
                             "audit.k_minus=20", "tracking.checkpoint_dir=null"], capsys)
    assert code == 2, [ln for ln in captured.err.splitlines() if "audit" in ln]
    assert "PRIVACY BUG" in captured.err
