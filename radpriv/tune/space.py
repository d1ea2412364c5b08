"""The search space: what a trial may change, as radpriv overrides."""

from __future__ import annotations

from collections.abc import Mapping

from radpriv.errors import ConfigError

# parameters that change a trial's sampling rate or step count, i.e. its privacy mechanism
MECHANISM_PARAMS = ("expected_batch_size", "max_epochs")


def _log_range(space: Mapping, key: str) -> tuple[float, float] | None:
    value = space.get(key)
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"tune.space.{key}={value!r}: expected [low, high]") from None
    if not 0 < low < high:
        raise ConfigError(f"tune.space.{key}=[{low}, {high}]: need 0 < low < high")
    return low, high


def check_space(space: Mapping, accounting: str) -> None:
    searched = [k for k in ("lr", "max_grad_norm", *MECHANISM_PARAMS) if space.get(k) is not None]
    if not searched:
        raise ConfigError("tune.space searches nothing: set tune.space.lr or tune.space.max_grad_norm")
    for key in ("lr", "max_grad_norm"):
        _log_range(space, key)
    if accounting == "random_search":
        fixed = [k for k in MECHANISM_PARAMS if space.get(k) is not None]
        if fixed:
            raise ConfigError(
                f"tune.accounting=random_search needs every trial to be the same mechanism: "
                f"tune.space.{fixed[0]} changes q or the step count; set it to null")


def suggest(trial, space: Mapping) -> tuple[dict, list[str]]:
    """(parameters, overrides) for one trial."""
    params: dict = {}
    overrides: list[str] = []
    if (r := _log_range(space, "lr")) is not None:
        params["lr"] = trial.suggest_float("lr", *r, log=True)
        overrides.append(f"finetune.lr={params['lr']}")
    if (r := _log_range(space, "max_grad_norm")) is not None:
        params["max_grad_norm"] = trial.suggest_float("max_grad_norm", *r, log=True)
        overrides.append(f"privacy.max_grad_norm={params['max_grad_norm']}")
    if space.get("expected_batch_size") is not None:
        params["expected_batch_size"] = trial.suggest_categorical(
            "expected_batch_size", [int(b) for b in space["expected_batch_size"]])
        overrides.append(f"privacy.expected_batch_size={params['expected_batch_size']}")
    if space.get("max_epochs") is not None:
        low, high = (int(v) for v in space["max_epochs"])
        params["max_epochs"] = trial.suggest_int("max_epochs", low, high)
        overrides.append(f"trainer.max_epochs={params['max_epochs']}")
    return params, overrides


def overrides_for(params: Mapping) -> list[str]:
    """The overrides that reproduce a finished trial's parameters (for the final run)."""
    keys = {"lr": "finetune.lr", "max_grad_norm": "privacy.max_grad_norm",
            "expected_batch_size": "privacy.expected_batch_size", "max_epochs": "trainer.max_epochs"}
    return [f"{keys[k]}={v}" for k, v in params.items() if k in keys]
