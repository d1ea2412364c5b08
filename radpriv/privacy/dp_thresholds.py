"""Per-label decision thresholds chosen on the validation split by a DP mechanism.

`trainer.thresholds=validation` picks, per label, the F1-optimal grid threshold on the
validation reports (:func:`radpriv.model.metrics.fit_thresholds`) and so releases a function
of those reports without DP. `trainer.thresholds=dp` releases the same kind of choice through
the mechanism below, and its ε is composed into the run's stated total.

Adjacency
---------
Replace-one, as the rest of radpriv (docs/PRIVACY.md, "Adjacency"): neighbouring validation
splits have the same size n (public) and differ in one report. The scores are those of the
trained model, a DP release already; with the model fixed, the mechanism below is a function
of the validation reports only. Assumed, and the caller's to ensure: under
`trainer.thresholds=dp` the validation reports reach nothing else that is published (no
per-epoch `val/*` metric, no checkpoint selection, early stopping or tuning objective on them).

Mechanism (Gaussian histogram, then post-processing)
----------------------------------------------------
With the grid g_1 < … < g_K of :func:`threshold_grid`, a score p falls in bin
b(p) = #{k : g_k ≤ p} ∈ {0, …, K}, so ``p ≥ g_k  ⇔  b(p) ≥ k``. Per label j, two histograms of
K + 1 cells are counted over the reports whose label j is known (−1 = masked: contributes
nothing)::

    pos_j[b] = #{i : y_ij = 1, b(p_ij) = b}        neg_j[b] = #{i : y_ij = 0, b(p_ij) = b}

and all 2·L·(K + 1) cells are released once with independent N(0, s²) noise. Replacing one
report moves, per label, at most one unit out of one cell and one unit into another (fewer if
either entry is masked), so the L2 sensitivity of the whole release is

    Δ₂ = √(2L)                                          (:func:`l2_sensitivity`)

whatever the number of bins; the release is the Gaussian mechanism with noise multiplier s/Δ₂.
Everything after it is post-processing of the noisy cells and costs no privacy, per label:

1. suffix sums S[k] = Σ_{b ≥ k} cell[b] (S[0] the label's positive / negative total; TP(g_k)
   = S_pos[k], FP(g_k) = S_neg[k]);
2. consistency: S is non-increasing and ≥ 0 for true counts, so the noisy S is replaced by its
   least-squares non-increasing fit (pool-adjacent-violators; Hay et al. 2010, "Boosting the
   accuracy of differentially private histograms through consistency"), clamped at 0 and
   rounded to integers (counts are integers; as s → 0 this gives back the exact counts).
   Clamping the *cells* instead would bias every sum upwards by ≈ 0.4·s per empty cell;
3. F1(g_k) = 2·TP / (2·TP + FP + FN) with FN = S_pos[0] − TP (0 when the denominator is 0);
4. the threshold is the grid point of largest F1; ties go to the point closest to 0.5 (the
   rule of `fit_thresholds`, deterministic).

A label with no positive in validation: the non-private code keeps 0.5. Here nothing may look
at the true counts, so there is no such branch: when the fitted positive counts are all 0 the
F1 is 0 at every grid point and the tie rule returns 0.5, the same fallback reached through
the noisy counts only; otherwise the noise picks a threshold (the label's validation F1 is 0
at every threshold anyway).

Not adopted, measured: preferring 0.5 unless another threshold is better by more than the
noise (a "statistical tie" margin, 0.5 to 2 delta-method standard deviations) helps by up to
0.05 macro F1 when 0.5 is nearly optimal and costs 0.01-0.1 on rare labels, where 0.5 is far
off and thresholds matter most; plain argmax has no such prior. The consistency step (2) is
never worse than clamped raw sums and better by up to 0.05 macro F1 (ε = 1 and 10).

Why this mechanism: one Gaussian release of counts serves all thresholds and all labels at the
cost of a single Gaussian mechanism with a tight, simple analysis (exact PLD, composes with
DP-SGD's PLD); F1 needs only TP/FP/FN counts. Selecting by report-noisy-max instead would need
a low-sensitivity utility, which F1 (a ratio) is not.

Grid (why 13 points)
--------------------
The noise on TP(g_k) or FP(g_k) is s·√(K + 1 − k): it grows with the number of bins above the
threshold, while Δ₂ does not depend on the grid. A coarse grid therefore costs no privacy and
removes noise; it costs resolution only where F1 is flat. Measured on three synthetic 14-label
problems (well separated; rare labels; poorly separated rare labels), 300 and 2,000 validation
reports, 20 repeats each: against the 49-point 0.02-step grid of `fit_thresholds`, the grid
{0.02, 0.05, 0.1, 0.2, …, 0.9, 0.95, 0.98} loses ≤ 0.004 macro F1 without noise on the first
two problems (0.012 on the third) and gains −0.008 to +0.045 (median +0.012) with DP noise at
ε = 1 and 10, δ = 1e-5 (its cumulative counts carry up to √14·s of noise instead of √50·s).
A uniform 0.1-step grid loses 0.03-0.05 on the third problem without noise: hence a step of
0.1 in the middle, where F1 is flat, and finer steps towards both ends, where the rare labels
of an underfit DP model put their optimal threshold (0.02-0.1); the range is the non-private
grid's.

Accounting
----------
dp_accounting's PLD, pessimistic (an upper bound up to its discretisation), interval refined to
1e-4·ε as :mod:`radpriv.privacy.replace_one`. The release is a plain Gaussian pair at distance
Δ₂ under replace-one, i.e. ``from_gaussian_mechanism(standard_deviation=s/Δ₂,
neighboring_relation=ADD_OR_REMOVE_ONE)``: dp_accounting's REPLACE_ONE for a plain Gaussian
would double the sensitivity a second time.

Randomness
----------
Fresh OS entropy on every call (:mod:`radpriv.privacy.randomness`), never the logged seed:
pass ``PrivateRandomness(secure=privacy.secure_mode)``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from radpriv.errors import ConfigError, PrivacyError
from radpriv.privacy import replace_one
from radpriv.privacy.replace_one import History

MECHANISM = "gaussian_histogram"
MASKED = -1
DEFAULT_THRESHOLD = 0.5  # the non-private fallback and the tie-break centre
_GRID = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)


# --------------------------------------------------------------------------- grid and counts

def threshold_grid() -> np.ndarray:
    """The fixed, data-independent candidate thresholds (see "Grid" in the module docstring)."""
    return np.array(_GRID, dtype=np.float64)


def l2_sensitivity(n_labels: int) -> float:
    """Δ₂ = √(2L): replace-one moves ≤ 1 unit out of one cell and into another, per label."""
    return math.sqrt(2.0 * _n_labels(n_labels))


def exact_counts(probs: np.ndarray, labels: np.ndarray,
                 grid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pos, neg), each L × (K + 1): the un-noised histograms of the module docstring.

    Never released: the input of :func:`noisy_counts`, and of tests.
    """
    probs, labels = _check_inputs(probs, labels)
    grid = threshold_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    n_bins = len(grid) + 1
    bins = np.searchsorted(grid, probs, side="right")  # #{k : g_k ≤ p}, so p ≥ g_k ⇔ bin ≥ k
    pos = np.zeros((labels.shape[1], n_bins))
    neg = np.zeros((labels.shape[1], n_bins))
    for j in range(labels.shape[1]):
        pos[j] = np.bincount(bins[labels[:, j] == 1, j], minlength=n_bins)
        neg[j] = np.bincount(bins[labels[:, j] == 0, j], minlength=n_bins)
    return pos, neg


