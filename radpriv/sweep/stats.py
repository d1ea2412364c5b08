"""Statistics of the sweep: mean ± sd over seeds, bootstrap CIs, paired bootstrap tests, Holm.

The unit of resampling is the test report. A cell's estimate is the mean over its seeds of a
metric on each seed's test split; a bootstrap replicate redraws every test split's reports with
replacement and recomputes that mean. Seeds (and cells) that share a test split share its
redraws: that is what makes the comparison of two cells *paired* — each replicate scores both
on the very same reports — and what keeps seeds with one fixed test set (Open-i) from being
treated as independent samples.

F1 is recomputed from per-label counts weighted by how often each report was drawn, so a
replicate costs a matrix product instead of a pass over the predictions; it matches
torchmetrics (radpriv.model.metrics) exactly, unknown (−1) labels left out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

METRICS = ("f1_weighted", "f1_micro", "f1_macro")


@dataclass(frozen=True)
class SeedPredictions:
    """One seed of one cell: binary test predictions and the labels they are scored against."""

    seed: int
    test_key: str  # identifies the test split (hash of its report ids): equal keys, same reports
    preds: np.ndarray  # (n_test, n_labels) 0/1
    labels: np.ndarray  # (n_test, n_labels) 1/0/−1


def test_key(ids: Sequence[str]) -> str:
    """A name for a test split: the hash of its report ids, in order (never the ids themselves)."""
    return hashlib.sha256("\x1f".join(ids).encode()).hexdigest()[:16]


def _indicators(preds: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = np.asarray(preds).astype(bool)
    y = np.asarray(labels)
    pos, neg = y == 1, y == 0  # −1 (unknown) is neither: it counts nowhere
    return (p & pos).astype(np.float64), (p & neg).astype(np.float64), (~p & pos).astype(np.float64)


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """Counts of shape (..., L) → weighted/micro/macro F1 of shape (...) and per-label (..., L).

    zero_division = 0 as in radpriv.model.metrics; macro averages every label; weighted
    weighs each label by its support (tp + fn).
    """
    denom = 2 * tp + fp + fn
    per_label = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    support = tp + fn
    total = support.sum(-1)
    weighted = np.divide((per_label * support).sum(-1), total, out=np.zeros_like(total), where=total > 0)
    mtp, mden = tp.sum(-1), denom.sum(-1)
    micro = np.divide(2 * mtp, mden, out=np.zeros_like(mtp), where=mden > 0)
    return {"f1_weighted": weighted, "f1_micro": micro, "f1_macro": per_label.mean(-1), "per_label": per_label}


def f1_scores(preds: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """F1 of predictions; with `weights` (B, n) — how often each report is drawn — one value per
    replicate."""
    tp, fp, fn = _indicators(preds, labels)
    if weights is None:
        return _f1_from_counts(tp.sum(0), fp.sum(0), fn.sum(0))
    return _f1_from_counts(weights @ tp, weights @ fp, weights @ fn)


class Bootstrap:
    """The redraws of each test split, made once and shared by every cell scored on it."""

    def __init__(self, n_resamples: int = 1000, seed: int = 0):
        if int(n_resamples) < 1:
            raise ValueError("n_resamples must be ≥ 1")
        self.n_resamples = int(n_resamples)
        self.seed = int(seed)
        self._weights: dict[tuple[str, int], np.ndarray] = {}

    def indices(self, key: str, n: int) -> np.ndarray:
        """(B, n) report indices drawn with replacement; a function of (seed, split) only."""
        rng = np.random.default_rng([self.seed, int(key[:15], 16) if key else 0])
        return rng.integers(0, n, size=(self.n_resamples, n))

    def weights(self, key: str, n: int) -> np.ndarray:
        if (key, n) not in self._weights:
            idx = self.indices(key, n)
            w = np.zeros((self.n_resamples, n))
            np.add.at(w, (np.repeat(np.arange(self.n_resamples), n), idx.ravel()), 1.0)
            self._weights[(key, n)] = w
        return self._weights[(key, n)]

    def replicates(self, seeds: Sequence[SeedPredictions], metric: str) -> np.ndarray:
        """(B,) the mean over seeds of `metric`, per replicate."""
        per_seed = [f1_scores(s.preds, s.labels, self.weights(s.test_key, len(s.labels)))[metric]
                    for s in seeds]
        return np.mean(per_seed, axis=0)


def point(seeds: Sequence[SeedPredictions], metric: str) -> tuple[float, float]:
    """Mean over seeds of the metric on the whole test split, and the sd over seeds (ddof 1;
    NaN for a single seed)."""
    values = [float(f1_scores(s.preds, s.labels)[metric]) for s in seeds]
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return float(np.mean(values)), sd


def summarize(boot: Bootstrap, seeds: Sequence[SeedPredictions], alpha: float = 0.05) -> dict[str, float]:
    """Per metric: mean, sd over seeds, and the percentile bootstrap (1 − alpha) CI."""
    out: dict[str, float] = {"n_seeds": len(seeds)}
    for metric in METRICS:
        mean, sd = point(seeds, metric)
        reps = boot.replicates(seeds, metric)
        lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
        out.update({f"{metric}_mean": mean, f"{metric}_sd": sd, f"{metric}_ci_low": float(lo),
                    f"{metric}_ci_high": float(hi)})
    return out


def per_label_mean(seeds: Sequence[SeedPredictions]) -> np.ndarray:
    """(L,) per-label F1 on the whole test split, mean over seeds (the heatmap)."""
    return np.mean([f1_scores(s.preds, s.labels)["per_label"] for s in seeds], axis=0)


def _paired(a: Sequence[SeedPredictions], b: Sequence[SeedPredictions]) -> tuple[list, list]:
    by_seed = {s.seed: s for s in b}
    pairs_a, pairs_b = [], []
    for s in a:
        other = by_seed.get(s.seed)
        if other is None or other.test_key != s.test_key:
            continue  # a pair exists only on the same test reports
        pairs_a.append(s)
        pairs_b.append(other)
    return pairs_a, pairs_b


def paired_test(boot: Bootstrap, a: Sequence[SeedPredictions], b: Sequence[SeedPredictions],
                metric: str = "f1_weighted", alpha: float = 0.05) -> dict[str, float] | None:
    """Paired bootstrap test of H0: metric(a) = metric(b), over the seeds both have.

    d = mean_s metric(a_s) − mean_s metric(b_s) on the full test splits; d*_r the same on
    replicate r (both cells scored on the same redrawn reports). Two-sided p-value of the
    shifted (null-centred) bootstrap distribution, Efron & Tibshirani (1993) §16.4:
        p = (1 + #{r : |d*_r − d| ≥ |d|}) / (B + 1)
    (the +1 keeps p > 0: B replicates cannot show a smaller p). None when no seed pairs.
    """
    pa, pb = _paired(a, b)
    if not pa:
        return None
    d = point(pa, metric)[0] - point(pb, metric)[0]
    reps = boot.replicates(pa, metric) - boot.replicates(pb, metric)
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    p = (1 + int(np.sum(np.abs(reps - d) >= abs(d) - 1e-12))) / (len(reps) + 1)
    return {"diff": float(d), "diff_ci_low": float(lo), "diff_ci_high": float(hi), "p": float(p),
            "n_pairs": len(pa)}


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> list[float]:
    """Holm-adjusted p-values (family-wise error rate ≤ alpha over the whole family).

    statsmodels' `multipletests` rather than a hand-written step-down loop: it is the
    maintained, tested reference implementation.
    """
    if not len(pvalues):
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(list(pvalues), alpha=alpha, method="holm")[1]]
