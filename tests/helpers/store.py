"""A test module's own MLflow store, for module-scoped fixtures that train a tiny model once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class ModuleStore:
    root: Path  # the store's folder, the working directory inside the block
    csv: Path  # a fabricated CT-RATE-shaped CSV (tests/synthetic.py)
    texts: list[str]  # its reports
    uri: str  # sqlite:///<root>/mlflow.db
    mp: pytest.MonkeyPatch  # undone when the block ends


@contextmanager
def module_store(tmp_path_factory, name: str) -> Iterator[ModuleStore]:
    """A fresh folder with a fabricated CSV and a sqlite store. Inside the block it is the working
    directory (the store's ./mlruns artifacts and checkpoints go there), MLFLOW_TRACKING_URI names
    the store and the token cache stays in the folder: a module-scoped fixture runs before the
    per-test isolation of conftest.py does."""
    from tests.synthetic import write_fabricated_ct_csv

    root = tmp_path_factory.mktemp(name)
    csv = root / "reports.csv"
    texts = write_fabricated_ct_csv(csv)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("RADPRIV_CACHE_DIR", str(root / "cache"))
        yield ModuleStore(root, csv, texts, uri, mp)
