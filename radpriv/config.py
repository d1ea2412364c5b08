"""Composing the Hydra config from `radpriv/conf` (also reachable as `conf/` at the repo root)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from radpriv.errors import ConfigError

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("data", "model", "finetune", "privacy", "trainer")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The resolved config for these overrides; Hydra's errors become one-line ConfigErrors."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    for ov in overrides:
        key, _, value = ov.partition("=")
        if key in GROUPS and value and value not in group_options(key):
            hint = " (or model=custom model.source=<Hugging Face id or local dir>)" if key == "model" else ""
            raise ConfigError(f"unknown {key} {value!r}: choose one of {', '.join(group_options(key))}{hint}")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return hydra_compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"bad override in {' '.join(overrides) or '(none)'}: {first}") from None
