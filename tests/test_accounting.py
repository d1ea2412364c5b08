"""Privacy accounting: ε bounds, noise calibration, the independent cross-check.

Fast (a few seconds on 2 cores): the expensive PRV evaluations are cached by the module, and
the grid below stays in regimes that cost well under 2 s each.
"""

from __future__ import annotations

import inspect
import json
import math
import pickle
import warnings

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from radpriv.errors import ConfigError, PrivacyError
from radpriv.privacy import accountants
from radpriv.privacy import accounting as acc
from radpriv.privacy import independent_check as ind

# An Open-i-sized run: N = 2,700 training reports, expected batch 64, 8 epochs.
N = 2700
Q = 64 / N
STEPS = 8 * math.ceil(N / 64)  # 344
DELTA = acc.default_delta(N)  # ≈ 1.68e-4


# --- configuration values --------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (1.0, 1.0), (0.01, 0.01), ("0.1", 0.1), (" 1e-2 ", 0.01), (10, 10.0),
    (None, None), ("null", None), ("None", None), ("inf", None), ("Infinity", None),
    (float("inf"), None),
])
def test_resolve_epsilon(value, expected):
    assert acc.resolve_epsilon(value) == expected


@pytest.mark.parametrize("value", [0, 0.0, -1, "-0.5", "-inf", float("-inf"), float("nan"),
                                   "nan", "abc", "", True, [1.0]])
def test_resolve_epsilon_rejects(value):
    with pytest.raises(ConfigError) as err:
        acc.resolve_epsilon(value)
    assert "\n" not in str(err.value)


def test_default_delta():
    assert acc.default_delta(N) == pytest.approx(1 / N**1.1)
    assert acc.default_delta(N) < 1 / N
    assert acc.default_delta(2) < 0.5
    for bad in (1, 0, -5, 2.5, True, "2700"):
        with pytest.raises(ConfigError):
            acc.default_delta(bad)


def test_check_delta():
    assert acc.check_delta(DELTA, N) == DELTA
    assert acc.check_delta("1e-5", N) == 1e-5
    assert acc.resolve_delta(None, N) == DELTA
    for bad in (1 / N, 2 / N, 0.5, 0.0, -1e-5):
        with pytest.raises(PrivacyError) as err:
            acc.check_delta(bad, N)
        message = str(err.value)
        assert "\n" not in message
        assert f"{bad:.4g}" in message and f"{1 / N:.4g}" in message
        assert "whole record" in message
    for bad in ("abc", float("nan"), None):
        with pytest.raises(ConfigError):
            acc.check_delta(bad, N)


def test_make_accountant():
    assert isinstance(acc.make_accountant("prv"), PRVAccountant)
    assert isinstance(acc.make_accountant(" RDP "), RDPAccountant)
    assert acc.make_accountant("prv").mechanism() == "prv"
    with pytest.raises(ConfigError, match="prv, rdp"):
        acc.make_accountant("gdp")


# --- ε spent ---------------------------------------------------------------------------------


def test_epsilon_spent_basics():
    one = acc.epsilon_spent("prv", (2.0, 0.05, 200), 1e-5)
    assert 0 < one < math.inf
    # a triple, an Opacus history, split and reordered entries: the same composition
    assert acc.epsilon_spent("prv", [(2.0, 0.05, 200)], 1e-5) == one
    assert acc.epsilon_spent("prv", [(2.0, 0.05, 150), (1.0, 0.05, 0), (2.0, 0.05, 50)],
                             1e-5) == one
    assert acc.epsilon_spent("prv", (2.0, 0.05, 0), 1e-5) == 0.0
    assert acc.epsilon_spent("prv", [], 1e-5) == 0.0
    assert acc.epsilon_spent("rdp", (0.0, 0.05, 1), 1e-5) == math.inf
    assert acc.epsilon_spent("prv", (4.0, 0.05, 200), 1e-5) < one  # more noise, less ε
    assert acc.epsilon_spent("rdp", (2.0, 0.05, 200), 1e-5) > one  # RDP is looser
    # the Opacus accountant itself reports the same bound (relative error bar by default)
    opacus_accountant = acc.make_accountant("prv")
    opacus_accountant.history = [(2.0, 0.05, 200)]
    assert opacus_accountant.get_epsilon(1e-5) == one
    for bad in [(2.0, 1.5, 10), (-1.0, 0.1, 10), (1.0, 0.1, 2.5), "abc"]:
        with pytest.raises(ConfigError):
            acc.epsilon_spent("prv", bad, 1e-5)
    with pytest.raises(PrivacyError):
        acc.epsilon_spent("prv", (2.0, 0.05, 10), 1.0)


