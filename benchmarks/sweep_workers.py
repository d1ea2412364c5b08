"""One sweep, run by 1 worker on every core against W one-thread workers that split its cells.

    python benchmarks/sweep_workers.py [--workers 2] [--set KEY=VALUE ...] [--out benchmarks/out]

Each configuration runs the same `radpriv sweep` command (default grid: MiniLM on Open-i,
ε ∈ {1, 10} × seeds {42, 43}, one epoch, no non-private cells or baselines) from scratch in its
own temporary folder (its own sqlite store, checkpoints and private folder): first one worker
with `trainer.num_threads=<cores>`, then W workers with one thread each, started together.
The result is the wall-clock ratio, and that every cell was trained exactly once.
Writes sweep_workers.json and sweep_workers.md under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import ROOT, header, write_result  # noqa: E402

GRID = ["sweep.epsilons=[1,10]", "sweep.seeds=[42,43]", "sweep.nonprivate=[]", "sweep.baselines=[]",
        "trainer.max_epochs=1", "sweep.bootstrap.n_resamples=200", "trainer.progress_bar=false",
        "sweep.progress_bar=false"]


def _sweep(folder: Path, overrides: list[str], workers: int, threads: int) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db",
           "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "radpriv.cli", "sweep", *overrides, f"trainer.num_threads={threads}"]
    # once first, as docs/SCALING.md says: creates the store (two fresh clients racing on a new
    # sqlite file can clash) and checks the command
    subprocess.run([*command, "sweep.plan_only=true"], cwd=folder, env=env, check=True, capture_output=True)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(workers)]
    outs = [p.communicate() for p in procs]
    wall = time.perf_counter() - t0
    for p, (_, err) in zip(procs, outs):
        if p.returncode:
            raise SystemExit(f"a worker failed:\n{err[-2000:]}")
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    with sqlite3.connect(folder / "mlflow.db") as db:
        keys = [k for (k,) in db.execute("SELECT value FROM tags WHERE key = 'radpriv.run_key'")]
    return {"workers": workers, "threads": threads, "wall_s": wall, "training_runs": len(keys),
            "distinct_cells": len(set(keys)), "trained_per_worker": [s.get("trained") for s in summaries]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more sweep overrides")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = ap.parse_args()
    overrides = [*GRID, *args.set]
    cores = os.cpu_count() or 1
    results = []
    for workers, threads in ((1, cores), (args.workers, max(1, cores // args.workers))):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(_sweep(Path(tmp), overrides, workers, threads))
            print(json.dumps(results[-1]), flush=True)
    one, many = results
    write_result(args.out, "sweep_workers", {**header(), "grid": overrides, "runs": results,
                                             "speedup": one["wall_s"] / many["wall_s"]}, markdown)


def markdown(result: dict) -> str:
    runs = result["runs"]
    return (f"# Sweep workers ({result['date']}, {result['machine']})\n\n"
            f"Command: `{result['command']}`; grid: `{' '.join(result['grid'])}`\n\n"
            "| workers × threads | wall (s) | training runs | distinct cells | trained per worker |\n"
            "|---|---|---|---|---|\n"
            + "".join(f"| {r['workers']} × {r['threads']} | {r['wall_s']:.0f} | {r['training_runs']} | "
                      f"{r['distinct_cells']} | {r['trained_per_worker']} |\n" for r in runs)
            + f"\nSpeed-up of {runs[1]['workers']} workers: {result['speedup']:.2f}×\n")


if __name__ == "__main__":
    main()
