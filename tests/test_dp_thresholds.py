"""DP thresholds (radpriv/privacy/dp_thresholds.py): noise, sensitivity, post-processing, utility,
calibration and composition. Fast: no training, numbers only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.optimize import brentq

from radpriv.errors import ConfigError, PrivacyError
from radpriv.model.metrics import THRESHOLD_GRID, fit_thresholds
from radpriv.privacy import dp_thresholds as dpt
from radpriv.privacy import replace_one
from radpriv.privacy.randomness import ChaCha20Stream, PrivateRandomness, numpy_generator
from radpriv.teacher.pate import gaussian_dp_epsilon

L = 14
DELTA = 1e-5


def random_validation(n: int, n_labels: int, rng: np.random.Generator, masked: float = 0.1):
    """Uniform scores (some exactly on grid points, to test p ≥ g) and 1/0/−1 labels."""
    probs = rng.random((n, n_labels))
    on_grid = rng.random((n, n_labels)) < 0.05
    probs[on_grid] = rng.choice(dpt.threshold_grid(), size=int(on_grid.sum()))
    labels = (rng.random((n, n_labels)) < 0.3).astype(np.int64)
    labels[rng.random((n, n_labels)) < masked] = -1
    return probs, labels


def separated_problem(n: int, rng: np.random.Generator):
    """14 labels, prevalence 0.1-0.4, well separated (d' = 3.5) but under-confident: the
    F1-optimal thresholds lie well below 0.5, so choosing them matters; 5 % of entries masked."""
    prevalence = np.linspace(0.1, 0.4, L)
    shift = np.linspace(-2.5, -1.0, L)
    labels = (rng.random((n, L)) < prevalence).astype(np.int64)
    z = rng.normal(size=(n, L)) + 3.5 * labels
    probs = 1 / (1 + np.exp(-(1.5 * (z - 1.75) + shift)))
    labels[rng.random((n, L)) < 0.05] = -1
    return probs, labels


def macro_f1(probs, labels, thresholds) -> float:
    pred = probs >= thresholds
    tp = (pred & (labels == 1)).sum(0)
    fp = (pred & (labels == 0)).sum(0)
    fn = (~pred & (labels == 1)).sum(0)
    return float((2 * tp / np.maximum(2 * tp + fp + fn, 1)).mean())


# --------------------------------------------------------------------------- grid

def test_grid_is_fixed_sorted_symmetric_and_in_range():
    grid = dpt.threshold_grid()
    assert len(grid) == 13 and grid[0] == 0.02 and grid[-1] == 0.98 and 0.5 in grid
    assert np.all(np.diff(grid) > 0)
    np.testing.assert_allclose(grid, 1 - grid[::-1])
    grid[0] = 0.3  # a caller's copy: the next call is unchanged
    assert dpt.threshold_grid()[0] == 0.02


# --------------------------------------------------------------------------- noise

@pytest.mark.parametrize("source", ["private", "private_secure", "chacha", "numpy"])
def test_noise_std_is_the_calibrated_one(source):
    """noisy − exact counts over many releases: mean 0, std = calibrate_threshold_noise(1, δ, 14)."""
    s = dpt.calibrate_threshold_noise(1.0, DELTA, L)
    randomness = {"private": PrivateRandomness(), "private_secure": PrivateRandomness(secure=True),
                  "chacha": ChaCha20Stream(), "numpy": numpy_generator()}[source]
    probs, labels = random_validation(200, L, np.random.default_rng(0))
    pos, neg = dpt.exact_counts(probs, labels)
    noise = []
    for _ in range(100):
        noisy_pos, noisy_neg = dpt.noisy_counts(probs, labels, s, randomness)
        noise.append(np.concatenate([(noisy_pos - pos).ravel(), (noisy_neg - neg).ravel()]))
    noise = np.concatenate(noise)
    n = noise.size  # 100 × 2 × 14 × 14 = 39,200
    assert abs(noise.mean()) < 5 * s / math.sqrt(n)
    assert abs(noise.std(ddof=1) / s - 1) < 5 / math.sqrt(2 * n)  # ≈ 1.8 %
    assert stats.kstest(noise / s, "norm").pvalue > 1e-4


def test_dp_fit_thresholds_releases_with_the_std_it_is_given(monkeypatch):
    seen = []
    original = dpt.noisy_counts

    def spy(probs, labels, noise_std, randomness):
        seen.append(noise_std)
        return original(probs, labels, noise_std, randomness)

    monkeypatch.setattr(dpt, "noisy_counts", spy)
    probs, labels = random_validation(50, L, np.random.default_rng(1))
    s = dpt.calibrate_threshold_noise(2.0, DELTA, L)
    dpt.dp_fit_thresholds(probs, labels, s, PrivateRandomness())
    assert seen == [s]


def test_noise_is_fresh_whatever_the_global_seeds():
    """Two releases of the same inputs differ, even with torch's and NumPy's global seeds reset."""
    probs, labels = random_validation(100, L, np.random.default_rng(2))
    for secure in (False, True):
        releases = []
        for _ in range(2):
            torch.manual_seed(0)
            np.random.seed(0)
            releases.append(dpt.noisy_counts(probs, labels, 1.0, PrivateRandomness(secure=secure)))
        assert not np.array_equal(releases[0][0], releases[1][0])
        assert not np.array_equal(releases[0][1], releases[1][1])
    # and the thresholds themselves, at a noise where they vary
    thresholds = {tuple(dpt.dp_fit_thresholds(probs, labels, 50.0, PrivateRandomness())) for _ in range(5)}
    assert len(thresholds) > 1


# --------------------------------------------------------------------------- sensitivity

def test_replacing_one_report_moves_at_most_two_cells_per_label():
    """By construction on random data: per label, ≤ one cell −1 and ≤ one cell +1 (so
    ‖Δ‖₂² ≤ 2 per label and ≤ 2L overall = l2_sensitivity²), and the bound is reached."""
    rng = np.random.default_rng(3)
    n_labels = 6
    probs, labels = random_validation(80, n_labels, rng, masked=0.2)
    before = np.stack(dpt.exact_counts(probs, labels), axis=1)  # L × 2 × (K+1)
    worst = 0.0
    for trial in range(400):
        new_probs, new_labels = probs.copy(), labels.copy()
        i = rng.integers(len(probs))
        new_probs[i] = rng.random(n_labels)
        new_labels[i] = rng.integers(-1, 2, size=n_labels)
        if trial == 0:  # the worst case: every label flips class and moves across the grid
            probs[i], labels[i] = 0.01, 1
            before = np.stack(dpt.exact_counts(probs, labels), axis=1)
            new_probs[i], new_labels[i] = 0.99, 0
        diff = np.stack(dpt.exact_counts(new_probs, new_labels), axis=1) - before
        per_label = diff.reshape(n_labels, -1)
        assert set(np.unique(per_label)) <= {-1.0, 0.0, 1.0}
        assert ((per_label == 1).sum(1) <= 1).all() and ((per_label == -1).sum(1) <= 1).all()
        assert ((per_label ** 2).sum(1) <= 2).all()
        worst = max(worst, float((diff ** 2).sum()))
    assert worst == pytest.approx(dpt.l2_sensitivity(n_labels) ** 2)


# --------------------------------------------------------------------------- post-processing

@pytest.mark.parametrize("grid", [dpt.threshold_grid(), THRESHOLD_GRID], ids=["dp_grid", "fit_grid"])
def test_without_noise_thresholds_are_the_exact_f1_argmax(grid):
    """Exact counts → the thresholds of metrics.fit_thresholds on the same grid (ties to 0.5,
    0.5 for a label with no positive, and for an all-masked label)."""
    probs, labels = random_validation(300, L, np.random.default_rng(4))
    labels[:, 3] = np.where(labels[:, 3] == 1, 0, labels[:, 3])  # no positive
    labels[:, 5] = -1  # all masked
    pos, neg = dpt.exact_counts(probs, labels, grid)
    got = dpt.thresholds_from_counts(pos, neg, grid)
    np.testing.assert_array_equal(got, fit_thresholds(probs, labels, grid))
    assert got[3] == 0.5 and got[5] == 0.5


def test_tiny_noise_gives_the_exact_thresholds():
    probs, labels = separated_problem(400, np.random.default_rng(5))
    got = dpt.dp_fit_thresholds(probs, labels, 1e-6, PrivateRandomness())
    np.testing.assert_array_equal(got, fit_thresholds(probs, labels, dpt.threshold_grid()))


def test_no_fitted_positive_falls_back_to_one_half():
    """Noise that drives every positive count to ≤ 0 gives F1 = 0 everywhere: the tie rule → 0.5."""
    k = len(dpt.threshold_grid()) + 1
    pos = -np.abs(np.random.default_rng(6).normal(size=(3, k)))
    neg = np.full((3, k), 20.0)
    np.testing.assert_array_equal(dpt.thresholds_from_counts(pos, neg), [0.5, 0.5, 0.5])


def test_consistency_step_is_the_least_squares_non_increasing_fit():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(7)
    for _ in range(50):
        y = np.cumsum(rng.normal(-1, 3, size=14))
        expected = IsotonicRegression(increasing=False).fit_transform(np.arange(14), y)
        np.testing.assert_allclose(dpt._non_increasing_fit(y), expected, atol=1e-9)


# --------------------------------------------------------------------------- utility

def test_dp_thresholds_are_close_to_the_non_private_ones_on_a_separated_problem():
    """500 validation reports, 14 labels; macro F1 on 20,000 test reports, mean of 5 releases.

    Measured (300 releases each): non-private 0.924 (fit_thresholds' grid), fixed 0.5 0.825;
    DP ε = 10: 0.920 (worst mean-of-5 0.918), ε = 3: 0.900 (0.887), ε = 1: 0.840.
    """
    test_probs, test_labels = separated_problem(20_000, np.random.default_rng(10))
    probs, labels = separated_problem(500, np.random.default_rng(11))
    non_private = macro_f1(test_probs, test_labels, fit_thresholds(probs, labels))
    fixed = macro_f1(test_probs, test_labels, 0.5)
    for epsilon, max_gap in ((10.0, 0.02), (3.0, 0.06)):
        s = dpt.calibrate_threshold_noise(epsilon, DELTA, L)
        dp = np.mean([macro_f1(test_probs, test_labels, dpt.dp_fit_thresholds(probs, labels, s, PrivateRandomness()))
                      for _ in range(5)])
        assert dp > non_private - max_gap, (epsilon, dp, non_private)
        assert dp > fixed + 0.03, (epsilon, dp, fixed)


# --------------------------------------------------------------------------- calibration

def exact_gaussian_std(epsilon: float, delta: float, sensitivity: float) -> float:
    """The std whose Gaussian mechanism is exactly (ε, δ)-DP (Balle & Wang 2018), μ = Δ/s."""
    return brentq(lambda s: gaussian_dp_epsilon(sensitivity / s, delta) - epsilon, 1e-3, 1e4, rtol=1e-10)


def dp_accounting_gaussian_std(epsilon: float, delta: float, sensitivity: float, guess: float) -> float:
    """dp_accounting's own calibration of a plain Gaussian (Brent's method on its PLD accountant;
    noise multiplier × Δ), searched within a factor 2 of ``guess``."""
    import dp_accounting
    from dp_accounting import NeighboringRelation
    from dp_accounting.pld import PLDAccountant

    z = dp_accounting.calibrate_dp_mechanism(
        lambda: PLDAccountant(NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-3 * epsilon),
        dp_accounting.GaussianDpEvent, epsilon, delta,
        bracket_interval=dp_accounting.ExplicitBracketInterval(guess / sensitivity / 2, 2 * guess / sensitivity),
        tol=1e-6)
    return z * sensitivity


@pytest.mark.parametrize("epsilon", [0.1, 1.0, 10.0])
def test_calibration_spends_between_99_and_100_percent_and_agrees_with_references(epsilon):
    s = dpt.calibrate_threshold_noise(epsilon, DELTA, L)
    spent = dpt.threshold_epsilon(s, L, DELTA)
    assert 0.99 * epsilon <= spent <= epsilon
    sensitivity = math.sqrt(2 * L)
    assert dpt.l2_sensitivity(L) == pytest.approx(sensitivity)
    # the PLD bound is an upper bound on the exact ε, tight to < 1 %
    exact = gaussian_dp_epsilon(sensitivity / s, DELTA)
    assert exact <= spent <= 1.01 * exact
    for reference in (exact_gaussian_std(epsilon, DELTA, sensitivity),
                      dp_accounting_gaussian_std(epsilon, DELTA, sensitivity, guess=s)):
        assert abs(s / reference - 1) <= 0.01, (s, reference)


def test_epsilon_scales_with_labels_and_noise():
    s = dpt.calibrate_threshold_noise(1.0, DELTA, L)
    # only s/√(2L) matters: the same multiplier over 4 labels is the same ε
    assert dpt.threshold_epsilon(s * math.sqrt(4 / L), 4, DELTA) == pytest.approx(dpt.threshold_epsilon(s, L, DELTA))
    assert dpt.threshold_epsilon(2 * s, L, DELTA) < dpt.threshold_epsilon(s, L, DELTA)
    assert dpt.threshold_epsilon(0.0, L, DELTA) == math.inf


# --------------------------------------------------------------------------- composition

@pytest.mark.parametrize("threshold_eps", [0.5, 3.0])
def test_composed_epsilon_is_between_the_parts_and_their_sum(threshold_eps):
    history = ((1.0, 0.05, 200),)
    s = dpt.calibrate_threshold_noise(threshold_eps, DELTA, L)
    training = replace_one.epsilon(history, DELTA)
    thresholds = dpt.threshold_epsilon(s, L, DELTA)
    composed = dpt.composed_epsilon(history, s, L, DELTA)
    assert composed >= max(training, thresholds) * (1 - 1e-3)  # up to PLD discretisation
    assert composed > max(training, thresholds)  # the second release costs something
    assert composed <= training + thresholds
    # the theorem's bound (basic composition splits δ) holds too
    assert composed <= replace_one.epsilon(history, DELTA / 2) + dpt.threshold_epsilon(s, L, DELTA / 2)


def test_composed_epsilon_edge_cases():
    s = dpt.calibrate_threshold_noise(1.0, DELTA, L)
    assert dpt.composed_epsilon((), s, L, DELTA) == pytest.approx(dpt.threshold_epsilon(s, L, DELTA), rel=1e-3)
    assert dpt.composed_epsilon(((0.0, 0.1, 10),), s, L, DELTA) == math.inf
    assert dpt.composed_epsilon(((1.0, 0.05, 10),), 0.0, L, DELTA) == math.inf


# --------------------------------------------------------------------------- record and bad input

def test_release_record_is_public_and_consistent():
    s = dpt.calibrate_threshold_noise(1.0, DELTA, L)
    record = dpt.release_record(s, L, DELTA)
    assert record["mechanism"] == "gaussian_histogram"
    assert record["noise_std"] == s and record["l2_sensitivity"] == pytest.approx(math.sqrt(28))
    assert record["grid_size"] == 13 and record["n_bins"] == 14 and record["relation"] == "replace_one"
    assert 0.99 <= record["epsilon"] <= 1.0


def test_bad_input_is_refused():
    probs, labels = random_validation(20, 3, np.random.default_rng(8))
    randomness = PrivateRandomness()
    with pytest.raises(PrivacyError, match="noise std"):
        dpt.dp_fit_thresholds(probs, labels, 0.0, randomness)
    with pytest.raises(PrivacyError, match="noise std"):
        dpt.dp_fit_thresholds(probs, labels, float("nan"), randomness)
    with pytest.raises(PrivacyError, match="1, 0 or -1"):
        dpt.dp_fit_thresholds(probs, labels + 1, 1.0, randomness)
    with pytest.raises(PrivacyError, match="n × L"):
        dpt.dp_fit_thresholds(probs[:, :2], labels, 1.0, randomness)
    bad = probs.copy()
    bad[0, 0] = np.nan
    with pytest.raises(PrivacyError, match="finite"):
        dpt.dp_fit_thresholds(bad, labels, 1.0, randomness)
    with pytest.raises(PrivacyError, match="PrivateRandomness"):
        dpt.dp_fit_thresholds(probs, labels, 1.0, 1234)
    with pytest.raises(ConfigError, match="ε"):
        dpt.calibrate_threshold_noise(0.0, DELTA, L)
    with pytest.raises(ConfigError, match="δ"):
        dpt.calibrate_threshold_noise(1.0, 1.0, L)
    with pytest.raises(ConfigError, match="labels"):
        dpt.calibrate_threshold_noise(1.0, DELTA, 0)
