"""ε under replace-one adjacency: the relation that holds when the training-set size N is public.

Why replace-one
---------------
A private run publishes q = b/N, the number of steps, δ = 1/N^1.1 and the size of the
training split. Under add/remove adjacency the two neighbouring datasets have N and N ± 1
records, and an adversary tells them apart from N alone, whatever the noise. With N public the
guarantee that holds is *replace-one*: neighbouring datasets have the same size and differ in
one record. radpriv states its guarantee under replace-one (docs/PRIVACY.md, "Adjacency").

The mechanism and its dominating pair
-------------------------------------
One DP-SGD step samples each record with probability q and adds N(0, σ²C²) to the sum of
clipped gradients. Replacing record x by x' changes the sum by g(x) (if x is drawn) and by
−g(x') (if x' is drawn); the worst case is g(x) = −g(x') of norm C, so one step is the pair

    P = (1 − q)·N(0, σ²) + q·N(−1, σ²)     vs     Q = (1 − q)·N(0, σ²) + q·N(+1, σ²)

(in units of C), the pair dp_accounting's ``GaussianPrivacyLoss`` uses for its ``REPLACE``
adjacency. For q = 1 it is a Gaussian with sensitivity 2: the same noise buys about half the
privacy of add/remove at small ε (σ = 21.35, q = 0.0981, 88 steps, δ = 1.75e-4: 0.218 against
0.099).

Accountant
----------
Google's ``dp_accounting`` PLD accountant with ``NeighboringRelation.REPLACE_ONE`` and
pessimistic rounding (every rounding towards more privacy loss: an upper bound up to its
discretisation), discretisation interval 1e-4·ε, as the add/remove cross-check uses. Neither
of Opacus' accountants nor dp_accounting's RDP accountant analyses Poisson sampling under
replace-one, so this is the one maintained implementation there is. The cross-check
(:mod:`radpriv.privacy.independent_check`) brackets it between the add/remove ε of the same
steps (below) and the replace-one Rényi-DP bound integrated by radpriv itself
(:mod:`radpriv.privacy.replace_one_rdp`, above).
"""

from __future__ import annotations

import functools
import math

#: PLD value discretisation interval relative to ε (as the add/remove cross-check).
REL_DISCRETIZATION = 1e-4

History = tuple[tuple[float, float, int], ...]


def dpsgd_pld(history: History, interval: float):
    """dp_accounting's PLD of the DP-SGD steps in ``history`` under replace-one (pessimistic,
    connect-the-dots)."""
    from dp_accounting import NeighboringRelation
    from dp_accounting.pld import privacy_loss_distribution as pld

    composed = None
    for sigma, q, steps in history:
        one = pld.from_gaussian_mechanism(
            standard_deviation=sigma, sampling_prob=q, value_discretization_interval=interval,
            neighboring_relation=NeighboringRelation.REPLACE_ONE, use_connect_dots=True,
            pessimistic_estimate=True).self_compose(int(steps))
        composed = one if composed is None else composed.compose(one)
    return composed


def refined_epsilon(build, delta: float, rel: float = REL_DISCRETIZATION) -> float:
    """ε at δ of the PLD ``build(interval)``, the interval refined until it is at most 1.5·rel of
    the ε it yields, whatever its magnitude (0.01 to 10): two or three passes."""
    interval = 1e-3
    value = float(build(interval).get_epsilon_for_delta(delta))
    for _ in range(5):
        if value <= 0 or interval <= 1.5 * rel * value:
            break
        interval = max(rel * value, 1e-9)
        value = float(build(interval).get_epsilon_for_delta(delta))
    return max(value, 0.0)


@functools.lru_cache(maxsize=512)
def epsilon(history: History, delta: float) -> float:
    """Upper bound on ε at δ of the DP-SGD steps in ``history`` under replace-one adjacency.

    ``history``: canonical ``((σ, q, steps), ...)`` (radpriv.privacy.privacy_params normalises it).
    """
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return math.inf
    return refined_epsilon(lambda interval: dpsgd_pld(history, interval), delta)