def test_prv_is_opacus_upper_bound():
    """Same numbers as stock Opacus for the same error bar, and the upper end of the bar."""
    history = ((1.0, 0.1, 100),)
    stock = PRVAccountant()
    stock.history = list(history)
    ours = acc.make_accountant("prv")
    ours.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ours.get_epsilon(1e-5, eps_error=0.01) == pytest.approx(
            stock.get_epsilon(1e-5, eps_error=0.01), rel=1e-8)
    bound = accountants.prv_bounds(history, 1e-5, 0.01)
    assert bound.upper >= bound.estimate + bound.eps_error - 1e-12
    assert bound.lower <= bound.estimate <= bound.upper
    # the default path: error bar min(0.5 % of ε, 0.01) (here ε ≈ 7: Opacus' 0.01)
    assert accountants.prv_epsilon(history, 1e-5).upper == pytest.approx(bound.upper, rel=1e-6)
    small = ((2.0, 0.01, 100),)  # ε ≈ 0.35
    relative = accountants.prv_epsilon(small, 1e-5)
    assert relative.eps_error == pytest.approx(acc.PRV_REL_EPS_ERROR * relative.estimate,
                                               rel=0.05)
    assert relative.upper < accountants.prv_bounds(small, 1e-5, 0.01).upper


# σ, q, steps, δ: ε ≈ 0.01 and 0.1 (Open-i), ≈ 8 (Open-i, little noise), large q, tiny q with
# many steps, tiny δ.
GRID = [
    (68.8, Q, STEPS, DELTA),
    (10.3, Q, STEPS, DELTA),
    (0.6, Q, STEPS, DELTA),
    (1.0, 0.1, 100, 1e-5),
    (3.0, 0.001, 2000, 1e-6),
    (2.0, 0.01, 1000, 1e-8),
]


@pytest.mark.parametrize("sigma, q, steps, delta", GRID)
def test_epsilon_agrees_with_dp_accounting_pld(sigma, q, steps, delta):
    eps = acc.epsilon_spent("prv", (sigma, q, steps), delta)
    independent = ind.independent_epsilons(sigma, q, steps, delta)
    rel = eps / independent["pld"] - 1
    assert abs(rel) <= 0.01, (sigma, q, steps, delta, eps, independent)
    # the PRV bound is the upper end of its 0.5 % error bar: above the pessimistic PLD
    assert 0 < rel < 0.008, (eps, independent)
    # RDP (a looser bound) is above both
    assert independent["rdp"] >= eps
    rdp = acc.epsilon_spent("rdp", (sigma, q, steps), delta)
    assert rdp == pytest.approx(independent["rdp"], rel=0.01)
    assert rdp <= independent["rdp"] * (1 + 1e-9)  # dp_accounting's fractional orders round up


def test_pld_is_pessimistic_and_converged():
    from dp_accounting.pld import privacy_loss_distribution

    signature = inspect.signature(privacy_loss_distribution.from_gaussian_mechanism)
    assert signature.parameters["pessimistic_estimate"].default is True
    history = ((68.8, Q, STEPS),)
    fine = ind.independent_epsilons(68.8, Q, STEPS, DELTA)["pld"]
    coarse = ind._pld_epsilon(history, DELTA, 1e-2 * fine)
    finer = ind._pld_epsilon(history, DELTA, 3e-5 * fine)
    assert coarse > fine  # pessimistic rounding approaches ε from above
    assert abs(fine / finer - 1) < 1e-4  # and 1e-4·ε is converged


# --- calibration -----------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.01, 0.1, 1.0, 10.0])
def test_calibration_openi(target):
    result = acc.calibrate_noise_multiplier(target, DELTA, Q, STEPS)
    sigma = float(result)
    eps = acc.epsilon_spent("prv", (sigma, Q, STEPS), DELTA)
    assert eps == result.epsilon
    assert 0.99 * target <= eps <= target, (sigma, eps)
    assert result.noise_multiplier == sigma and result.steps == STEPS
    assert result.accountant == "prv" and result.target_epsilon == target
    if target == 0.01:
        # Opacus' get_noise_multiplier (absolute tolerance 0.01) returns σ = 640 here
        assert sigma < 100, sigma
        assert ind.independent_epsilons(sigma, Q, STEPS, DELTA)["pld"] <= target


