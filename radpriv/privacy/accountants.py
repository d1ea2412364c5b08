"""ε spent: Opacus' PRV and RDP accountants, tuned, and :func:`epsilon_spent`, the one place ε is computed.

Accountants, and why every number here is an upper bound
--------------------------------------------------------
ε is reported, and noise calibrated, only through :func:`epsilon_spent`, which returns an
*upper bound* on the optimal ε of the composition at the given δ:

* ``prv`` (default): Opacus' PRV accountant (Gopi, Lee & Wutschitz 2021, "Numerical
  composition of differential privacy"). It discretises the privacy-loss random variable on a
  mesh, composes by FFT and returns ``eps_upper = ε̂(δ − δ_err) + eps_error``, where
  ``eps_error`` is the paper's worst-case bound on the discretisation error, i.e. the upper end
  of its error bar, never the estimate. Opacus' default ``eps_error=0.01`` is *absolute*: at
  ε ≈ 0.01 it doubles the reported ε, and ``get_noise_multiplier`` (also absolute, 0.01)
  returns σ = 640 on an Open-i-sized run where σ ≈ 69 spends ε = 0.01 (q = 64/2,700, 344
  steps, δ = 1/N^1.1; dp_accounting PLD agrees). Here the error bar is relative:
  min(:data:`PRV_REL_EPS_ERROR` × ε, 0.01) (see :func:`prv_epsilon`).
* ``rdp``: Opacus' Rényi-DP accountant with the conversion of Balle et al. (2020), over the
  orders :data:`RDP_ORDERS` (Opacus' defaults stop at 63, too low for ε ≲ 0.1, where the best
  order is several hundred). Looser than PRV, but simple and also an upper bound.

:func:`radpriv.privacy.independent_check.independent_epsilons` recomputes ε with Google's
``dp_accounting`` (a separate code base): its PLD accountant with *pessimistic* rounding (the
library default, kept: every rounding is towards more privacy loss, so its ε is an upper bound
up to its discretisation) and its RDP accountant on the same orders. Its
:func:`~radpriv.privacy.independent_check.cross_check` compares the reported ε with the
same-family value (PRV ↔ PLD, RDP ↔ RDP) and refuses both under-reporting and unexplained
disagreement.

Numerical choices, measured on 2 shared CPU cores (Open-i-like run: N = 2,700, q = 64/2,700,
344 steps, δ = 1/N^1.1 ≈ 1.7e-4, unless stated)
-------------------------------------------------------------------------------------------
* PRV error bar ``eps_error = min(0.5 % · ε, 0.01)`` (:data:`PRV_REL_EPS_ERROR`,
  :data:`PRV_MAX_EPS_ERROR`). The PRV *estimate* agrees with the converged PLD to ≤ 2e-4
  relative in every regime measured (ε from 0.01 to 10, q from 0.001 to 1, up to 5,000
  steps), so the reported bound sits ≈ 0.5 % above the exact ε (≈ 0.1 % at ε = 10). The cost
  is the grid size ``≈ 2L·sqrt(k·log(12/δ_err)/2)/eps_error`` (L ≥ 3 is Opacus' safe
  truncation half-width, k the number of steps): 7.5M points and 1.1-1.6 s at ε = 0.01 with
  344 steps, 0.15-0.4 s for ε ≥ 0.1. A 0.1 % bar would take ≈ 5× longer (37 s with stock
  Opacus at 1e-5 absolute), 0.25 % ≈ 2×.
* Grid capped at :data:`PRV_MAX_GRID` = 2^24 points (≈ 1.2 GB peak memory, ≈ 3.5 s). Where the
  cap binds (ε ≲ 0.015 with ~5,000 steps) the error bar is the finest the cap allows: still a
  valid bound, but wider: 0.86 % of ε at ε = 0.01 with 5,000 steps (PRV − PLD = +0.88 %). So
  the 1 % cross-check holds for ε ≥ 0.01 up to ≈ 5,000 steps at δ ≈ 1e-4; below that, e.g.
  ε = 0.005 with 5,000 steps, or ε = 0.01 on a MIMIC-sized run (N = 200k, 25,000 steps,
  δ ≈ 1.5e-6: error bar 2.25 %, PRV − PLD = +2.24 %), :func:`cross_check` raises (the report is
  then *over* the exact ε by more than 1 %, never under it). The tolerance is not loosened:
  ``privacy.accountant=rdp`` (or fewer steps) is the way out there.
* Two performance changes to Opacus' PRV, neither touching its error analysis: the grid is
  grown (symmetrically, never shrunk) to an FFT-friendly even length, which only enlarges the
  truncation domain (pocketfft on an awkward length was 10× slower); and each cell's mass is
  ``F(right edge) − F(left edge)`` from one CDF evaluation per edge, skipping the region
  ``t ≤ log(1 − q)`` where the CDF is exactly 0 (Opacus evaluates it twice per cell, everywhere).
  Both give the same ε as Opacus for the same error bar (≤ 1e-8 relative; slightly above it
  where the wider domain keeps more of the tail).
* PLD ``value_discretization_interval = 1e-4 · ε`` (:data:`PLD_REL_DISCRETIZATION`): converged
  to ~1e-4 relative or better (1e-3·ε is off by up to 0.2 %, a fixed 1e-4 by 7 % at ε ≈ 0.014
  with 5,000 steps), 0.01-0.2 s per call.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.analysis.prv import (
    DiscretePRV,
    Domain,
    PoissonSubsampledGaussianPRV,
    TruncatedPrivacyRandomVariable,
    compose_heterogeneous,
    compute_safe_domain_size,
)
from scipy.fft import next_fast_len

from radpriv.errors import PrivacyError
from radpriv.privacy.privacy_params import (
    RDP_ORDERS,
    History,
    Spend,
    as_history,
    canonical_history,
    check_accountant_name,
    check_delta_value,
    check_relation,
)

#: PRV error bar relative to ε (see the module docstring for the measured trade-off).
PRV_REL_EPS_ERROR = 0.005
#: ...but never coarser than Opacus' default absolute error bar (matters for ε > 2, where
#: 0.01 is cheap: the grid scales like (ε + 3)/eps_error).
PRV_MAX_EPS_ERROR = 0.01
#: Error bar of the first, cheap PRV pass (used only to learn ε's magnitude, and as the
#: proxy during calibration); 5 % still gives estimates within ~2e-4 of the exact ε.
PRV_COARSE_REL_EPS_ERROR = 0.05
#: Largest PRV grid (points). Beyond it the error bar grows instead of time and memory.
PRV_MAX_GRID = 2**24
#: Smallest PRV error bar ever asked for (ε itself this small is meaningless).
PRV_MIN_EPS_ERROR = 1e-7


# ---------------------------------------------------------------------------------------------
# Opacus accountants
# ---------------------------------------------------------------------------------------------


def _fft_friendly_even(n: int) -> int:
    size = next_fast_len(n, real=True)
    while size % 2:
        size = next_fast_len(size + 1, real=True)
    return size


def _discretize(prv: PoissonSubsampledGaussianPRV, domain: Domain) -> DiscretePRV:
    """Opacus' ``discretize`` of the PRV truncated to the domain, one CDF pass.

    Same mathematics as ``opacus.accountants.analysis.prv.discretize`` applied to
    ``TruncatedPrivacyRandomVariable(prv, t_min, t_max)``: the mass of cell i is
    F(t_i + dt/2) − F(t_i − dt/2) of the truncated, renormalised CDF, and the grid is then
    shifted so that the discrete mean equals the continuous one (the mean-zero rounding error
    Gopi et al.'s bound relies on). Opacus evaluates the CDF twice per cell; here it is
    evaluated once per cell edge, and only where t > log(1 − q) (below it the PRV's CDF is 0).
    """
    truncated = TruncatedPrivacyRandomVariable(prv, domain.t_min, domain.t_max)
    dt = domain.dt
    # cell edges t_i ± dt/2; the first lies below t_min, the last above t_max
    edges = domain.t_min - dt / 2 + dt * np.arange(domain.size + 1)
    cdf = np.zeros_like(edges)
    q = prv.sample_rate
    support = edges > (math.log(1 - q) if q < 1 else -math.inf)
    cdf[support] = prv.cdf(edges[support])
    # truncation to [t_min, t_max], renormalised (TruncatedPrivacyRandomVariable.cdf): only
    # the two outer edges fall outside, and F is monotone, so clamping them is the whole job
    lower, upper = float(prv.cdf(domain.t_min)), float(prv.cdf(domain.t_max))
    cdf[0], cdf[-1] = lower, upper
    pmf = np.diff(cdf)
    pmf /= upper - lower
    mean_shift = truncated.mean() - float(np.dot(edges[:-1], pmf)) - dt / 2 * float(pmf.sum())
    if abs(mean_shift) >= dt / 2:
        raise RuntimeError("Discrete mean differs significantly from continuous mean.")
    return DiscretePRV(pmf=pmf, domain=domain.shift_right(mean_shift))


class RelativeErrorPRVAccountant(PRVAccountant):
    """Opacus' PRV accountant with an ε error bar relative to ε, and a faster grid.

    ``get_epsilon(delta)`` without ``eps_error`` returns :func:`epsilon_spent`'s bound (error
    bar min(0.5 % × ε, 0.01)) instead of Opacus' absolute 0.01, so code that calls the
    accountant directly (e.g. an Opacus hook) reports the same ε as the rest of radpriv. With an
    explicit ``eps_error`` it behaves like Opacus (upper end of the error bar), only faster.
    The history, ``step`` and ``mechanism() == "prv"`` are Opacus' own.
    """

    def get_epsilon(self, delta: float, *, eps_error: float | None = None,
                    delta_error: float | None = None, **kwargs: Any) -> float:
        if eps_error is None:
            return epsilon_spent("prv", self.history, delta)
        return super().get_epsilon(delta, eps_error=eps_error, delta_error=delta_error, **kwargs)

    def _get_domain(self, prvs: list[PoissonSubsampledGaussianPRV],
                    num_self_compositions: list[int], eps_error: float,
                    delta_error: float) -> Domain:
        # Opacus' truncation half-width L and mesh h, unchanged (they carry the error bound):
        # L from Gopi et al.'s remark 5.6, h = eps_error / sqrt(k·log(12/δ_err)/2).
        L = compute_safe_domain_size(prvs=prvs, max_self_compositions=num_self_compositions,
                                     eps_error=eps_error, delta_error=delta_error)
        mesh = eps_error / np.sqrt(sum(num_self_compositions) * np.log(12 / delta_error) / 2)
        # Domain.create_aligned(-L, L, h) gives [-n·h, (n+1)·h] with n = ceil(L/h), 2n+2 points
        # (the layout _compose_fourier's roll assumes). Growing n to an FFT-friendly size keeps
        # that layout and only widens the truncation domain, which cannot loosen the bound.
        half = int(np.ceil(L / mesh))
        size = _fft_friendly_even(2 * half + 2)
        half = size // 2 - 1
        return Domain(t_min=-half * mesh, t_max=(half + 1) * mesh, size=size)

    def _get_dprv(self, eps_error: float, delta_error: float) -> DiscretePRV:
        prvs = [PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in self.history]
        counts = [n for _, _, n in self.history]
        domain = self._get_domain(prvs=prvs, num_self_compositions=counts, eps_error=eps_error,
                                  delta_error=delta_error)
        dprvs = [_discretize(prv, domain) for prv in prvs]
        return compose_heterogeneous(dprvs=dprvs, num_self_compositions=counts)


class WideRDPAccountant(RDPAccountant):
    """Opacus' RDP accountant whose default orders reach 1024 (:data:`RDP_ORDERS`).

    More orders can only lower the minimum over orders of a valid bound, never invalidate it.
    """

    DEFAULT_ALPHAS = list(RDP_ORDERS)


def make_accountant(name: str) -> IAccountant:
    """A fresh Opacus accountant: ``prv`` (default, tight) or ``rdp``.

    ``prv`` → :class:`RelativeErrorPRVAccountant` (an ``opacus.accountants.PRVAccountant``),
    ``rdp`` → :class:`WideRDPAccountant` (an ``opacus.accountants.RDPAccountant``). Unknown
    names raise :class:`ConfigError` listing the choices.
    """
    key = check_accountant_name(name)
    return RelativeErrorPRVAccountant() if key == "prv" else WideRDPAccountant()


# ---------------------------------------------------------------------------------------------
# ε spent
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PRVBound:
    """One evaluation of the PRV accountant: Opacus' (lower, estimate, upper) and its grid."""

    lower: float
    estimate: float
    upper: float
    eps_error: float
    grid_size: int


def prv_bounds(history: History, delta: float, eps_error: float) -> PRVBound:
    """Opacus' PRV on ``history`` with the given absolute error bar (δ_err = δ/1000 as Opacus).

    ``upper = ε̂(δ − δ_err) + eps_error`` is the value ``PRVAccountant.get_epsilon`` returns:
    Gopi et al.'s guarantee is that the exact ε lies in [lower, upper].
    """
    accountant = RelativeErrorPRVAccountant()
    accountant.history = list(history)
    delta_error = delta / 1000
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        # Opacus' RDP (used for the truncation width) warns when its best order is its
        # largest; that only widens the domain, which is safe. For q = 1 Opacus' PRV takes
        # log(1 − q) = −inf, as intended.
        warnings.simplefilter("ignore", UserWarning)
        dprv = accountant._get_dprv(eps_error=eps_error, delta_error=delta_error)
    lower, estimate, upper = dprv.compute_epsilon(delta, delta_error, eps_error)
    return PRVBound(float(lower), float(estimate), float(upper), float(eps_error), len(dprv))


def prv_min_eps_error(history: History, delta: float) -> float:
    """The smallest error bar whose grid fits in :data:`PRV_MAX_GRID` points."""
    delta_error = delta / 1000
    prvs = [PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in history]
    counts = [n for _, _, n in history]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        L = compute_safe_domain_size(prvs=prvs, max_self_compositions=counts, eps_error=0.0,
                                     delta_error=delta_error)
    spread = math.sqrt(sum(counts) * math.log(12 / delta_error) / 2)
    return max(PRV_MIN_EPS_ERROR, spread * L / (PRV_MAX_GRID // 2 - 2) * (1 + 1e-9))


def prv_estimate(history: History, delta: float, eps_error: float) -> float:
    """PRV point estimate with a coarse grid (retrying finer if the grid is too coarse)."""
    for _ in range(4):
        try:
            return prv_bounds(history, delta, eps_error).estimate
        except RuntimeError:
            # Opacus' mean-shift check fails when the mesh is wider than the PRV's spread.
            eps_error /= 10
    raise PrivacyError(f"the PRV accountant failed for {list(history)} at δ={delta:.3g}")


def prv_wanted_eps_error(epsilon: float, floor: float) -> float:
    """min(0.5 % of ε, 0.01), but no finer than the grid cap allows."""
    return max(min(PRV_REL_EPS_ERROR * epsilon, PRV_MAX_EPS_ERROR), floor)


def prv_epsilon(history: History, delta: float) -> PRVBound:
    """Upper bound on ε from Opacus' PRV with an error bar relative to ε.

    Pass 1 learns ε's magnitude with a coarse error bar (5 % of the RDP bound, itself ≥ ε);
    pass 2 uses ``eps_error = min(0.5 % · ε̂, 0.01)`` (never below what the grid cap allows).
    Each pass's ``upper`` is a valid bound whatever ``eps_error`` was chosen (the choice only
    trades width for time), so the smaller of the two is returned.
    """
    floor = prv_min_eps_error(history, delta)
    eps_error = max(PRV_COARSE_REL_EPS_ERROR * rdp_epsilon(history, delta), floor)
    first: PRVBound | None = None
    for _ in range(4):
        try:
            first = prv_bounds(history, delta, eps_error)
            break
        except RuntimeError:
            if eps_error <= floor:
                break
            eps_error = max(eps_error / 10, floor)
    if first is None:
        raise PrivacyError(f"the PRV accountant failed for {list(history)} at δ={delta:.3g}: "
                           "use privacy.accountant=rdp")
    wanted = prv_wanted_eps_error(first.estimate, floor)
    if wanted >= first.eps_error:
        return first
    second = prv_bounds(history, delta, wanted)
    return second if second.upper <= first.upper else first


def rdp_epsilon(history: History, delta: float) -> float:
    """Opacus' RDP bound over :data:`RDP_ORDERS` (Balle et al. 2020 conversion)."""
    accountant = WideRDPAccountant()
    accountant.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest alpha"
        eps = float(accountant.get_epsilon(delta))
    return max(eps, 0.0)


@functools.lru_cache(maxsize=512)
def _epsilon_cached(name: str, history: History, delta: float) -> float:
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return math.inf  # no noise on a step that may include a record: no guarantee at all
    if name == "rdp":
        return rdp_epsilon(history, delta)
    return max(prv_epsilon(history, delta).upper, 0.0)


def epsilon_spent(accountant_name: str, spend: Spend, delta: float,
                  relation: str = "add_remove") -> float:
    """Upper bound on the ε spent by ``spend`` at ``delta`` under ``relation``.

    ``spend`` is an Opacus history ``[(σ, q, n_steps), ...]`` or one ``(σ, q, steps)``.
    ``relation="add_remove"``: ``accountant_name`` chooses the Opacus accountant. ``prv``:
    Opacus' PRV bound with a min(0.5 % of ε, 0.01) error bar (its upper end is returned:
    ≈ 0.5 % above the exact ε, ≈ 0.1 % at ε = 10; ≈ 1.1-1.6 s at ε = 0.01 with 344 steps,
    ≈ 3.5 s at ε = 0.01 with 5,000, ≤ 0.4 s for ε ≥ 0.1). ``rdp``: Opacus' RDP bound over
    :data:`RDP_ORDERS` (tens of ms). ``relation="replace_one"``: dp_accounting's PLD under
    replace-one (:mod:`radpriv.privacy.replace_one`; no Opacus accountant analyses it), whatever
    ``accountant_name`` says. No steps → 0; a step with σ = 0 → ∞. Results are cached, so the ε
    logged each epoch and the final one come from the same computation as the calibration.
    """
    name = check_accountant_name(accountant_name)
    history = canonical_history(as_history(spend))
    d = check_delta_value(delta)
    if check_relation(relation) == "replace_one":
        from radpriv.privacy import replace_one

        return replace_one.epsilon(history, d)
    return _epsilon_cached(name, history, d)
