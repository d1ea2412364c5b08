"""The MLflow UI as a person sees it: benchmarks/ui_check.py in headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="no Chromium here: apt-get install chromium")
def test_the_run_page_shows_name_guarantee_datasets_and_the_model_card(tmp_path, real_data_dir):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ui_check.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "RADPRIV_DATA_DIR": str(real_data_dir)})
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    for what in ("run name", "privacy statement", "dataset inputs", "model card"):
        assert f"ok   {what}" in proc.stdout
    assert (tmp_path / "run.png").stat().st_size > 10_000
