"""The one-run ε lower bound of Steinke, Nasr & Jagielski (NeurIPS 2023, arXiv 2305.08846).

m canaries, each included in training independently with probability ½. After training, an
auditor guesses "in" for some canaries and "out" for others (abstaining on the rest): r guesses,
v of them correct. Under (ε, δ)-DP the number of correct guesses is dominated by
Binomial(r, e^ε/(1+e^ε)) up to a δ-term (their Theorem 5.2); the audit reports the largest ε
that this observation still rejects at the chosen confidence — a *lower* bound on the true ε
that holds with that confidence.

Written here (about 30 lines, following the paper's Algorithm / appendix p-value) rather than
taken from a library: the maintained implementation (jax_privacy.auditing) needs JAX.
"""

from __future__ import annotations

import math

from scipy.stats import binom

from radpriv.errors import ConfigError


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[≥ v of r guesses correct] under the null hypothesis "the training was (ε, δ)-DP"."""
    if not 0 <= v <= r <= m:
        raise ConfigError(f"audit: need 0 ≤ correct ({v}) ≤ guesses ({r}) ≤ canaries ({m})")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of ε-DP randomised response
    tail = float(binom.sf(v - 1, r, q))
    # the δ-term: the largest average over i of P[v - i ≤ Binomial(r, q) < v], times 2mδ
    alpha, acc = 0.0, 0.0
    for i in range(1, v + 1):
        acc += float(binom.pmf(v - i, r, q))
        alpha = max(alpha, acc / i)
    return min(1.0, tail + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95,
                        iterations: int = 40) -> float:
    """The largest ε rejected at `confidence` (0 if even ε = 0 is not rejected)."""
    if not 0 < confidence < 1:
        raise ConfigError(f"audit.confidence={confidence}: must be in (0, 1)")
    level = 1.0 - confidence
    if r == 0 or p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    lo, hi = 0.0, 1.0  # invariant: p(lo) < level ≤ p(hi)
    while p_value(m, r, v, hi, delta) < level:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            return math.inf
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) < level:
            lo = mid
        else:
            hi = mid
    return lo


def guesses(scores, members, k_plus: int, k_minus: int) -> tuple[int, int]:
    """Guess "in" for the k_plus highest scores and "out" for the k_minus lowest: (r, v).

    k_plus and k_minus are fixed before looking at the scores (choosing them after would need
    a correction for the choice).
    """
    import numpy as np

    scores, members = np.asarray(scores, dtype=float), np.asarray(members, dtype=bool)
    m = len(scores)
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > m:
        raise ConfigError(f"audit: k_plus={k_plus} + k_minus={k_minus} must be ≤ canaries ({m})")
    order = np.argsort(-scores, kind="stable")
    top, bottom = order[:k_plus], order[m - k_minus:] if k_minus else order[:0]
    correct = int(members[top].sum()) + int((~members[bottom]).sum())
    return k_plus + k_minus, correct
