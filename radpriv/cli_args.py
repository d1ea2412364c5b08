"""The `key=value` arguments of the commands that are not Hydra configs: predict, label, pate
and serve.

Their arguments name files and models (`model=models:/x@champion` is a reference, not the
training config group; `labels=a,b` is a list, not a Hydra sweep), so they are parsed here, by
one parser, with one set of rules:

- every argument is `key=value`; a key the command does not know, or an argument without `=`,
  is one ConfigError line that lists the keys it does know;
- an empty value means "not given";
- a few spellings of the training config are accepted for the same setting
  (`tracking.uri` → `tracking_uri`, `trainer.num_threads`, `trainer.precision`);
- numbers, lists and booleans are read by `whole_number`, `real_number`, `comma_list` and
  `boolean`, whose errors name the key as the user wrote it and say what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from radpriv.errors import ConfigError

#: training-config spellings of the shared settings
ALIASES = {"tracking.uri": "tracking_uri", "trainer.num_threads": "num_threads",
           "trainer.precision": "precision"}

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


@dataclass(frozen=True)
class Parsed:
    """The given values by key (empty ones dropped) and, for a command that accepts them, the
    arguments left to Hydra in their order."""

    values: dict[str, str]
    rest: list[str]
    prefix: str = ""

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key, default)

    def __getitem__(self, key: str) -> str:
        return self.values[key]

    def spelled(self, key: str) -> str:
        """The key as the user writes it (`pate.k` for pate's `k`)."""
        return f"{self.prefix}{key}"


def parse(args: Sequence[str], *, command: str, keys: Iterable[str], required: Sequence[str] = (),
          example: str = "", prefix: str = "", aliases: Mapping[str, str] = ALIASES,
          rest_allowed: bool = False) -> Parsed:
    """`key=value` arguments of `command` → Parsed.

    `prefix` (e.g. "pate."): only keys with it are the command's, written with it; with
    `rest_allowed` every other argument is left, unparsed, for Hydra (pate's teacher config).
    `required`: keys that must be given, reported together with `example`."""
    keys = tuple(keys)
    values: dict[str, str] = {}
    rest: list[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.strip()
        if prefix:
            if not key.startswith(prefix):
                if rest_allowed:
                    rest.append(arg)
                    continue
                key = "\0"  # unknown below
            key = key.removeprefix(prefix)
        key = aliases.get(key, key)
        if not sep or key not in keys:
            known = ", ".join(prefix + k for k in keys)
            raise ConfigError(f"{command}: unexpected argument {arg!r}; use key=value with keys {known}")
        if value.strip():
            values[key] = value.strip()
    missing = [k for k in required if k not in values]
    if missing:
        needs = " ".join(f"{prefix}{k}=<…>" for k in missing)
        raise ConfigError(f"{command} needs {needs}" + (f", e.g. {example}" if example else ""))
    return Parsed(values, rest, prefix)


def whole_number(parsed: Parsed, key: str, default: int | None, low: int = 1,
                 high: int | None = None) -> int | None:
    """An integer ≥ `low` and, where given, ≤ `high` (default when not given)."""
    if key not in parsed:
        return default
    raw = parsed[key]
    try:
        n = int(raw)
    except ValueError:
        n = None
    if n is None or n < low or (high is not None and n > high):
        expected = f"from {low} to {high}" if high is not None else f"≥ {low}"
        raise ConfigError(f"{parsed.spelled(key)}={raw!r}: expected a whole number {expected}")
    return n


def real_number(parsed: Parsed, key: str, default: float | None, low: float = 0.0) -> float | None:
    """A finite number ≥ `low` (default when not given)."""
    if key not in parsed:
        return default
    raw = parsed[key]
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v >= low):
        raise ConfigError(f"{parsed.spelled(key)}={raw!r}: expected a number ≥ {low:g}")
    return v


def boolean(parsed: Parsed, key: str, default: bool) -> bool:
    """true/false (also 1/0, yes/no; any case)."""
    if key not in parsed:
        return default
    raw = parsed[key].lower()
    if raw not in TRUE + FALSE:
        raise ConfigError(f"{parsed.spelled(key)}={parsed[key]!r}: expected true or false")
    return raw in TRUE


def comma_list(value: str | None) -> list[str] | None:
    """`a,b` → ["a", "b"] (blank items dropped); None when not given."""
    if value is None:
        return None
    return [x.strip() for x in value.split(",") if x.strip()]