def noisy_counts(probs: np.ndarray, labels: np.ndarray, noise_std: float,
                 randomness) -> tuple[np.ndarray, np.ndarray]:
    """The released histograms: :func:`exact_counts` + N(0, noise_std²) on every cell, once."""
    noise_std = _check_noise_std(noise_std)
    pos, neg = exact_counts(probs, labels)
    noise = standard_normal(randomness, 2 * pos.size) * noise_std
    return pos + noise[:pos.size].reshape(pos.shape), neg + noise[pos.size:].reshape(neg.shape)


def standard_normal(randomness, n: int) -> np.ndarray:
    """n standard Gaussians (float64) from a private source of fresh OS entropy.

    ``PrivateRandomness`` (what the pipeline passes): its ``gaussian_like``, i.e. Opacus' noise
    from an OS-seeded generator, or in secure mode ChaCha20 with Opacus' floating-point
    mitigation. ``ChaCha20Stream``: the same mitigation (four draws summed and halved).
    ``numpy.random.Generator``: its ``standard_normal`` (tests; seed it from
    ``randomness.numpy_generator()``, never from config).
    """
    from radpriv.privacy.randomness import ChaCha20Stream, PrivateRandomness

    if isinstance(randomness, PrivateRandomness):
        import torch

        return randomness.gaussian_like(torch.zeros(n, dtype=torch.float64), 1.0).numpy()
    if isinstance(randomness, ChaCha20Stream):
        return sum(randomness.standard_normal(n) for _ in range(4)) / 2.0
    if isinstance(randomness, np.random.Generator):
        return randomness.standard_normal(n)
    raise PrivacyError(f"DP thresholds need PrivateRandomness, ChaCha20Stream or a NumPy Generator "
                       f"seeded from OS entropy, not {type(randomness).__name__}")


