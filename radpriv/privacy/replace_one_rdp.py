"""Rényi DP of one Poisson-subsampled Gaussian step under replace-one adjacency, computed numerically.

What it is
----------
One DP-SGD step under replace-one adjacency is dominated by the pair (in units of the clipping
norm; :mod:`radpriv.privacy.replace_one` explains why)

    P = (1 − q)·N(0, σ²) + q·N(−1, σ²)     vs     Q = (1 − q)·N(0, σ²) + q·N(+1, σ²),

the pair dp_accounting's PLD accountant uses for ``REPLACE_ONE``. :func:`rdp` returns its
Rényi divergence D_α(P‖Q) (= D_α(Q‖P): the pair is a reflection of itself) at each order α.
Neither Opacus nor dp_accounting computes it (dp_accounting's RDP accountant does not accept
``REPLACE_ONE`` for a Poisson-sampled Gaussian), and it has no closed form for q < 1, so it is
integrated here.

How
---
D_α = log(I)/(α − 1) with I = ∫ exp(L(y)) dy, L = α·log P + (1 − α)·log Q. Writing
log P = log φ(y) + a(y), log Q = log φ(y) + b(y) with a, b the log of the mixtures relative to
φ = N(0, σ²) keeps L exact where both densities underflow. Facts used (α > 1):

- L is increasing for y < −(2α − 1) and decreasing for y > 1 (the mixtures' log-derivatives are
  averages of their components'), and beyond these points it falls at least like a Gaussian of
  width σ. So the integral over [−(2α − 1) − 12σ, 1 + 12σ] misses at most
  e^{L(end)}·σ·√(π/2) at each end, and that bound is added.
- L varies on two scales: σ (the Gaussians) and σ² (where one mixture component takes over from
  the other). The trapezoid rule with step h = min(σ, σ²)/8, exponentially accurate for such
  smooth, fast-decaying integrands, is compared with the same sum at step 2h; their difference
  is added as the error bar. An order whose error bar exceeds 1e-6 of I is retried at half the
  step, up to :data:`MAX_POINTS` points; beyond that it is +∞ (always a valid RDP bound).
- Floating-point rounding: a further 1e-12·I for the sums, and 16 ulps of the largest term of L
  (wherever the integrand matters) added to log I.

Every margin raises I, so numerical error can only raise the value; the result is finally made
non-decreasing in α (D_α is; the running maximum of upper bounds is still an upper bound).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from radpriv.errors import ConfigError

#: most grid points one order may use; beyond, that order's RDP is +∞
MAX_POINTS = 1 << 21
#: half-widths (in σ) of the integration range beyond the region where the integrand may peak
TAIL_SIGMAS = 12.0
#: the trapezoid error bar may be at most this fraction of I (else the step is halved)
MAX_REL_ERROR = 1e-6
#: margin for the rounding of the sums, relative to I
ROUNDING_MARGIN = 1e-12


def _check(sample_rate: float, noise_multiplier: float, orders: np.ndarray) -> None:
    if not 0.0 <= sample_rate <= 1.0:
        raise ConfigError(f"sample rate q={sample_rate!r} must be in [0, 1]")
    if not noise_multiplier >= 0.0:
        raise ConfigError(f"noise multiplier σ={noise_multiplier!r} must be ≥ 0")
    if orders.ndim != 1 or not np.all(orders > 1.0) or not np.all(np.isfinite(orders)):
        raise ConfigError(f"RDP orders must be finite numbers > 1, got {orders.tolist()!r}")


def _mixture_logs(y: np.ndarray, q: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """a(y) = log(P/φ), b(y) = log(Q/φ) at y, without forming the (underflowing) densities."""
    s2 = 2.0 * sigma * sigma
    with np.errstate(divide="ignore"):
        log_keep, log_q = math.log1p(-q) if q < 1 else -math.inf, math.log(q)
    a = np.logaddexp(log_keep, log_q - (2.0 * y + 1.0) / s2)
    b = np.logaddexp(log_keep, log_q + (2.0 * y - 1.0) / s2)
    return a, b


def _log_integral(alpha: float, q: float, sigma: float, step: float) -> float:
    """An upper bound on log ∫ exp(L) with the trapezoid rule at `step` (see the module docstring);
    +inf when the error bar is too wide."""
    lo = -(2.0 * alpha - 1.0) - TAIL_SIGMAS * sigma
    hi = 1.0 + TAIL_SIGMAS * sigma
    n = int(math.ceil((hi - lo) / step / 2.0)) * 2 + 1  # odd: the 2h sum uses every other point
    if n > MAX_POINTS:
        return math.inf
    y = np.linspace(lo, hi, n)
    h = (hi - lo) / (n - 1)
    a, b = _mixture_logs(y, q, sigma)
    log_phi = -y * y / (2.0 * sigma * sigma) - math.log(sigma * math.sqrt(2.0 * math.pi))
    big_l = log_phi + alpha * a + (1.0 - alpha) * b
    top = float(big_l.max())
    w = np.exp(big_l - top)
    fine = h * (w.sum() - 0.5 * (w[0] + w[-1]))
    coarse = 2.0 * h * (w[::2].sum() - 0.5 * (w[0] + w[-1]))
    error = abs(fine - coarse)
    if not fine > 0 or error > MAX_REL_ERROR * fine:
        return math.inf
    tails = (w[0] + w[-1]) * sigma * math.sqrt(math.pi / 2.0)
    # L is a sum of large terms: its rounding error is a few ulps of their magnitude, wherever
    # the integrand matters; that bounds the relative error of the integral from rounding in L
    terms = np.abs(log_phi) + alpha * np.abs(a) + (alpha - 1.0) * np.abs(b)
    rounding = 16.0 * np.finfo(np.float64).eps * float(terms[w > 1e-30].max() + abs(top))
    return top + math.log(fine + error + tails + ROUNDING_MARGIN * fine) + rounding


def _one_order(alpha: float, q: float, sigma: float) -> float:
    step = min(sigma, sigma * sigma) / 8.0
    for _ in range(3):  # h, h/2, h/4: then give up (+∞)
        log_i = _log_integral(alpha, q, sigma, step)
        if math.isfinite(log_i):
            return max(log_i, 0.0) / (alpha - 1.0)
        step /= 2.0
    return math.inf


@functools.lru_cache(maxsize=1024)
def _rdp_cached(q: float, sigma: float, orders: tuple[float, ...]) -> tuple[float, ...]:
    if q == 0.0:
        return (0.0,) * len(orders)
    if sigma == 0.0:
        return (math.inf,) * len(orders)
    values = np.array([_one_order(a, q, sigma) for a in orders])
    # D_α is non-decreasing in α: the running maximum (over increasing orders) stays an upper bound
    rank = np.argsort(orders, kind="stable")
    values[rank] = np.maximum.accumulate(values[rank])
    return tuple(float(v) for v in values)


def rdp(sample_rate: float, noise_multiplier: float, orders: Sequence[float]) -> np.ndarray:
    """Upper bound on the replace-one RDP of ONE Poisson-subsampled Gaussian step, per order.

    D_α(P‖Q) for the pair in the module docstring; +∞ where it cannot be computed accurately.
    Compose over steps and runs by adding (RDP composition), e.g. ``steps * rdp(q, σ, orders)``.
    """
    q, sigma = float(sample_rate), float(noise_multiplier)
    grid = np.asarray([float(a) for a in orders], dtype=np.float64)
    _check(q, sigma, grid)
    return np.array(_rdp_cached(q, sigma, tuple(grid.tolist())))


def run_rdp(noise_multiplier: float, sample_rate: float, steps: int, orders: Sequence[float]) -> np.ndarray:
    """RDP of a whole DP-SGD run: `steps` steps of :func:`rdp` (σ = 0 → +∞ at every order)."""
    if int(steps) <= 0:
        return np.zeros(len(orders))
    return int(steps) * rdp(sample_rate, noise_multiplier, orders)


def epsilon(orders: Sequence[float], rdp_values: Sequence[float], delta: float) -> tuple[float, float]:
    """(ε, order) at δ from RDP values: dp_accounting's conversion (Balle et al. 2020, as Opacus')."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    eps, order = compute_epsilon(list(orders), list(rdp_values), float(delta))
    return float(eps), float(order)
