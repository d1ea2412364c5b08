"""Privacy accounting: the one place where ε is computed and DP-SGD noise is calibrated.

The mechanism
-------------
Every optimiser step of DP-SGD is one application of the *Poisson-subsampled Gaussian
mechanism*: each training record (one report) joins the logical batch independently with
probability ``q`` (the sample rate), each per-record gradient is clipped to L2 norm ``C``, and
``N(0, σ²C²·I)`` is added to their sum. Its privacy depends on ``(σ, q)`` only (σ is the *noise
multiplier*). A run is the adaptive composition of its steps, recorded exactly as Opacus does:
a history ``[(σ, q, n_steps), ...]``. Everything released afterwards (weights, adapters,
predictions, plots) is post-processing and costs nothing more.

What (ε, δ) means here
----------------------
Neighbouring training sets differ by adding or removing one record (add/remove adjacency, the
one Poisson sampling is analysed under; N itself is not treated as public). The run is
(ε, δ)-DP if for every such pair D, D' and every set S of outcomes
``P[M(D) ∈ S] ≤ e^ε · P[M(D') ∈ S] + δ``. δ bounds the probability mass on which the e^ε
bound may fail outright; it must be well below 1/N because "publish one randomly chosen record
verbatim" is (0, 1/N)-DP. Hence the default δ = 1/N^1.1 and the hard error for δ ≥ 1/N.

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
  min(:data:`PRV_REL_EPS_ERROR` × ε, 0.01) (see :func:`_prv_epsilon`).
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
import numbers
import warnings
from collections.abc import Callable, Sequence
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

from radpriv.errors import ConfigError, PrivacyError

#: Accountant names accepted by ``privacy.accountant`` (Opacus' add/remove accountants).
ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")
#: Neighbouring relations: replace-one (N public; radpriv's guarantee) and add/remove (the
#: figure papers print; valid as a guarantee only where N is not published).
RELATIONS: tuple[str, ...] = ("replace_one", "add_remove")
#: The relation radpriv's guarantee is stated under: N is published, so replace-one
#: (:mod:`radpriv.privacy.replace_one`; docs/PRIVACY.md, "Adjacency").
GUARANTEE_RELATION = "replace_one"

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
#: dp_accounting PLD discretisation interval relative to ε.
PLD_REL_DISCRETIZATION = 1e-4
#: RDP orders: Opacus' defaults plus integer orders up to 1024 (Opacus' exact formula for an
#: integer order uses binom(α, i), which overflows a float beyond α ≈ 1030). The optimal order
#: is ≈ 1 + sqrt(log(1/δ)/ρ) for a ρ-zCDP-like curve: ≈ 500 at ε ≈ 0.01.
RDP_ORDERS: tuple[float, ...] = tuple(RDPAccountant.DEFAULT_ALPHAS) + (
    64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024,
)

History = tuple[tuple[float, float, int], ...]
Spend = Sequence[Sequence[float]] | Sequence[float]

_NON_PRIVATE_WORDS = frozenset({"null", "none", "~", "inf", "+inf", "infinity", "+infinity"})


# ---------------------------------------------------------------------------------------------
# Configuration values
# ---------------------------------------------------------------------------------------------


def resolve_epsilon(value: Any) -> float | None:
    """Turn ``privacy.epsilon`` into a positive float, or ``None`` for non-private training.

    Accepts a number, a numeric string, or ``None``/``"null"``/``"none"``/``"inf"``/``inf``
    (all meaning "no privacy guarantee", i.e. train non-privately). ε ≤ 0, NaN, booleans and
    other strings raise :class:`ConfigError`.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"privacy.epsilon={value!r} is not a number: use a positive number, "
                          "or null/inf for non-private training")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _NON_PRIVATE_WORDS:
            return None
        try:
            eps = float(text)
        except ValueError:
            raise ConfigError(f"privacy.epsilon={value!r} is not a number: use a positive number, "
                              "or null/inf for non-private training") from None
    elif isinstance(value, numbers.Real):
        eps = float(value)
    else:
        raise ConfigError(f"privacy.epsilon={value!r} is not a number: use a positive number, "
                          "or null/inf for non-private training")
    if math.isnan(eps) or eps <= 0:
        raise ConfigError(f"privacy.epsilon={value!r} must be > 0 (smaller is more private), "
                          "or null/inf for non-private training")
    if math.isinf(eps):
        return None
    return eps


