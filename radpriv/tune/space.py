"""The search space (`tune.space`): what a trial may change, as radpriv overrides."""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import OmegaConf

from radpriv.errors import ConfigError

#: searched parameter → the radpriv setting it overrides
SETTINGS = {"lr": "finetune.lr", "max_grad_norm": "privacy.max_grad_norm",
            "expected_batch_size": "privacy.expected_batch_size", "max_epochs": "trainer.max_epochs"}
#: parameters that change a trial's sampling rate or step count, i.e. its privacy mechanism
MECHANISM_PARAMS = ("expected_batch_size", "max_epochs")


def _pair(space: Mapping, key: str, cast) -> tuple | None:
    value = space.get(key)
    if value is None:
        return None
    try:
        low, high = (cast(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"tune.space.{key}={value!r}: expected [low, high]") from None
    if not 0 < low < high:
        raise ConfigError(f"tune.space.{key}=[{low}, {high}]: need 0 < low < high")
    return low, high


def _choices(space: Mapping, key: str) -> list[int] | None:
    value = space.get(key)
    if value is None:
        return None
    try:
        choices = sorted({int(v) for v in value})
    except (TypeError, ValueError):
        raise ConfigError(f"tune.space.{key}={value!r}: expected a list of whole numbers, e.g. [64,128]") from None
    if not choices or choices[0] < 1:
        raise ConfigError(f"tune.space.{key}={value!r}: expected a non-empty list of numbers ≥ 1")
    return choices


def check_space(space: Mapping, accounting: str) -> None:
    """One-line errors for a space that cannot be searched (before anything is opened)."""
    unknown = set(space) - set(SETTINGS)
    if unknown:
        raise ConfigError(f"tune.space.{sorted(unknown)[0]} is not searchable: choose among {', '.join(SETTINGS)}")
    _pair(space, "lr", float)
    _pair(space, "max_grad_norm", float)
    _pair(space, "max_epochs", int)
    _choices(space, "expected_batch_size")
    if not any(space.get(k) is not None for k in SETTINGS):
        raise ConfigError("tune.space searches nothing: set tune.space.lr or tune.space.max_grad_norm")
    if accounting == "random_search":
        changing = [k for k in MECHANISM_PARAMS if space.get(k) is not None]
        if changing:
            raise ConfigError(
                f"tune.accounting=random_search needs every trial to be the same DP mechanism, but "
                f"tune.space.{changing[0]} changes q or the step count: set it to null")


def suggest(trial, space: Mapping, models: list[str] | None = None) -> tuple[dict, list[str]]:
    """(parameters, overrides) of one trial: the model among `models` (a multi-model search), lr
    and max_grad_norm on a log scale."""
    params: dict = {}
    if models:
        params["model"] = trial.suggest_categorical("model", list(models))
    for key in ("lr", "max_grad_norm"):
        if (r := _pair(space, key, float)) is not None:
            params[key] = trial.suggest_float(key, *r, log=True)
    if (choices := _choices(space, "expected_batch_size")) is not None:
        params["expected_batch_size"] = trial.suggest_categorical("expected_batch_size", choices)
    if (r := _pair(space, "max_epochs", int)) is not None:
        params["max_epochs"] = trial.suggest_int("max_epochs", *r)
    return params, overrides_for(params)


def overrides_for(params: Mapping) -> list[str]:
    """The overrides that reproduce a trial's parameters (for the trial, and the retrain)."""
    model = [f"model={params['model']}"] if "model" in params else []
    return [*model, *(f"{SETTINGS[k]}={v}" for k, v in params.items() if k in SETTINGS)]


def recipe_params(cfg, space: Mapping) -> dict:
    """The configured (recipe) values of the searched parameters that lie inside the space.

    Enqueued as a study's first trial, they make "tuned vs default" one study's comparison and
    give TPE a known-good point; a value outside its range is left to the sampler.
    """
    params: dict = {}
    for key, cast in (("lr", float), ("max_grad_norm", float), ("max_epochs", int)):
        if (r := _pair(space, key, cast)) is None:
            continue
        value = cast(OmegaConf.select(cfg, SETTINGS[key]))
        if r[0] <= value <= r[1]:
            params[key] = value
    if (choices := _choices(space, "expected_batch_size")) is not None:
        value = int(OmegaConf.select(cfg, SETTINGS["expected_batch_size"]))
        if value in choices:
            params["expected_batch_size"] = value
    return params
