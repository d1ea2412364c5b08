"""Noise calibration: the noise multiplier σ whose planned steps spend ε ≈ the target.

:func:`calibrate_noise_multiplier` solves ``epsilon_spent(σ) ≈ target`` from below on the very
bound training reports (:func:`radpriv.privacy.accountants.epsilon_spent`), starting from the
cheap RDP bounds (add/remove from Opacus, replace-one from :mod:`radpriv.privacy.replace_one_rdp`)
so that the expensive PRV/PLD is evaluated a few times only.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from radpriv.errors import ConfigError, PrivacyError
from radpriv.privacy.accountants import (
    PRV_COARSE_REL_EPS_ERROR,
    epsilon_spent,
    prv_estimate,
    prv_min_eps_error,
    prv_wanted_eps_error,
    rdp_epsilon,
)
from radpriv.privacy.privacy_params import (
    RDP_ORDERS,
    as_float,
    check_accountant_name,
    check_delta_value,
    check_relation,
    resolve_epsilon,
)

# ---------------------------------------------------------------------------------------------
# Noise calibration
# ---------------------------------------------------------------------------------------------


class CalibrationResult(float):
    """The calibrated noise multiplier σ (this object *is* σ as a float) and its context.

    ``epsilon`` is :func:`epsilon_spent` at σ for exactly the planned steps: it satisfies
    ``(1 − rel_tol)·target_epsilon ≤ epsilon ≤ target_epsilon``.
    """

    noise_multiplier: float
    epsilon: float
    target_epsilon: float
    delta: float
    sample_rate: float
    steps: int
    accountant: str
    relation: str

    def __new__(cls, noise_multiplier: float, *, epsilon: float, target_epsilon: float,
                delta: float, sample_rate: float, steps: int, accountant: str,
                relation: str = "add_remove") -> CalibrationResult:
        obj = super().__new__(cls, noise_multiplier)
        obj.noise_multiplier = float(noise_multiplier)
        obj.epsilon = float(epsilon)
        obj.target_epsilon = float(target_epsilon)
        obj.delta = float(delta)
        obj.sample_rate = float(sample_rate)
        obj.steps = int(steps)
        obj.accountant = str(accountant)
        obj.relation = str(relation)
        return obj

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("noise_multiplier", "epsilon", "target_epsilon",
                                              "delta", "sample_rate", "steps", "accountant",
                                              "relation")}

    def __getnewargs_ex__(self) -> tuple[tuple[float], dict[str, Any]]:
        kwargs = self.as_dict()
        return (kwargs.pop("noise_multiplier"),), kwargs

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"CalibrationResult({fields})"


def _solve_decreasing(f: Callable[[float], float], aim: float, lo: float, hi: float,
                      f_lo: float, f_hi: float, rel_band: float, max_iter: int = 40
                      ) -> tuple[float, float]:
    """Find σ in [lo, hi] with f(σ) ≈ aim for a decreasing f, f(lo) > aim ≥ f(hi).

    Illinois (safeguarded regula falsi) on log f against log σ, where ε(σ) is nearly linear;
    stops when |f/aim − 1| ≤ rel_band or the bracket is 1e-6 wide. Returns (σ, f(σ)) with
    f(σ) ≤ aim·(1 + rel_band) whenever the band is reached, else the bracket's upper end.
    """
    def log_ratio(value: float) -> float:
        return math.log(value / aim) if value > 0 else -math.inf

    x_lo, x_hi = math.log(lo), math.log(hi)
    g_lo, g_hi = log_ratio(f_lo), log_ratio(f_hi)  # g_lo > 0 ≥ g_hi
    side = 0
    for _ in range(max_iter):
        if x_hi - x_lo < 1e-6:
            break
        with np.errstate(invalid="ignore"):
            x = x_hi - g_hi * (x_hi - x_lo) / (g_hi - g_lo)
        if not x_lo < x < x_hi:  # also catches nan from infinite ends: bisect instead
            x = 0.5 * (x_lo + x_hi)
        value = f(math.exp(x))
        g = log_ratio(value)
        if abs(value / aim - 1) <= rel_band:
            return math.exp(x), value
        if g > 0:
            x_lo, g_lo = x, g
            if side == -1:
                g_hi /= 2
            side = -1
        else:
            x_hi, g_hi = x, g
            if side == 1:
                g_lo /= 2
            side = 1
    return math.exp(x_hi), f(math.exp(x_hi))


def _bracket(f: Callable[[float], float], aim: float, start: float, factor: float
             ) -> tuple[float, float, float, float]:
    """Grow/shrink σ geometrically from ``start`` until f(lo) > aim ≥ f(hi)."""
    sigma, value = start, f(start)
    for _ in range(200):
        if value > aim:
            lo, f_lo = sigma, value
            hi = sigma * factor
            f_hi = f(hi)
            if f_hi <= aim:
                return lo, hi, f_lo, f_hi
            sigma, value = hi, f_hi
        else:
            hi, f_hi = sigma, value
            lo = sigma / factor
            f_lo = f(lo)
            if f_lo > aim:
                return lo, hi, f_lo, f_hi
            sigma, value = lo, f_lo
    raise PrivacyError(f"cannot calibrate the noise: no noise multiplier between "
                       f"{sigma:.3g} and {start:.3g} reaches ε={aim:.4g}")


def _add_remove_rdp_sigma(q: float, steps: int, delta: float, aim: float, tol: float) -> float:
    """σ whose Opacus RDP ε (add/remove) ≈ aim."""
    rdp = functools.lru_cache(maxsize=None)(lambda s: rdp_epsilon(((s, q, steps),), delta))
    lo, hi, f_lo, f_hi = _bracket(rdp, aim, 1.0, 2.0)
    return _solve_decreasing(rdp, aim, lo, hi, f_lo, f_hi, rel_band=tol / 4)[0]


def _solve_replace_one(spent: Callable[[float], float], q: float, steps: int, delta: float, aim: float,
                       tol: float, add_remove_sigma: Callable[[], float]) -> float:
    """σ with the replace-one PLD ε (`spent`, ~1 s an evaluation) ≈ aim, in about two evaluations.

    The replace-one RDP bound (radpriv/privacy/replace_one_rdp.py, ~0.1 s) is above the PLD ε
    and has nearly the same slope in log σ: solve on it first, then one PLD evaluation there and
    a step along the RDP curve's slope predict the PLD solution; regula falsi finishes if the
    prediction misses the band. Where the RDP bound does not apply, bracket on the PLD from the
    add/remove RDP σ (`add_remove_sigma()`) up: replace-one costs more than add/remove at one σ.
    """
    from radpriv.privacy import replace_one_rdp

    def rdp(s: float) -> float:
        return replace_one_rdp.epsilon(RDP_ORDERS, replace_one_rdp.run_rdp(s, q, steps, RDP_ORDERS), delta)[0]

    try:
        rdp = functools.lru_cache(maxsize=None)(rdp)
        lo, hi, f_lo, f_hi = _bracket(rdp, aim, 1.0, 2.0)
        sigma_rdp, f_rdp = _solve_decreasing(rdp, aim, lo, hi, f_lo, f_hi, rel_band=tol / 8)
        slope = math.log(f_rdp / rdp(sigma_rdp * 1.05)) / math.log(1.05)  # −d log ε / d log σ
    except (PrivacyError, ValueError, OverflowError, ZeroDivisionError):
        lo, hi, f_lo, f_hi = _bracket(spent, aim, add_remove_sigma() * 1.5, 1.25)
        return _solve_decreasing(spent, aim, lo, hi, f_lo, f_hi, rel_band=tol / 2)[0]
    f_start = spent(sigma_rdp)
    if not (slope > 0 and math.isfinite(slope) and f_start > 0):
        lo, hi, f_lo, f_hi = _bracket(spent, aim, sigma_rdp, 1.25)
        return _solve_decreasing(spent, aim, lo, hi, f_lo, f_hi, rel_band=tol / 2)[0]
    guess = sigma_rdp * (f_start / aim) ** (1 / slope)
    f_guess = spent(guess)
    if abs(f_guess / aim - 1) <= tol / 2:
        return guess
    ends = sorted([(guess, f_guess), (sigma_rdp, f_start)])
    if ends[0][1] > aim >= ends[1][1]:  # the two evaluations straddle the aim
        (lo, f_lo), (hi, f_hi) = ends
    else:
        lo, hi, f_lo, f_hi = _bracket(spent, aim, guess, 1 + tol)
    return _solve_decreasing(spent, aim, lo, hi, f_lo, f_hi, rel_band=tol / 2)[0]


def calibrate_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float,
                               steps: int, accountant: str = "prv", rel_tol: float = 0.01,
                               relation: str = "add_remove") -> CalibrationResult:
    """The noise multiplier σ whose ``steps`` steps at ``sample_rate`` spend ε ≈ target.

    Guarantee: ``(1 − rel_tol)·target ≤ epsilon_spent(accountant, (σ, q, steps), δ, relation)
    ≤ target``.
    The upper side is absolute (checked on the very bound that training will report, so ε
    never ends above target); the lower side is utility and is met whenever the accountant's
    resolution allows (always, for the supported accountants and rel_tol ≥ 1 %); otherwise
    the largest-ε safe σ found is returned.

    Method (a few seconds at most): (1) bracket σ by doubling/halving on the cheap RDP bound
    and solve ε_RDP(σ) = aim; since RDP ≥ the exact ε this σ is an upper end for the PRV.
    (2) for ``prv``, solve on the PRV *estimate* with a coarse grid (5 % error bar; the
    estimate is accurate to ~2e-4), aiming at target·(1 − rel_tol/2) − error bar so that the
    reported bound (estimate + error bar) lands mid-band. (3) evaluate
    :func:`epsilon_spent` at that σ and, if it is outside the band, solve on it directly.
    Solving is Illinois regula falsi on log ε vs log σ (ε is close to a power of σ), which
    converges in a handful of evaluations where plain bisection needs ~20.

    Under ``relation="replace_one"`` step (2) is skipped and (3) solves on the replace-one PLD
    from the RDP σ up (replace-one costs more than add/remove at the same σ, so its σ is larger).

    Returns a :class:`CalibrationResult`, a float equal to σ that also carries ``epsilon``,
    ``target_epsilon``, ``delta``, ``sample_rate``, ``steps``, ``accountant`` and ``relation``.
    """
    name = check_accountant_name(accountant)
    relation = check_relation(relation)
    target = resolve_epsilon(target_epsilon)
    if target is None:
        raise ConfigError(f"target ε={target_epsilon!r} is not finite: non-private training adds "
                          "no noise and needs no calibration")
    d = check_delta_value(delta)
    q = as_float(sample_rate, "sample_rate")
    if not 0.0 < q <= 1.0:
        raise ConfigError(f"sample_rate={q!r} must be in (0, 1]")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ConfigError(f"steps={steps!r} must be a whole number ≥ 1")
    steps = int(steps)
    tol = as_float(rel_tol, "rel_tol")
    if not 0.0 < tol < 0.5:
        raise ConfigError(f"rel_tol={rel_tol!r} must be in (0, 0.5)")

    def spent(sigma: float) -> float:
        return epsilon_spent(name, ((sigma, q, steps),), d, relation)

    aim = target * (1 - tol / 2)
    if relation == "replace_one":  # its own RDP bound gives the start (_solve_replace_one)
        sigma = _solve_replace_one(spent, q, steps, d, aim, tol, lambda: _add_remove_rdp_sigma(q, steps, d, aim, tol))
    else:
        # (1) RDP: cheap, and an upper bound on the exact ε, so σ_RDP ≥ the σ PRV needs.
        sigma = _add_remove_rdp_sigma(q, steps, d, aim, tol)
    if relation != "replace_one" and name == "prv":
        # (2) the PRV estimate, coarse grid; aim so that estimate + error bar is mid-band.
        coarse = PRV_COARSE_REL_EPS_ERROR * target
        proxy = functools.lru_cache(maxsize=None)(
            lambda s: prv_estimate(((s, q, steps),), d, coarse))
        # the reported bound is estimate + error bar, the bar being min(0.5 % of ε, 0.01)
        # unless the grid cap makes it wider (tiny ε with many steps)
        bar = prv_wanted_eps_error(aim, prv_min_eps_error(((sigma, q, steps),), d))
        aim_proxy = aim - bar
        lo, hi, f_lo, f_hi = _bracket(proxy, aim_proxy, sigma, 1.25)
        sigma, _ = _solve_decreasing(proxy, aim_proxy, lo, hi, f_lo, f_hi, rel_band=tol / 8)

    # (3) the bound training will report.
    eps = spent(sigma)
    if not (1 - tol) * target <= eps <= target:
        lo, hi, f_lo, f_hi = _bracket(spent, aim, sigma, 1 + tol / 2)
        sigma, eps = _solve_decreasing(spent, aim, lo, hi, f_lo, f_hi, rel_band=tol / 2)
        if eps > target:  # band never reached: fall back to the bracket's safe end
            sigma, eps = hi, f_hi
    if not eps <= target:  # unreachable by construction; never hand out an unsafe σ
        raise PrivacyError(f"noise calibration failed: σ={sigma:.4g} spends ε={eps:.4g} > "
                           f"target {target:.4g}")
    return CalibrationResult(sigma, epsilon=eps, target_epsilon=target, delta=d, sample_rate=q,
                             steps=steps, accountant=name, relation=relation)
