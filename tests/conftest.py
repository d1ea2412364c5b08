"""Shared pytest fixtures."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

# the shared helpers assert (e.g. tests.helpers.cli.error_lines): keep pytest's assertion
# introspection there, as when they lived in the test modules; before any test module imports them
pytest.register_assert_rewrite("tests.helpers")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real-data folder: $RADPRIV_DATA_DIR, else `<repo>/../shared/data`; skips when absent."""
    value = os.environ.get("RADPRIV_DATA_DIR", "").strip()
    path = Path(value) if value else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real data folder {path} not found: set RADPRIV_DATA_DIR to the shared data folder")
    return path


@pytest.fixture(autouse=True)
def _fresh_radpriv_logger():
    """Drop a handler an earlier CLI call bound to a since-closed captured stderr, and let
    radpriv's records reach caplog."""
    logger = logging.getLogger("radpriv")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Token caches of tests go to a temporary folder, never the user's cache."""
    monkeypatch.setenv("RADPRIV_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "radpriv-cache"))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A fresh sqlite MLflow store (artifacts beside it) for one test."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def reports_csv(tmp_path_factory) -> tuple[Path, list[str]]:
    """A fabricated CT-RATE-shaped CSV outside the test's MLflow folder, and its texts."""
    from tests.synthetic import write_fabricated_ct_csv

    path = tmp_path_factory.mktemp("data") / "reports.csv"
    return path, write_fabricated_ct_csv(path)


@pytest.fixture
def lightning_shims():
    """`make(net, optimizer) -> (module, wrapped)`: what radpriv's step runners (DPStep, the DDP
    runner) need of a LightningModule and of Lightning's optimizer wrapper, for a bare network."""
    from radpriv.model.module import per_sample_loss
    from radpriv.privacy.dp_step import without_lightning

    def make(net, opt):
        return without_lightning(
            lambda c: per_sample_loss(net(c["input_ids"], c["attention_mask"]), c["labels"]), opt)

    return make
