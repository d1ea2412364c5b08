"""The layout: no test module imports another test module; radpriv's imports keep its boundaries.

Importing a test module from another runs the imported module's top level (fixtures, constants,
imports of heavy libraries) and ties the two files together, so that moving or editing one test
breaks another; what several test modules share lives in tests/helpers/ instead.

radpriv's own boundaries: its module-level imports form no cycle; data/, model/ and privacy/
never reach MLflow or radpriv.tracking; no command imports another command's modules (they
share library modules); and only tracking/model_ref.py downloads from the artifact store.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _is_test_module(name: str) -> bool:
    """`tests.test_x` (or a name below it)."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[0] == "tests" and parts[1].startswith("test_")


def imports_of_test_modules(source: str, filename: str = "<test>") -> list[tuple[int, str]]:
    """(line, module) for every import of a `tests.test_*` module in `source`, at any nesting level:
    `import tests.test_x`, `from tests.test_x import ...`, `from tests import test_x`, the relative
    forms, and `importlib.import_module("tests.test_x")` / `__import__("tests.test_x")`."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if _is_test_module(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and _is_test_module(node.module):
                names = [node.module]
            elif node.level == 0 and node.module == "tests":
                names = [f"tests.{alias.name}" for alias in node.names if alias.name.startswith("test_")]
            elif node.level == 1 and node.module:
                names = [f"tests.{node.module}"] if node.module.startswith("test_") else []
            elif node.level == 1:
                names = [f"tests.{alias.name}" for alias in node.names if alias.name.startswith("test_")]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and _is_test_module(node.args[0].value)
              and ((isinstance(node.func, ast.Name) and node.func.id == "__import__")
                   or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"))):
            names = [node.args[0].value]
        found += [(node.lineno, name) for name in names]
    return sorted(found)


# the check must see each form, top level or nested in a function, else passing proves nothing
_EVERY_FORM = """\
import os
from tests.test_a import x
import tests.test_b as b
def f():
    from tests.test_c import y
    import tests.test_d