# --------------------------------------------------------------------------- post-processing

def thresholds_from_counts(pos: np.ndarray, neg: np.ndarray,
                           grid: np.ndarray | None = None) -> np.ndarray:
    """Per label, the grid threshold of largest F1 from (noisy) histograms: steps 1-4 of the
    module docstring. Pure post-processing; with exact counts it equals `fit_thresholds` on
    the same grid."""
    grid = threshold_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    pos, neg = np.atleast_2d(pos), np.atleast_2d(neg)
    if pos.shape != neg.shape or pos.shape[1] != len(grid) + 1:
        raise PrivacyError(f"histograms must be L × {len(grid) + 1}, got {pos.shape} and {neg.shape}")
    # most central first: np.argmax returns the first maximum, so ties go to the centre
    order = np.argsort(np.abs(grid - DEFAULT_THRESHOLD), kind="stable")
    out = np.empty(pos.shape[0])
    for j in range(pos.shape[0]):
        tp_all = _consistent_suffix_sums(pos[j])  # [0] = positives in all, [k] = TP at g_k
        fp = _consistent_suffix_sums(neg[j])[1:]
        tp = tp_all[1:]
        fn = tp_all[0] - tp
        denom = 2 * tp + fp + fn
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)
        out[j] = grid[order[np.argmax(f1[order])]]
    return out


def _consistent_suffix_sums(cells: np.ndarray) -> np.ndarray:
    """Suffix sums of one noisy histogram, made consistent: non-increasing, ≥ 0, integer."""
    suffix = np.cumsum(np.asarray(cells, dtype=np.float64)[::-1])[::-1]
    return np.round(np.maximum(_non_increasing_fit(suffix), 0.0))


def _non_increasing_fit(y: np.ndarray) -> np.ndarray:
    """Least-squares non-increasing fit (pool-adjacent-violators, equal weights)."""
    means: list[float] = []
    sizes: list[int] = []
    for value in y:
        means.append(float(value))
        sizes.append(1)
        # a block above its predecessor violates "non-increasing": pool them
        while len(means) > 1 and means[-1] > means[-2]:
            m, w = means.pop(), sizes.pop()
            means[-1] = (means[-1] * sizes[-1] + m * w) / (sizes[-1] + w)
            sizes[-1] += w
    return np.repeat(means, sizes)


# --------------------------------------------------------------------------- the mechanism

def dp_fit_thresholds(probs: np.ndarray, labels: np.ndarray, noise_std: float,
                      randomness) -> np.ndarray:
    """L DP thresholds from validation scores ``probs`` and labels (n × L; 1, 0, −1 masked).

    (ε, δ) = :func:`threshold_epsilon` (noise_std, L, δ) under replace-one adjacency of the
    validation reports; get ``noise_std`` from :func:`calibrate_threshold_noise`.
    """
    pos, neg = noisy_counts(probs, labels, noise_std, randomness)
    return thresholds_from_counts(pos, neg)


def release_record(noise_std: float, n_labels: int, delta: float) -> dict[str, float | int | str]:
    """What the caller logs about one release (all public: no data in it)."""
    grid = threshold_grid()
    return {"mechanism": MECHANISM, "noise_std": float(noise_std),
            "l2_sensitivity": l2_sensitivity(n_labels),
            "noise_multiplier": float(noise_std) / l2_sensitivity(n_labels),
            "grid_size": len(grid), "n_bins": len(grid) + 1,
            "grid": ",".join(f"{g:g}" for g in grid), "n_labels": int(n_labels),
            "delta": float(delta), "epsilon": threshold_epsilon(noise_std, n_labels, delta),
            "relation": "replace_one"}


# --------------------------------------------------------------------------- accounting

def threshold_epsilon(noise_std: float, n_labels: int, delta: float) -> float:
    """Upper bound on ε at δ of one release with noise std ``noise_std`` over L labels.

    The Gaussian mechanism of sensitivity Δ₂ = √(2L) and std s: the pair N(0, (s/Δ₂)²) vs
    N(1, (s/Δ₂)²), by dp_accounting's pessimistic PLD.
    """
    noise_std = _check_noise_std(noise_std, allow_zero=True)
    if noise_std == 0:
        return math.inf
    return _unit_gaussian_epsilon(noise_std / l2_sensitivity(n_labels), _check_delta(delta))


