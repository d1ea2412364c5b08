"""Composing the Hydra config from `radpriv/conf` (also reachable as `conf/` at the repo root)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from omegaconf import DictConfig

from radpriv.errors import ConfigError

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("data", "model", "finetune", "privacy", "trainer")

# `radpriv <command> --cfg job`: the next compose prints its result and stops the command
_PRINT_JOB: ContextVar[bool] = ContextVar("radpriv_print_job", default=False)


class JobPrinted(Exception):  # noqa: N818 - a stop, not an error
    """`--cfg job`: compose printed the configuration the command would run; it stops here."""


@contextmanager
def printing_job() -> Iterator[None]:
    """Within this block the first `compose` prints its config as YAML and raises JobPrinted."""
    token = _PRINT_JOB.set(True)
    try:
        yield
    finally:
        _PRINT_JOB.reset(token)


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The resolved config for these overrides; Hydra's errors become one-line ConfigErrors.

    The privacy, trainer and finetune groups are checked against radpriv/config_schema.py
    (types, ranges, unknown keys), then the ε recipe, `trainer.thresholds=auto` and
    `trainer.precision=auto` are resolved: the result is what the command runs (and what
    `--cfg job` prints).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from radpriv.config_schema import check

    overrides = list(overrides)
    for ov in overrides:
        key, _, value = ov.partition("=")
        if key in GROUPS and value and value not in group_options(key):
            hint = " (or model=custom model.source=<Hugging Face id or local dir>)" if key == "model" else ""
            raise ConfigError(f"unknown {key} {value!r}: choose one of {', '.join(group_options(key))}{hint}")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"bad override in {' '.join(overrides) or '(none)'}: {first}") from None
    check(cfg)
    apply_epsilon_recipe(cfg)
    resolve_auto_thresholds(cfg)
    resolve_auto_precision(cfg)
    if _PRINT_JOB.get():
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg), end="", flush=True)
        raise JobPrinted
    return cfg


def model_sources(models: Sequence[str], overrides: Sequence[str] = ()) -> dict[str, str]:
    """{model group: its `model.source`} as each would compose with `overrides` (what
    radpriv.model.encoder.available_models checks before a sweep or a search starts)."""
    return {m: str(compose([*overrides, f"model={m}"]).model.source) for m in models}


def resolve_auto_precision(cfg: DictConfig) -> None:
    """`trainer.precision=auto`: bf16-mixed where this machine's device computes bf16 natively,
    else 32-true (radpriv/model/precision.py); resolved here so that run keys and params show it."""
    from radpriv.model.precision import accelerator_device_type, resolve_precision

    trainer = cfg.trainer
    trainer.precision = resolve_precision(trainer.precision, accelerator_device_type(trainer.accelerator))


def resolve_auto_thresholds(cfg: DictConfig) -> None:
    """`trainer.thresholds=auto`: public from a public start (finetune.init_from=public), else
    validation; resolved here so that run keys and params show the choice."""
    if cfg.trainer.thresholds != "auto":
        return
    cfg.trainer.thresholds = "public" if str(cfg.finetune.init_from) == "public" else "validation"


def recipe_row(table, epsilon) -> dict:
    """The row of `privacy.recipe_by_epsilon` for this ε: the first whose epsilon_at_least ≤ ε
    (ε = ∞ for non-private training)."""
    from radpriv.privacy.accounting import resolve_epsilon

    eps = resolve_epsilon(epsilon)
    eps = math.inf if eps is None else eps
    for row in table:
        if eps >= float(row["epsilon_at_least"]):
            return dict(row)
    raise ConfigError(f"privacy.recipe_by_epsilon has no row for ε = {eps}: end it with epsilon_at_least: 0")


def apply_epsilon_recipe(cfg: DictConfig) -> None:
    """Fill `privacy.max_grad_norm` and `finetune.lr` left null from the recipe's row for ε.

    The recipe's clipping norm and learning rate depend on ε (docs/RESULTS.md, "An ε-dependent
    recipe"); a value set in a conf file or on the command line is never replaced. Done at
    compose time so that every command (train, tune's trial 0, sweep cells, run keys, the MLflow
    params) sees the values the run will use.
    """
    privacy, finetune = cfg.privacy, cfg.finetune
    if not privacy.recipe_by_epsilon:
        return
    row = recipe_row(privacy.recipe_by_epsilon, privacy.epsilon)
    if privacy.max_grad_norm is None and row.get("max_grad_norm") is not None:
        privacy.max_grad_norm = float(row["max_grad_norm"])
    if finetune.lr is None and row.get("lr") is not None:
        finetune.lr = float(row["lr"])