def _check_n_train(n_train: Any) -> int:
    if isinstance(n_train, bool) or not isinstance(n_train, numbers.Integral) or n_train < 2:
        raise ConfigError(f"the training split must hold at least 2 records to train privately "
                          f"(got N={n_train!r})")
    return int(n_train)


def default_delta(n_train: int) -> float:
    """The default δ = 1 / N^1.1 for N training records (always < 1/N for N ≥ 2).

    δ ≥ 1/N would allow a mechanism that publishes one whole record (see :func:`check_delta`);
    the extra factor N^-0.1 keeps δ polynomially below that.
    """
    n = _check_n_train(n_train)
    return 1.0 / n**1.1


def _as_float(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{what}={value!r} is not a number")
    if isinstance(value, (numbers.Real, str)):
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{what}={value!r} is not a number") from None
        if math.isnan(number):
            raise ConfigError(f"{what}={value!r} is not a number")
        return number
    raise ConfigError(f"{what}={value!r} is not a number")


def check_delta(delta: Any, n_train: int) -> float:
    """Check that 0 < δ < 1/N and return δ as a float.

    δ ≥ 1/N is refused (:class:`PrivacyError`): the mechanism "publish one randomly chosen
    training record verbatim" is (0, 1/N)-DP, so such a δ certifies nothing about any one
    report. δ ≤ 0 is pure DP, which the Gaussian mechanism cannot give.
    """
    n = _check_n_train(n_train)
    d = _as_float(delta, "privacy.delta")
    if not 0.0 < d < 1.0 / n:
        raise PrivacyError(
            f"privacy.delta={d:.4g} must be in (0, 1/N) = (0, {1.0 / n:.4g}) for N={n} training "
            f"records: δ ≥ 1/N allows releasing a whole record (publishing one random report is "
            f"(0, 1/N)-DP); use the default 1/N^1.1 = {default_delta(n):.4g} or smaller"
        )
    return d


def resolve_delta(delta: Any, n_train: int) -> float:
    """``privacy.delta`` → δ: ``None`` gives :func:`default_delta`, anything else is checked."""
    if delta is None or (isinstance(delta, str) and delta.strip().lower() in {"null", "none", "~"}):
        return default_delta(n_train)
    return check_delta(delta, n_train)


def _check_accountant_name(name: Any) -> str:
    key = str(name).strip().lower() if isinstance(name, str) else None
    if key not in ACCOUNTANTS:
        raise ConfigError(f"privacy.accountant={name!r} is unknown: choose one of "
                          f"{', '.join(ACCOUNTANTS)}")
    return key


def check_relation(relation: Any) -> str:
    """``privacy.adjacency`` → "replace_one" | "add_remove" (one-line ConfigError otherwise)."""
    key = str(relation).strip().lower().replace("-", "_").replace("/", "_") if isinstance(relation, str) else None
    if key not in RELATIONS:
        raise ConfigError(f"adjacency {relation!r} is unknown: choose one of {', '.join(RELATIONS)}")
    return key


def _check_delta_value(delta: Any) -> float:
    d = _as_float(delta, "delta")
    if not 0.0 < d < 1.0:
        raise PrivacyError(f"delta={d:.4g} must be in (0, 1)")
    return d


# ---------------------------------------------------------------------------------------------
# Histories
# ---------------------------------------------------------------------------------------------


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _as_history(spend: Spend) -> History:
    """Normalise ``(σ, q, steps)`` or an Opacus history ``[(σ, q, n), ...]`` to a tuple."""
    if isinstance(spend, (str, bytes)) or not isinstance(spend, Sequence):
        raise ConfigError(f"privacy spend must be (noise_multiplier, sample_rate, steps) or a "
                          f"history of such triples, got {spend!r}")
    entries = [spend] if len(spend) == 3 and all(_is_number(x) for x in spend) else list(spend)
    history = []
    for entry in entries:
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 3 \
                or not all(_is_number(x) for x in entry):
            raise ConfigError(f"privacy history entry {entry!r} is not (noise_multiplier, "
                              "sample_rate, steps)")
        sigma, q, n = (float(x) for x in entry)
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ConfigError(f"noise_multiplier={sigma!r} must be a finite number ≥ 0")
        if not 0.0 <= q <= 1.0:
            raise ConfigError(f"sample_rate={q!r} must be in [0, 1]")
        if not (math.isfinite(n) and n >= 0 and n == int(n)):
            raise ConfigError(f"steps={entry[2]!r} must be a whole number ≥ 0")
        history.append((sigma, q, int(n)))
    return tuple(history)


def _canonical(history: History) -> History:
    """Merge entries with equal (σ, q), drop ones that cost nothing (q = 0 or no steps).

    Composition is commutative (the composed privacy-loss variable is a sum), so the order of
    steps does not matter; sorting makes equal spends hit the same cache entry.
    """
    merged: dict[tuple[float, float], int] = {}
    for sigma, q, n in history:
        if n > 0 and q > 0:
            merged[(sigma, q)] = merged.get((sigma, q), 0) + n
    return tuple(sorted((s, q, n) for (s, q), n in merged.items()))


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
    key = _check_accountant_name(name)
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


def _prv_bounds(history: History, delta: float, eps_error: float) -> PRVBound:
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


def _prv_min_eps_error(history: History, delta: float) -> float:
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


def _prv_estimate(history: History, delta: float, eps_error: float) -> float:
    """PRV point estimate with a coarse grid (retrying finer if the grid is too coarse)."""
    for _ in range(4):
        try:
            return _prv_bounds(history, delta, eps_error).estimate
        except RuntimeError:
            # Opacus' mean-shift check fails when the mesh is wider than the PRV's spread.
            eps_error /= 10
    raise PrivacyError(f"the PRV accountant failed for {list(history)} at δ={delta:.3g}")


def _prv_wanted_eps_error(epsilon: float, floor: float) -> float:
    """min(0.5 % of ε, 0.01), but no finer than the grid cap allows."""
    return max(min(PRV_REL_EPS_ERROR * epsilon, PRV_MAX_EPS_ERROR), floor)


def _prv_epsilon(history: History, delta: float) -> PRVBound:
    """Upper bound on ε from Opacus' PRV with an error bar relative to ε.

    Pass 1 learns ε's magnitude with a coarse error bar (5 % of the RDP bound, itself ≥ ε);
    pass 2 uses ``eps_error = min(0.5 % · ε̂, 0.01)`` (never below what the grid cap allows).
    Each pass's ``upper`` is a valid bound whatever ``eps_error`` was chosen (the choice only
    trades width for time), so the smaller of the two is returned.
    """
    floor = _prv_min_eps_error(history, delta)
    eps_error = max(PRV_COARSE_REL_EPS_ERROR * _rdp_epsilon(history, delta), floor)
    first: PRVBound | None = None
    for _ in range(4):
        try:
            first = _prv_bounds(history, delta, eps_error)
            break
        except RuntimeError:
            if eps_error <= floor:
                break
            eps_error = max(eps_error / 10, floor)
    if first is None:
        raise PrivacyError(f"the PRV accountant failed for {list(history)} at δ={delta:.3g}: "
                           "use privacy.accountant=rdp")
    wanted = _prv_wanted_eps_error(first.estimate, floor)
    if wanted >= first.eps_error:
        return first
    second = _prv_bounds(history, delta, wanted)
    return second if second.upper <= first.upper else first


def _rdp_epsilon(history: History, delta: float) -> float:
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
        return _rdp_epsilon(history, delta)
    return max(_prv_epsilon(history, delta).upper, 0.0)


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
    name = _check_accountant_name(accountant_name)
    history = _canonical(_as_history(spend))
    d = _check_delta_value(delta)
    if check_relation(relation) == "replace_one":
        from radpriv.privacy import replace_one

        return replace_one.epsilon(history, d)
    return _epsilon_cached(name, history, d)


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
    rdp = functools.lru_cache(maxsize=None)(lambda s: _rdp_epsilon(((s, q, steps),), delta))
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
    name = _check_accountant_name(accountant)
    relation = check_relation(relation)
    target = resolve_epsilon(target_epsilon)
    if target is None:
        raise ConfigError(f"target ε={target_epsilon!r} is not finite: non-private training adds "
                          "no noise and needs no calibration")
    d = _check_delta_value(delta)
    q = _as_float(sample_rate, "sample_rate")
    if not 0.0 < q <= 1.0:
        raise ConfigError(f"sample_rate={q!r} must be in (0, 1]")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ConfigError(f"steps={steps!r} must be a whole number ≥ 1")
    steps = int(steps)
    tol = _as_float(rel_tol, "rel_tol")
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
            lambda s: _prv_estimate(((s, q, steps),), d, coarse))
        # the reported bound is estimate + error bar, the bar being min(0.5 % of ε, 0.01)
        # unless the grid cap makes it wider (tiny ε with many steps)
        bar = _prv_wanted_eps_error(aim, _prv_min_eps_error(((sigma, q, steps),), d))
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


