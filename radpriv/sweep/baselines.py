"""Classical baselines on the sweep's splits: what a user would otherwise pick.

- `tfidf_logreg`: TF-IDF (vocabulary and idf fitted on the training reports) + one logistic
  regression per label (scikit-learn). Non-private.
- `dp_logreg`: ε-differentially private logistic regression per label (diffprivlib's
  objective perturbation, Chaudhuri et al. 2011) on a *data-independent* featuriser.

Why the DP baseline cannot reuse TF-IDF: a vocabulary, idf weights or a feature scaler fitted
on the private training reports are functions of them released without noise (a rare word in
the vocabulary says a report contained it). `HashingVectorizer` maps text to features by a
fixed hash, and its l2 row normalisation bounds every report's feature norm by 1, which is
the `data_norm` the DP analysis needs — no statistic of the training set is computed.

Privacy budget: the classifier is L per-label regressions on the same reports, so their
guarantees compose; each gets ε/L (basic composition), and the whole classifier is ε-DP under
replace-one adjacency (objective perturbation's proof), the relation of radpriv's guarantee.
diffprivlib's BudgetAccountant hands out the shares and refuses any overspend
(docs/PRIVACY.md, "Baselines and the sweep").

Noise: drawn from fresh OS entropy at every call (`noise_state`), never from the sweep's seed,
which is published; there is no switch to make it reproducible.

Both return test-set label probabilities and per-label thresholds chosen like the neural
models' (`trainer.thresholds`: on the validation split, or 0.5).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from radpriv.data.table import MASKED, ReportTable
from radpriv.errors import ConfigError
from radpriv.model.metrics import DEFAULT_THRESHOLD, fit_thresholds
from radpriv.privacy import randomness

DATA_NORM = 1.0  # every hashed report is l2-normalised to norm ≤ 1 (then clipped to it anyway)


@dataclass
class BaselineOutput:
    """A baseline's test probabilities and thresholds (kept in memory, never logged)."""

    probs_test: np.ndarray
    thresholds: np.ndarray
    epsilon_per_label: list[float] = field(default_factory=list)  # DP only
    epsilon_spent: float | None = None  # DP only: what the accountant recorded


def _texts(table: ReportTable, split: str) -> list[str]:
    return [t for t, s in zip(table.texts, table.split) if s == split]


def _labels(table: ReportTable, split: str) -> np.ndarray:
    return table.labels[np.array([s == split for s in table.split], dtype=bool)]


def _thresholds(mode: str, probs_val: np.ndarray, labels_val: np.ndarray) -> np.ndarray:
    """The neural models' rule: F1-optimal per label on validation, or a fixed 0.5."""
    if mode == "fixed" or len(labels_val) == 0:
        return np.full(labels_val.shape[1], DEFAULT_THRESHOLD)
    if mode != "validation":
        raise ConfigError(f"trainer.thresholds={mode!r}: expected validation or fixed")
    return fit_thresholds(probs_val, labels_val)