def test_calibration_rdp_and_result_object():
    result = acc.calibrate_noise_multiplier(1.0, 1e-5, 0.01, 1000, accountant="rdp")
    assert 0.99 <= acc.epsilon_spent("rdp", (float(result), 0.01, 1000), 1e-5) <= 1.0
    prv = acc.calibrate_noise_multiplier(1.0, 1e-5, 0.01, 1000)
    assert prv < result  # the tighter accountant needs less noise
    assert isinstance(result, float) and result * 2 == 2 * result.noise_multiplier
    clone = pickle.loads(pickle.dumps(result))
    assert clone == result and clone.as_dict() == result.as_dict()


@pytest.mark.parametrize("kwargs, error", [
    ({"target_epsilon": None}, ConfigError),
    ({"target_epsilon": float("inf")}, ConfigError),
    ({"target_epsilon": -1.0}, ConfigError),
    ({"steps": 0}, ConfigError),
    ({"sample_rate": 1.5}, ConfigError),
    ({"accountant": "gdp"}, ConfigError),
    ({"rel_tol": 0.0}, ConfigError),
    ({"delta": 0.0}, PrivacyError),
])
def test_calibration_rejects(kwargs, error):
    args = {"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.01, "steps": 100} | kwargs
    with pytest.raises(error):
        acc.calibrate_noise_multiplier(**args)


# --- cross-check -----------------------------------------------------------------------------


def test_cross_check():
    cal = acc.calibrate_noise_multiplier(1.0, DELTA, Q, STEPS)
    numbers = ind.cross_check(cal.epsilon, "prv", float(cal), Q, STEPS, DELTA)
    assert numbers["privacy/epsilon"] == cal.epsilon
    assert abs(numbers["privacy/epsilon_cross_check_rel_diff"]) <= 0.01
    assert numbers["privacy/epsilon_pld"] <= cal.epsilon <= numbers[
        "privacy/epsilon_rdp_independent"]
    assert all(isinstance(v, float) for v in numbers.values())
    with pytest.raises(PrivacyError, match="below both") as err:
        ind.cross_check(0.9 * cal.epsilon, "prv", float(cal), Q, STEPS, DELTA)
    assert "\n" not in str(err.value)
    with pytest.raises(PrivacyError, match="differ by.*accountant=rdp"):
        ind.cross_check(1.05 * cal.epsilon, "prv", float(cal), Q, STEPS, DELTA)
    rdp = acc.epsilon_spent("rdp", (float(cal), Q, STEPS), DELTA)
    assert ind.cross_check(rdp, "rdp", float(cal), Q, STEPS, DELTA)["privacy/epsilon"] == rdp


# --- the stateful accountant -----------------------------------------------------------------


def test_privacy_accountant_state_dict_round_trip():
    sigma, q, delta = 1.5, 0.02, 1e-5
    uninterrupted = acc.PrivacyAccountant("prv", delta)
    first = acc.PrivacyAccountant("prv", delta)
    for _ in range(120):
        uninterrupted.step(noise_multiplier=sigma, sample_rate=q)
        first.step(noise_multiplier=sigma, sample_rate=q)
    state = json.loads(json.dumps(first.state_dict()))  # plain lists and floats only
    assert state == {"accountant": "prv", "delta": delta, "relation": "add_remove", "history": [[sigma, q, 120]]}
    resumed = acc.PrivacyAccountant("prv", delta)
    resumed.load_state_dict(state)
    assert resumed.steps == 120 and resumed.epsilon() == first.epsilon()
    for _ in range(80):
        uninterrupted.step(noise_multiplier=sigma, sample_rate=q)
        resumed.step(noise_multiplier=sigma, sample_rate=q)
    assert resumed.history == uninterrupted.history == [(sigma, q, 200)]
    assert resumed.epsilon() == uninterrupted.epsilon() == acc.epsilon_spent(
        "prv", (sigma, q, 200), delta)
    assert abs(resumed.cross_check()["privacy/epsilon_cross_check_rel_diff"]) <= 0.01
    with pytest.raises(PrivacyError):
        acc.PrivacyAccountant("prv", 1e-6).load_state_dict(state)
    with pytest.raises(PrivacyError):
        acc.PrivacyAccountant("rdp", delta).load_state_dict(state)
    with pytest.raises(PrivacyError):
        acc.PrivacyAccountant("prv", delta).load_state_dict({"history": []})
    with pytest.raises(PrivacyError):  # another neighbouring relation: another ε for the same steps
        acc.PrivacyAccountant("prv", delta, "replace_one").load_state_dict(state)


def test_privacy_accountant_heterogeneous_history():
    account = acc.PrivacyAccountant("rdp", 1e-5)
    assert account.steps == 0 and account.epsilon() == 0.0
    for q in (0.01, 0.02, 0.01):
        for _ in range(50):
            account.step(noise_multiplier=1.0, sample_rate=q)
    assert account.history == [(1.0, 0.01, 50), (1.0, 0.02, 50), (1.0, 0.01, 50)]
    assert account.epsilon() == acc.epsilon_spent("rdp", [(1.0, 0.01, 100), (1.0, 0.02, 50)],
                                                  1e-5)
    assert abs(account.cross_check()["privacy/epsilon_cross_check_rel_diff"]) <= 0.01


# --- adjacency: replace-one (the guarantee) and add/remove (the literature's figure) ---------


def _dp_accounting_pld(sigma: float, q: float, steps: int, delta: float, relation: str,
                       interval: float) -> float:
    """A fresh dp-accounting PLD accountant, built here and nowhere else."""
    import dp_accounting
    from dp_accounting import NeighboringRelation
    from dp_accounting.pld import PLDAccountant

    rel = {"replace_one": NeighboringRelation.REPLACE_ONE,
           "add_remove": NeighboringRelation.ADD_OR_REMOVE_ONE}[relation]
    accountant = PLDAccountant(rel, value_discretization_interval=interval)
    accountant.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize("target", [0.01, 1.0, 10.0])
def test_each_adjacency_agrees_with_dp_accounting_pld_under_its_relation(target):
    """The run's ε under replace-one (σ calibrated for it) and the add/remove figure of the same
    steps each agree with dp-accounting's PLD under the stated relation within 1 %."""
    q, steps = 256 / 2609, 88  # the default job: Open-i, batch 256, 8 epochs
    delta = acc.default_delta(2609)
    cal = acc.calibrate_noise_multiplier(target, delta, q, steps, relation="replace_one")
    assert cal.relation == "replace_one"
    replace_one = acc.epsilon_spent("prv", (float(cal), q, steps), delta, "replace_one")
    assert replace_one == cal.epsilon
    assert 0.99 * target <= replace_one <= target
    interval = 1e-4 * target
    assert replace_one == pytest.approx(_dp_accounting_pld(float(cal), q, steps, delta, "replace_one", interval),
                                        rel=0.01)
    add_remove = acc.epsilon_spent("prv", (float(cal), q, steps), delta, "add_remove")
    assert add_remove == pytest.approx(_dp_accounting_pld(float(cal), q, steps, delta, "add_remove", interval),
                                       rel=0.01)
    assert add_remove < replace_one  # the same noise buys less privacy when N is public
    numbers = ind.cross_check(replace_one, "prv", float(cal), q, steps, delta, relation="replace_one")
    assert numbers["privacy/epsilon_add_remove"] == add_remove
    assert add_remove < replace_one < numbers["privacy/epsilon_replace_one_rdp"]


def test_the_default_job_costs_twice_as_much_under_replace_one():
    """The issue's worked example: σ 21.35, q 0.0981, 88 steps (the old default job)."""
    delta = acc.default_delta(2609)
    assert acc.epsilon_spent("prv", (21.35, 0.0981, 88), delta, "add_remove") == pytest.approx(0.099, abs=0.001)
    assert acc.epsilon_spent("prv", (21.35, 0.0981, 88), delta, "replace_one") == pytest.approx(0.218, abs=0.001)


def test_the_replace_one_check_brackets_the_report_between_add_remove_and_its_rdp_bound():
    """At run time the replace-one ε must lie between the add/remove ε of the same steps (below)
    and radpriv's own replace-one RDP bound (above): the add/remove figure passed off as the
    guarantee, or a value above a valid looser bound, stops the run."""
    q, steps, delta = 256 / 2609, 88, acc.default_delta(2609)
    cal = acc.calibrate_noise_multiplier(1.0, delta, q, steps, relation="replace_one")
    numbers = ind.cross_check(cal.epsilon, "prv", float(cal), q, steps, delta, relation="replace_one")
    add_remove, rdp = numbers["privacy/epsilon_add_remove"], numbers["privacy/epsilon_replace_one_rdp"]
    assert add_remove < cal.epsilon < rdp < 1.3 * cal.epsilon
    for wrong in (0.98 * add_remove, 1.05 * rdp):
        with pytest.raises(PrivacyError, match="replace-one"):
            ind.cross_check(wrong, "prv", float(cal), q, steps, delta, relation="replace_one")
    with pytest.raises(ConfigError):
        acc.epsilon_spent("prv", (1.0, q, steps), delta, "swap")