# ---------------------------------------------------------------------------------------------
# Stateful wrapper for training
# ---------------------------------------------------------------------------------------------


class PrivacyAccountant:
    """The accountant of one training run: an Opacus accountant plus δ and the relation, checkpointable.

    ``step`` is called once per noisy optimiser step (Opacus records ``(σ, q, n_steps)`` runs);
    ``epsilon()`` is :func:`epsilon_spent` on that history under the run's ``relation`` (the
    guarantee); ``epsilon_add_remove()`` is the add/remove figure by the Opacus accountant
    (what papers print). ``state_dict`` holds plain lists and floats, so it can go into a
    Lightning checkpoint.
    """

    def __init__(self, accountant: str = "prv", delta: float = 1e-5,
                 relation: str = "add_remove") -> None:
        self.name = _check_accountant_name(accountant)
        self.delta = _check_delta_value(delta)
        self.relation = check_relation(relation)
        self.accountant: IAccountant = make_accountant(self.name)

    def step(self, *, noise_multiplier: float, sample_rate: float) -> None:
        self.accountant.step(noise_multiplier=float(noise_multiplier),
                             sample_rate=float(sample_rate))

    @property
    def history(self) -> list[tuple[float, float, int]]:
        return [tuple(h) for h in self.accountant.history]

    @history.setter
    def history(self, entries) -> None:
        self.accountant.history = [(s, q, n) for s, q, n in (_as_history(entries) if entries else ())]

    @property
    def steps(self) -> int:
        return int(sum(n for _, _, n in self.accountant.history))

    def epsilon(self, delta: float | None = None) -> float:
        """Upper bound on ε spent so far under the run's relation (at its δ unless another is given)."""
        return epsilon_spent(self.name, self.accountant.history,
                             self.delta if delta is None else delta, self.relation)

    def epsilon_add_remove(self, delta: float | None = None) -> float:
        """The same history under add/remove adjacency, by the Opacus accountant."""
        return epsilon_spent(self.name, self.accountant.history,
                             self.delta if delta is None else delta, "add_remove")

    def cross_check(self, rel_tol: float = 0.01) -> dict[str, float]:
        """:func:`radpriv.privacy.independent_check.cross_check` of this run's ε (any history)."""
        from radpriv.privacy.independent_check import check_history

        return check_history(self.epsilon(), self.name, _as_history(self.history), self.delta,
                             self.relation, rel_tol)

    def state_dict(self) -> dict[str, Any]:
        return {"accountant": self.name, "delta": self.delta, "relation": self.relation,
                "history": [[float(s), float(q), int(n)] for s, q, n in self.accountant.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the history; the accountant, δ and relation must be this run's (else ε would change)."""
        try:
            name, delta, history = state["accountant"], state["delta"], state["history"]
        except (KeyError, TypeError):
            raise PrivacyError("the checkpoint's privacy accountant state is incomplete "
                               "(needs accountant, delta and history)") from None
        relation = state.get("relation", "add_remove")
        if name != self.name or float(delta) != self.delta or relation != self.relation:
            raise PrivacyError(f"cannot resume: the checkpoint was accounted with accountant="
                               f"{name}, δ={float(delta):.4g}, adjacency {relation}; this run uses "
                               f"accountant={self.name}, δ={self.delta:.4g}, adjacency {self.relation}")
        self.history = history

    def __repr__(self) -> str:
        return (f"PrivacyAccountant(accountant={self.name!r}, delta={self.delta:.4g}, "
                f"relation={self.relation!r}, steps={self.steps})")
