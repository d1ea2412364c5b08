"""The serving benchmark (benchmarks/serve_load.py) runs end to end on a tiny encoder: every
configuration answers every request, every hostile request gets a 4xx that quotes nothing, and
the result files have the promised shape (the timings are measured, so only their shape)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.synthetic import write_fabricated_ct_csv

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # two fresh servers and a training run (≈ 1–2 min alone): the benchmark, not a unit
@pytest.mark.timeout(600)
def test_serve_load_measures_each_configuration_and_every_hostile_request(tmp_path):
    csv_path = tmp_path / "reports.csv"
    write_fabricated_ct_csv(csv_path, n=60)
    tiny = ["model=tiny_bert", "data=ct_rate_text", f"data.path={csv_path}", "data.max_length=32",
            "privacy.expected_batch_size=8", "privacy.max_physical_batch_size=4"]
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--requests", "40",
                           "--concurrency", "4", "--workers", "1", "--out", str(out),
                           *[f"--set={o}" for o in tiny]],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "serve_load.json").read_text())
    assert [(p["precision"], p["workers"]) for p in result["points"]] == [("32-true", 1), ("bf16-mixed", 1)]
    assert all(p["errors"] == 0 and p["req_per_s"] > 0 and p["p99_ms"] >= p["p50_ms"] for p in result["points"])
    assert result["reports"].startswith("built-in synthetic list")
    assert len(result["hostile"]) == 7
    for name, h in result["hostile"].items():
        assert 400 <= h["status"] < 500 and not h["quotes_request"] and h["next_valid_status"] == 200, name
    assert "| hostile request |" in (out / "serve_load.md").read_text()