from tests import test_e, synthetic
from .test_f import z
from . import test_g
import importlib
m = importlib.import_module("tests.test_h")
from tests.helpers.cli import TINY
from tests.synthetic import synthetic_table
s = "python -m tests.test_ddp"
"""


def test_no_test_module_imports_another_test_module():
    assert imports_of_test_modules(_EVERY_FORM) == [
        (2, "tests.test_a"), (3, "tests.test_b"), (5, "tests.test_c"), (6, "tests.test_d"),
        (7, "tests.test_e"), (8, "tests.test_f"), (9, "tests.test_g"), (11, "tests.test_h")]

    paths = sorted(TESTS.glob("test_*.py"))
    assert Path(__file__).resolve() in paths and len(paths) > 30, paths  # the glob found the suite
    offences = [f"{path.relative_to(TESTS.parent)}:{line}: imports {name}"
                for path in paths
                for line, name in imports_of_test_modules(path.read_text(encoding="utf-8"), str(path))]
    assert not offences, ("a test module imports another test module; move what they share to "
                          "tests/helpers/:\n" + "\n".join(offences))


PRIVACY = TESTS.parent / "radpriv" / "privacy"


def privacy_imports(source: str, modules: set[str], filename: str = "<privacy>") -> set[str]:
    """Every module imported by `source` (top level or inside a function), resolved to a name in
    `modules` (radpriv.privacy's own modules, by file stem) or, for anything else, kept as the
    full dotted name: `import radpriv.privacy.x`, `from radpriv.privacy.x import y`,
    `from radpriv.privacy import x`, `from . import x`, `from .x import y`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=filename)):
        dotted: list[str] = []
        if isinstance(node, ast.Import):
            dotted = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "radpriv.privacy" if node.level == 1 else (node.module if node.level == 0 else None)
            if node.level == 1 and node.module:
                base = f"radpriv.privacy.{node.module}"
            if base is None:
                continue
            dotted = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in dotted:
            parts = name.split(".")
            if parts[:2] == ["radpriv", "privacy"] and len(parts) > 2:
                if parts[2] in modules:
                    found.add(parts[2])
            elif parts[:2] != ["radpriv", "privacy"]:
                found.add(name)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for succ in sorted(graph.get(node, ())):
            if state.get(succ) == 1:
                return stack[stack.index(succ):] + [succ]
            if succ not in state and (found := visit(succ)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


_PRIVACY_FORMS = """\
import radpriv.privacy.a
from radpriv.privacy.b import x
from radpriv.privacy import c, not_a_module
def f():
    from . import d
    from .e import y
    import mlflow.tracking
"""


def test_privacy_package_imports_have_no_cycle_and_no_mlflow():
    modules = {"a", "b", "c", "d", "e"}
    assert privacy_imports(_PRIVACY_FORMS, modules) == {"a", "b", "c", "d", "e", "mlflow.tracking"}
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None

    paths = sorted(PRIVACY.glob("*.py"))
    names = {path.stem for path in paths} - {"__init__"}
    assert {"accounting", "accountants", "calibration", "independent_check", "privacy_params"} <= names
    imports = {path.stem: privacy_imports(path.read_text(encoding="utf-8"), names, str(path))
               for path in paths}
    graph = {name: {dep for dep in deps if dep in names and dep != name} for name, deps in imports.items()}
    assert _cycle(graph) is None, f"radpriv.privacy imports itself in a cycle: {' -> '.join(_cycle(graph))}"
    with_mlflow = sorted(name for name, deps in imports.items()
                         if any(dep == "mlflow" or dep.startswith("mlflow.") for dep in deps))
    assert not with_mlflow, f"radpriv.privacy must not import mlflow: {with_mlflow}"


def test_data_and_privacy_import_no_mlflow_or_tracking():
    """Reading data and accounting for privacy never talk to MLflow: that boundary is tracking/."""
    root = PRIVACY.parent
    offenders = []
    for package in ("data", "privacy"):
        for path in sorted((root / package).glob("*.py")):
            for name in privacy_imports(path.read_text(encoding="utf-8"), set(), str(path)):
                if name.split(".")[0] == "mlflow" or name.startswith("radpriv.tracking"):
                    offenders.append(f"{package}/{path.name}: {name}")
    assert not offenders, offenders


# ------------------------------------------------------------------ the radpriv package

RADPRIV = TESTS.parent / "radpriv"


def _module_names() -> dict[str, Path]:
    """radpriv's modules by dotted name (a package by its own name, e.g. radpriv.data)."""
    out = {}
    for path in sorted(RADPRIV.rglob("*.py")):
        parts = path.relative_to(RADPRIV.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def radpriv_imports(source: str, module: str, modules: set[str], top_level_only: bool,
                    filename: str = "<radpriv>") -> set[str]:
    """The modules `source` (the module `module`) imports: radpriv's resolved to the module in
    `modules` (`from radpriv.x import y` is radpriv.x.y when that is a module, else radpriv.x),
    anything else by its dotted name. `top_level_only`: only the imports that run when the module
    is imported (module level, also inside if/try/with and class bodies; not inside functions)."""
    tree = ast.parse(source, filename=filename)
    package = module if (RADPRIV.parent / (module.replace(".", "/") + "/__init__.py")).exists() \
        else module.rpartition(".")[0]

    def nodes(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and top_level_only:
                continue
            yield node
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    yield from nodes(inner)

    found: set[str] = set()
    for node in (nodes(tree.body) if top_level_only else ast.walk(tree)):
        dotted: list[str] = []
        if isinstance(node, ast.Import):
            dotted = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            dotted = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                      for alias in node.names]
        for name in dotted:
            if name.split(".")[0] != "radpriv":
                found.add(name)
                continue
            while name not in modules and "." in name:
                name = name.rpartition(".")[0]
            found.add(name)
    return found - {module}


_RADPRIV_FORMS = """\
import os
import radpriv.privacy.plan
from radpriv.data import table, not_a_module
from radpriv.model.bundle import load_bundle
from . import accounting
from .callback import DPCallback
if True:
    from radpriv.errors import ConfigError
class C:
    import radpriv.config
def f():
    import mlflow
    from radpriv.tracking import model_ref
"""


def test_the_import_checks_see_every_form():
    modules = {"radpriv", "radpriv.privacy", "radpriv.privacy.plan", "radpriv.privacy.accounting",
               "radpriv.privacy.callback", "radpriv.data", "radpriv.data.table", "radpriv.model",
               "radpriv.model.bundle", "radpriv.errors", "radpriv.config", "radpriv.tracking",
               "radpriv.tracking.model_ref"}
    top = {"os", "radpriv.privacy.plan", "radpriv.data.table", "radpriv.data", "radpriv.model.bundle",
           "radpriv.privacy.accounting", "radpriv.privacy.callback", "radpriv.errors", "radpriv.config"}
    module = "radpriv.privacy.x"
    assert radpriv_imports(_RADPRIV_FORMS, module, modules, top_level_only=True) == top
    assert radpriv_imports(_RADPRIV_FORMS, module, modules, top_level_only=False) == top | {
        "mlflow", "radpriv.tracking.model_ref"}


def test_radpriv_module_level_imports_have_no_cycle():
    """A cycle among the imports that run at import time makes the import order matter (a name
    is missing when one module of the cycle is imported first): none may exist."""
    paths = _module_names()
    assert {"radpriv.train", "radpriv.privacy.plan", "radpriv.tracking.model_ref", "radpriv.cli_args"} <= set(paths)
    graph = {}
    for name, path in paths.items():
        deps = radpriv_imports(path.read_text(encoding="utf-8"), name, set(paths), True, str(path))
        # importing radpriv.a.b runs radpriv/a/__init__.py first
        graph[name] = {d for dep in deps if dep in paths
                       for d in [dep, *(dep.rsplit(".", k)[0] for k in range(1, dep.count(".")))]
                       if d != name and d != "radpriv"}
    cycle = _cycle(graph)
    assert cycle is None, f"radpriv's module-level imports form a cycle: {' -> '.join(cycle)}"


def _imports_anywhere(module: str, paths: dict[str, Path]) -> set[str]:
    path = paths[module]
    return radpriv_imports(path.read_text(encoding="utf-8"), module, set(paths), False, str(path))


def test_data_model_and_privacy_never_talk_to_mlflow():
    """Reading data, building models and accounting for privacy never talk to MLflow, at any
    level: that boundary is radpriv/tracking/."""
    paths = _module_names()
    offenders = [f"{name}: {dep}" for name in paths
                 if name.split(".")[1:2] in (["data"], ["model"], ["privacy"])
                 for dep in sorted(_imports_anywhere(name, paths))
                 if dep.split(".")[0] == "mlflow" or dep.startswith("radpriv.tracking")]
    assert not offenders, offenders


#: each command's modules (a package: every module in it); radpriv.train is also the training
#: library every command may use, and radpriv.cli dispatches to all of them
COMMANDS = {"evaluate": ("radpriv.evaluate",), "predict": ("radpriv.predict",),
            "label": ("radpriv.teacher.label",), "pate": ("radpriv.teacher.pate",),
            "sweep": ("radpriv.sweep",), "tune": ("radpriv.tune",), "audit": ("radpriv.audit",)}


def test_no_command_imports_another_command():
    """Commands share library modules (labelling, train, tracking, ...), never each other's code:
    a change to one command's module then cannot break another command."""
    paths = _module_names()

    def command_of(module: str) -> str | None:
        return next((c for c, roots in COMMANDS.items()
                     if any(module == r or module.startswith(r + ".") for r in roots)), None)

    for roots in COMMANDS.values():
        assert all(r in paths for r in roots), roots
    offenders = [f"{name} ({command_of(name)}) imports {dep} ({command_of(dep)})"
                 for name in paths if command_of(name)
                 for dep in sorted(_imports_anywhere(name, paths))
                 if command_of(dep) not in (None, command_of(name))]
    assert not offenders, offenders


def test_only_model_ref_downloads_from_the_artifact_store():
    """radpriv/tracking/model_ref.py is the one place a model bundle (or a run's JSON file) is
    fetched: every command then resolves and downloads references the same way."""
    allowed = RADPRIV / "tracking" / "model_ref.py"
    offenders = [str(path.relative_to(RADPRIV.parent)) for path in sorted(RADPRIV.rglob("*.py"))
                 if path != allowed and "download_artifacts" in path.read_text(encoding="utf-8")]
    assert allowed.is_file() and "download_artifacts" in allowed.read_text(encoding="utf-8")
    assert not offenders, f"download_artifacts outside tracking/model_ref.py: {offenders}"
