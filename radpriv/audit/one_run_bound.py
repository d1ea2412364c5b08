"""The one-run ε lower bound of Steinke, Nasr & Jagielski (NeurIPS 2023, arXiv 2305.08846).

m canaries, each included in training independently with probability ½. After training, an
auditor guesses "in" for some canaries and "out" for others (abstaining on the rest): r guesses,
v of them correct. Under (ε, δ)-DP the number of correct guesses is stochastically dominated by
Binomial(r, e^ε/(1+e^ε)) up to a δ-term (their Theorem 5.2 / Proposition 5.7):

    P[≥ v correct] ≤ P[Binomial(r, q) ≥ v] + 2·m·δ · max_{1≤i≤v} P[v−i ≤ Binomial(r, q) < v] / i,
    q = e^ε / (1 + e^ε).

The audit reports the largest ε whose null hypothesis "the training was (ε, δ)-DP" this
observation still rejects at the chosen confidence: a *lower* bound on the true ε that holds
with that confidence. This follows the paper's appendix code (`p_value_DP_audit`,
`get_eps_audit`; the same formula is `_one_run_p_value` in google-deepmind/jax_privacy
`jax_privacy/auditing.py`), re-implemented here in ~40 lines rather than imported: jax_privacy
needs JAX, which radpriv does not otherwise install. k+ and k− must be fixed before the scores
are seen (as in the paper's experiments); choosing them afterwards would need a correction.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom

from radpriv.errors import ConfigError


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[≥ v of r guesses correct] under the null hypothesis "the training was (ε, δ)-DP"."""
    if not 0 <= v <= r <= m:
        raise ConfigError(f"audit: need 0 ≤ correct ({v}) ≤ guesses ({r}) ≤ canaries ({m})")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ConfigError(f"audit: need ε ≥ 0 and 0 ≤ δ ≤ 1 (got ε={epsilon}, δ={delta})")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of ε-DP randomised response
    beta = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) ≥ v]
    if delta == 0 or v == 0:
        return min(1.0, beta)
    i = np.arange(1, v + 1)
    # cumulative P[v − i ≤ Binomial(r, q) < v] for i = 1..v, averaged over i; its max is α
    alpha = float(np.max(np.cumsum(binom.pmf(v - i, r, q)) / i))
    return min(1.0, beta + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95,
                        iterations: int = 50) -> float:
    """The largest ε rejected at `confidence` (0 if even ε = 0 is not rejected).

    Bisection on ε (p_value grows with ε), as the paper's get_eps_audit; 50 halvings of the
    bracket leave an error far below any digit reported.
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"audit.confidence={confidence}: must be in (0, 1)")
    level = 1.0 - confidence
    if r == 0 or p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    lo, hi = 0.0, 1.0  # invariant: p(lo) < level ≤ p(hi)
    while p_value(m, r, v, hi, delta) < level:
        lo, hi = hi, hi * 2
        if hi > 1e4:  # unreachable for finite r (q^r → 1), kept as a guard against a loop
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

    Ties are broken by canary order (a stable sort), which does not depend on membership.
    """
    scores, members = np.asarray(scores, dtype=float), np.asarray(members, dtype=bool)
    m = len(scores)
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > m:
        raise ConfigError(f"audit: k_plus={k_plus} + k_minus={k_minus} must be ≤ canaries ({m})")
    if not np.isfinite(scores).all():
        raise ValueError("audit: a canary score is not finite")
    order = np.argsort(-scores, kind="stable")
    top, bottom = order[:k_plus], order[m - k_minus:]
    correct = int(members[top].sum()) + int((~members[bottom]).sum())
    return k_plus + k_minus, correct