def calibrate_threshold_noise(epsilon: float, delta: float, n_labels: int) -> float:
    """The smallest noise std s (within 1 %) whose release is (ε, δ)-DP under replace-one.

    Returns s with threshold_epsilon(s) ∈ [0.99·ε, ε]. ε depends on s only through the noise
    multiplier z = s/Δ₂, so z is found (geometric bisection on the PLD upper bound) and s = z·Δ₂.
    """
    epsilon = float(epsilon)
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"the thresholds' ε must be a positive number, got {epsilon}")
    delta = _check_delta(delta)
    sensitivity = l2_sensitivity(n_labels)

    def eps(z: float) -> float:
        return _unit_gaussian_epsilon(z, delta)

    lo, hi = 0.5, 2.0  # bracket: eps(lo) > ε ≥ eps(hi)
    while eps(hi) > epsilon:
        lo, hi = hi, hi * 2
    while eps(lo) <= epsilon:
        lo, hi = lo / 2, lo
        if lo < 1e-6:
            raise ConfigError(f"ε = {epsilon} at δ = {delta} needs no noise to speak of: lower it")
    while eps(hi) < 0.99 * epsilon and hi / lo > 1 + 1e-9:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if eps(mid) > epsilon else (lo, mid)
    return hi * sensitivity


def composed_epsilon(training_history: History, noise_std: float, n_labels: int,
                     delta: float) -> float:
    """ε at δ of the DP-SGD run and the threshold release, both published: PLD composition.

    DP-SGD's PLD is built as :mod:`radpriv.privacy.replace_one` builds it (REPLACE_ONE,
    Poisson-subsampled Gaussian, connect-the-dots, pessimistic), the threshold release's as in
    :func:`threshold_epsilon`, and the two are composed on one discretisation interval.

    Why compose rather than state ε_train for training reports and ε_thr for validation reports
    (parallel composition, max(ε_train, ε_thr)): the composed ε is one statement for the union
    of the two splits, valid whichever split the target report is in and without relying on
    the model being independent of the validation reports or on which split holds the target.
    It is conservative: ≥ each part, ≤ their sum.
    """
    noise_std = _check_noise_std(noise_std, allow_zero=True)
    delta = _check_delta(delta)
    history = tuple((float(s), float(q), int(t)) for s, q, t in training_history)
    if noise_std == 0 or any(sigma == 0 for sigma, _, _ in history):
        return math.inf
    return _composed(history, noise_std / l2_sensitivity(n_labels), delta)


@functools.lru_cache(maxsize=512)
def _unit_gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    return replace_one.refined_epsilon(lambda interval: _threshold_pld(noise_multiplier, interval), delta)


@functools.lru_cache(maxsize=128)
def _composed(history: History, noise_multiplier: float, delta: float) -> float:
    def build(interval: float):
        pld = _threshold_pld(noise_multiplier, interval)
        return pld.compose(replace_one.dpsgd_pld(history, interval)) if history else pld

    return replace_one.refined_epsilon(build, delta)


def _threshold_pld(noise_multiplier: float, interval: float):
    from dp_accounting import NeighboringRelation
    from dp_accounting.pld import privacy_loss_distribution as pld

    # plain pair at distance Δ₂ (folded into the multiplier): ADD_OR_REMOVE_ONE, not REPLACE_ONE
    return pld.from_gaussian_mechanism(
        standard_deviation=noise_multiplier, value_discretization_interval=interval,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE, pessimistic_estimate=True)


# --------------------------------------------------------------------------- input checks

def _n_labels(n_labels: int) -> int:
    if isinstance(n_labels, bool) or int(n_labels) != n_labels or n_labels < 1:
        raise ConfigError(f"the number of labels must be a positive integer, got {n_labels}")
    return int(n_labels)


def _check_delta(delta: float) -> float:
    delta = float(delta)
    if not 0 < delta < 1:
        raise ConfigError(f"δ must be in (0, 1), got {delta}")
    return delta


def _check_noise_std(noise_std: float, allow_zero: bool = False) -> float:
    noise_std = float(noise_std)
    if not math.isfinite(noise_std) or noise_std < 0 or (noise_std == 0 and not allow_zero):
        raise PrivacyError(f"DP thresholds need a finite noise std > 0, got {noise_std}: "
                           "zero would release the validation counts exactly")
    return noise_std


def _check_inputs(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape != labels.shape:
        raise PrivacyError(f"scores and labels must both be n × L, got {probs.shape} and {labels.shape}")
    if not np.isfinite(probs).all():
        raise PrivacyError("validation scores must be finite (a NaN score is a model bug)")
    if not np.isin(labels, (MASKED, 0, 1)).all():
        # Δ₂ = √(2L) assumes each entry lands in at most one cell
        raise PrivacyError("validation labels must be 1, 0 or -1 (masked)")
    return probs, labels.astype(np.int64)
