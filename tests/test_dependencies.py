"""Dependency hygiene: the lock file `make install` uses agrees with pyproject's ranges, and the
bounds that guard a library's internals stay beside their reasons."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_dependency_is_locked_within_its_range():
    pins = locked()
    requirements = [Requirement(r) for r in [*project()["dependencies"], *project()["optional-dependencies"]["dev"]]]
    for req in requirements:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency but not in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"requirements.lock pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}"
    assert pins["torch"] == re.search(r"torch==([\w.]+)", (ROOT / "Makefile").read_text()).group(1)


def test_libraries_whose_internals_radpriv_uses_are_bounded_with_a_reason():
    text = (ROOT / "pyproject.toml").read_text()
    for name in ("transformers", "peft", "opacus", "dp-accounting", "optuna"):
        req = next(Requirement(r) for r in project()["dependencies"] if canonicalize_name(Requirement(r).name) == name)
        assert any(s.operator == "<" for s in req.specifier), f"{name} has no upper bound"
        comment = text[:text.index(f'"{name}>=')].rstrip().rsplit("\n", 1)[-1]
        assert comment.strip().startswith("#"), f"{name}'s bound has no reason in the comment above it"
