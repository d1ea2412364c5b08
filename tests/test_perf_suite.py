"""The performance suite (benchmarks/perf.py) runs end to end on a tiny encoder and reports
every ratio it promises; its numbers are measured, so only their shape is checked here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.synthetic import write_fabricated_ct_csv

ROOT = Path(__file__).resolve().parents[1]


def run_perf_suite(tmp_path: Path, *args: str) -> Path:
    """benchmarks/perf.py with `args` on a tiny encoder and 60 fabricated reports; its --out folder."""
    csv_path = tmp_path / "reports.csv"
    write_fabricated_ct_csv(csv_path, n=60)
    tiny = ["model=tiny_bert", "data=ct_rate_text", f"data.path={csv_path}", "data.max_length=32",
            "privacy.expected_batch_size=8", "privacy.max_physical_batch_size=4", "trainer.num_threads=1"]
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "perf.py"), "--steps", "2", *args,
                           "--out", str(out), *[f"--set={o}" for o in tiny]],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow  # seven fresh processes (≈ 1 min alone): the suite's harness, not a unit
@pytest.mark.timeout(600)
def test_perf_suite_measures_every_configuration_and_ratio(tmp_path):
    out = run_perf_suite(tmp_path, "--pyfunc-reports", "20")
    result = json.loads((out / "perf.json").read_text())
    from benchmarks_perf import CONFIGS, RATIOS  # noqa: E402  (benchmarks/ is not a package)

    assert set(result["configs"]) == set(CONFIGS)
    for name, r in result["configs"].items():
        assert r["reports_per_s"] > 0 and r["peak_rss_mb"] > 0, name
        (run,) = result["runs"][name]
        assert run["steps"] == 2 and run["reports"] > 0, name  # the timed steps saw reports
    assert [r["name"] for r in result["ratios"]] == [r[0] for r in RATIOS]
    assert all(r["value"] > 0 for r in result["ratios"])
    assert result["pyfunc"]["reports"] == 20 and result["pyfunc"]["reports_per_s"] > 0
    assert set(result["pyfunc"]["by_precision"]) == {"32-true", "bf16-mixed"}
    assert "| ratio | value | target |" in (out / "perf.md").read_text()


@pytest.mark.integration  # one fresh process
@pytest.mark.timeout(300)
def test_perf_suite_profiles_where_the_steps_spend_their_time(tmp_path):
    out = run_perf_suite(tmp_path, "--only", "lora_dp", "--no-pyfunc", "--profile")
    shares = json.loads((out / "perf.json").read_text())["configs"]["lora_dp"]["op_shares"]
    assert 0 < len(shares) <= 10 and 0 < sum(shares.values()) <= 1 + 1e-9
    assert list(shares.values()) == sorted(shares.values(), reverse=True)
    assert any(op in shares for op in ("aten::mm", "aten::addmm", "aten::bmm"))  # a transformer's steps
    assert "Where lora_dp's steps spend CPU time" in (out / "perf.md").read_text()


@pytest.fixture(autouse=True)
def _perf_module(monkeypatch):
    """Import benchmarks/perf.py as `benchmarks_perf` for its tables of configurations and ratios."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmarks_perf", ROOT / "benchmarks" / "perf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "benchmarks_perf", module)


def test_the_dropout_benchmarks_integer_mask_is_a_dropout_of_rate_p():
    """benchmarks/dropout_cost.py times a faster mask; RESULTS.md cites it as a dropout, so it
    must keep each value with probability 1 - p, scale by 1 / (1 - p), and pass through in eval."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("dropout_cost", ROOT / "benchmarks" / "dropout_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    drop = module.IntegerMaskDropout(0.1).train()
    x = torch.ones(400, 1000)
    y = drop(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.9) < 0.003  # 400,000 draws: the standard error is 0.0005
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
    assert abs(y.mean().item() - 1.0) < 0.004  # unbiased
    assert not torch.equal(drop(x), y)  # fresh masks per call
    assert torch.equal(drop.eval()(x), x)
