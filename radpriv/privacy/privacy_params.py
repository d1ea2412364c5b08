"""The privacy parameters, checked and normalised: ε, δ, N, accountant names, relations, histories.

Every module of :mod:`radpriv.privacy` that takes a user's ε, δ or a spend ``(σ, q, steps)``
validates it here, so the accountants (:mod:`radpriv.privacy.accountants`), the calibration
(:mod:`radpriv.privacy.calibration`) and the independent check
(:mod:`radpriv.privacy.independent_check`) share the same checks and the same canonical
history, and none of them imports another's private helpers.

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
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from opacus.accountants import RDPAccountant

from radpriv.errors import ConfigError, PrivacyError

ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")
#: Neighbouring relations: replace-one (N public; radpriv's guarantee) and add/remove (the
#: figure papers print; valid as a guarantee only where N is not published).
RELATIONS: tuple[str, ...] = ("replace_one", "add_remove")
#: The relation radpriv's guarantee is stated under: N is published, so replace-one
#: (:mod:`radpriv.privacy.replace_one`; docs/PRIVACY.md, "Adjacency").
GUARANTEE_RELATION = "replace_one"

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


def as_float(value: Any, what: str) -> float:
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
    d = as_float(delta, "privacy.delta")
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


def check_accountant_name(name: Any) -> str:
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


def check_delta_value(delta: Any) -> float:
    d = as_float(delta, "delta")
    if not 0.0 < d < 1.0:
        raise PrivacyError(f"delta={d:.4g} must be in (0, 1)")
    return d


# ---------------------------------------------------------------------------------------------
# Histories
# ---------------------------------------------------------------------------------------------


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def as_history(spend: Spend) -> History:
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


def canonical_history(history: History) -> History:
    """Merge entries with equal (σ, q), drop ones that cost nothing (q = 0 or no steps).

    Composition is commutative (the composed privacy-loss variable is a sum), so the order of
    steps does not matter; sorting makes equal spends hit the same cache entry.
    """
    merged: dict[tuple[float, float], int] = {}
    for sigma, q, n in history:
        if n > 0 and q > 0:
            merged[(sigma, q)] = merged.get((sigma, q), 0) + n
    return tuple(sorted((s, q, n) for (s, q), n in merged.items()))