def tfidf_logreg(table: ReportTable, *, thresholds: str = "validation", ngram_max: int = 2,
                 min_df: int = 2, C: float = 1.0, max_iter: int = 1000) -> BaselineOutput:
    """TF-IDF + one logistic regression per label (one-vs-rest), non-private.

    Labels are fitted one at a time rather than through OneVsRestClassifier because each
    label keeps only its known rows (−1 = unknown is left out, as in the neural loss).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train_texts = _texts(table, "train")
    vec = TfidfVectorizer(ngram_range=(1, int(ngram_max)), min_df=int(min_df), sublinear_tf=True)
    try:
        x_train = vec.fit_transform(train_texts)
    except ValueError:  # min_df above what a tiny training split offers: keep every term
        vec = TfidfVectorizer(ngram_range=(1, int(ngram_max)), sublinear_tf=True)
        x_train = vec.fit_transform(train_texts)
    y_train = _labels(table, "train")
    x_val, x_test = vec.transform(_texts(table, "val")), vec.transform(_texts(table, "test"))
    n_labels = table.num_labels
    p_val = np.zeros((x_val.shape[0], n_labels))
    p_test = np.zeros((x_test.shape[0], n_labels))
    for j in range(n_labels):
        known = y_train[:, j] != MASKED
        y = (y_train[known, j] == 1).astype(int)
        if y.min(initial=0) == y.max(initial=0):  # one class only: a constant predictor
            p_val[:, j] = p_test[:, j] = float(y.mean()) if len(y) else 0.0
            continue
        clf = LogisticRegression(C=float(C), max_iter=int(max_iter)).fit(x_train[known], y)
        p_val[:, j] = clf.predict_proba(x_val)[:, 1]
        p_test[:, j] = clf.predict_proba(x_test)[:, 1]
    return BaselineOutput(p_test, _thresholds(thresholds, p_val, _labels(table, "val")))


def hashing_features(texts: list[str], n_features: int, ngram_max: int = 2) -> np.ndarray:
    """Dense l2-normalised hashed n-gram counts: a fixed function of each report alone."""
    from sklearn.feature_extraction.text import HashingVectorizer

    vec = HashingVectorizer(n_features=int(n_features), ngram_range=(1, int(ngram_max)), norm="l2",
                            alternate_sign=False)
    return vec.transform(texts).toarray()


def _diffprivlib():
    """Import diffprivlib's pieces used here, working around its 0.6.6 release on scikit-learn 1.9.

    diffprivlib imports its random-forest module eagerly, and that module imports two dtype
    aliases (`DOUBLE`, `DTYPE`) that scikit-learn 1.9 removed from `sklearn.tree._tree`. They
    were plain aliases of float64/float32; radpriv adds them back only when absent (the forest
    code is never used here). Its `LogisticRegression` class cannot be built on scikit-learn
    ≥ 1.8 either (`multi_class` is gone), so `dp_logreg` calls the function that class's `fit`
    calls per class, `_logistic_regression_path`, with the same arguments.
    """
    import sklearn.tree._tree as sk_tree

    for name, dtype in (("DOUBLE", np.float64), ("DTYPE", np.float32)):
        if not hasattr(sk_tree, name):
            setattr(sk_tree, name, dtype)
    from diffprivlib.accountant import BudgetAccountant
    from diffprivlib.models.logistic_regression import _logistic_regression_path
    from diffprivlib.validation import clip_to_norm

    return BudgetAccountant, _logistic_regression_path, clip_to_norm


def per_label_epsilons(epsilon: float, n_labels: int) -> tuple[list[float], float]:
    """ε/L per label through diffprivlib's accountant (basic composition); (shares, total spent).

    `remaining(k)` gives the largest equal share of what is left for k more queries, so float
    rounding can never make the shares sum above ε (the accountant would refuse it).
    """
    budget_accountant, _, _ = _diffprivlib()
    if not (epsilon > 0 and np.isfinite(epsilon)):
        raise ConfigError(f"DP logistic regression: ε={epsilon} must be a finite number > 0")
    acc = budget_accountant(epsilon=float(epsilon), delta=0)
    shares = []
    for j in range(n_labels):
        share, _ = acc.remaining(n_labels - j)
        acc.spend(share, 0)
        shares.append(float(share))
    return shares, float(acc.total()[0])


def noise_state() -> np.random.RandomState:
    """The generator of one call's objective-perturbation noise: a RandomState (what diffprivlib
    takes) on MT19937 seeded with 128 bits of fresh OS entropy, never logged.

    128 bits rather than a 32-bit integer seed: an adversary who knows every report but one could
    otherwise try all 2³² seeds and recognise the published coefficients. MT19937 is the default
    strength of radpriv/privacy/randomness.py (as DP-SGD's default generator): unpredictable
    without the process's memory, not cryptographically secure.
    """
    return np.random.RandomState(np.random.MT19937(randomness.fresh_seed(128)))


def dp_logreg(table: ReportTable, epsilon: float, *, thresholds: str = "validation",
              n_features: int = 512, ngram_max: int = 2, C: float = 1.0, max_iter: int = 100,
              tol: float = 1e-4) -> BaselineOutput:
    """ε-DP one-vs-rest logistic regression on hashed features (module docstring).

    No seed: the only randomness is the privacy noise (hashing and L-BFGS are deterministic),
    and it comes from `noise_state()`, fresh at every call.

    Every label is fitted, whether or not its training column holds a positive: skipping a
    label because it has none would publish that fact without noise. The number of known
    entries per label (N, less MIMIC-CXR's unknown ones) is treated as public, as N is in
    DP-SGD.
    """
    _, lr_path, clip_to_norm = _diffprivlib()
    shares, spent = per_label_epsilons(epsilon, table.num_labels)
    x_train = clip_to_norm(hashing_features(_texts(table, "train"), n_features, ngram_max), DATA_NORM)
    x_val = hashing_features(_texts(table, "val"), n_features, ngram_max)
    x_test = hashing_features(_texts(table, "test"), n_features, ngram_max)
    y_train = _labels(table, "train")
    rng = noise_state()
    coefs = np.zeros((table.num_labels, x_train.shape[1] + 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence warnings on noisy objectives
        for j, share in enumerate(shares):
            known = y_train[:, j] != MASKED
            if not known.any():  # nothing to fit (every entry unknown): the zero model, p = ½
                continue
            y = (y_train[known, j] == 1).astype(np.float64)
            path, _, _ = lr_path(x_train[known], y, epsilon=share, data_norm=DATA_NORM, pos_class=1.0,
                                 Cs=[float(C)], fit_intercept=True, max_iter=int(max_iter), tol=float(tol),
                                 random_state=rng, check_input=True)
            coefs[j] = np.asarray(path)[0]

    def proba(x: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        return expit(x @ coefs[:, :-1].T + coefs[:, -1])

    return BaselineOutput(proba(x_test), _thresholds(thresholds, proba(x_val), _labels(table, "val")),
                          epsilon_per_label=shares, epsilon_spent=spent)
