"""Replace-one RDP of the Poisson-subsampled Gaussian (radpriv.privacy.replace_one_rdp).

Checked against what is known independently: the Gaussian's closed form at q = 1, Opacus'
add/remove RDP (replace-one can only cost more), dp_accounting's replace-one PLD (tighter than
any RDP conversion, so the RDP route must read above it, but not absurdly), and scipy's adaptive
quadrature of the same integral.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon
from opacus.accountants.analysis.rdp import compute_rdp

from radpriv.errors import ConfigError
from radpriv.privacy import replace_one, replace_one_rdp
from radpriv.privacy.accounting import RDP_ORDERS, default_delta

ORDERS = list(RDP_ORDERS)
# an Open-i run: N = 2,609, batch 256, 8 epochs
OPENI_Q, OPENI_STEPS, OPENI_DELTA = 256 / 2609, 88, default_delta(2609)


@pytest.mark.parametrize("sigma", [0.5, 0.8, 2.0, 20.0])
def test_full_batch_is_the_gaussian_with_sensitivity_two(sigma):
    got = replace_one_rdp.rdp(1.0, sigma, ORDERS)
    exact = 2 * np.array(ORDERS) / sigma**2
    assert np.all(np.isfinite(got[np.array(ORDERS) <= 64]))
    finite = np.isfinite(got)
    assert np.all(got[finite] >= exact[finite])  # the margins only ever raise it
    assert got[finite] == pytest.approx(exact[finite], rel=1e-7)


@pytest.mark.parametrize("q", [0.001, 0.01, 0.0981, 0.3, 0.9])
@pytest.mark.parametrize("sigma", [0.6, 1.0, 3.0, 30.0, 300.0])
def test_never_below_add_remove(q, sigma):
    ours = replace_one_rdp.rdp(q, sigma, ORDERS)
    add_remove = compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=ORDERS)
    assert np.all(ours >= add_remove * (1 - 1e-9))


@pytest.mark.parametrize("q, sigma", [(0.0981, 0.8), (0.01, 0.5), (0.5, 2.0), (0.0981, 300.0)])
def test_monotone_in_the_order(q, sigma):
    values = replace_one_rdp.rdp(q, sigma, ORDERS)
    assert np.all(np.diff(values) >= 0)


@pytest.mark.parametrize("q, sigma, alpha", [(0.0981, 0.8, 2.3), (0.0981, 0.8, 12.0), (0.3, 1.5, 5.0),
                                             (0.0981, 5.6, 5.0), (0.0981, 40.0, 60.0)])
def test_matches_adaptive_quadrature_from_above(q, sigma, alpha):
    from scipy import integrate, stats

    def log_integrand(y):
        mix = lambda mu: np.logaddexp(math.log1p(-q) + stats.norm.logpdf(y, 0, sigma),  # noqa: E731
                                      math.log(q) + stats.norm.logpdf(y, mu, sigma))
        return alpha * mix(-1.0) + (1 - alpha) * mix(1.0)

    lo, hi = -(2 * alpha - 1) - 12 * sigma, 1 + 12 * sigma
    shift = float(np.max(log_integrand(np.linspace(lo, hi, 20001))))
    value, _ = integrate.quad(lambda y: math.exp(log_integrand(y) - shift), lo, hi, points=[-1.0, 0.0, 1.0],
                              limit=1000, epsabs=0, epsrel=1e-12)
    reference = (shift + math.log(value)) / (alpha - 1)
    got = float(replace_one_rdp.rdp(q, sigma, [alpha])[0])
    assert reference * (1 - 1e-9) <= got <= reference * (1 + 1e-6) + 1e-12


@pytest.mark.parametrize("sigma", [0.8, 2.0, 5.6, 20.0, 100.0, 300.0])
def test_converted_epsilon_is_above_the_pld_and_not_far(sigma):
    rdp = OPENI_STEPS * replace_one_rdp.rdp(OPENI_Q, sigma, ORDERS)
    eps, _ = compute_epsilon(ORDERS, rdp, OPENI_DELTA)
    pld = replace_one.epsilon(((sigma, OPENI_Q, OPENI_STEPS),), OPENI_DELTA)
    assert pld <= eps < 1.6 * pld


def test_edges_and_bad_input():
    assert np.all(replace_one_rdp.rdp(0.0, 1.0, ORDERS) == 0)
    assert np.all(np.isinf(replace_one_rdp.rdp(0.1, 0.0, ORDERS)))
    assert np.all(replace_one_rdp.run_rdp(1.0, 0.1, 0, ORDERS) == 0)
    for args in [(1.5, 1.0, [2.0]), (0.1, -1.0, [2.0]), (0.1, 1.0, [1.0]), (0.1, 1.0, [math.inf])]:
        with pytest.raises(ConfigError):
            replace_one_rdp.rdp(*args)


def test_fast_enough():
    orders = ORDERS[::3]  # 56 orders from 1.1 to 1024
    start = time.perf_counter()
    for sigma in (0.7, 0.71):  # uncached
        replace_one_rdp.rdp(0.0981, sigma, orders)
    assert (time.perf_counter() - start) / 2 < 1.0
