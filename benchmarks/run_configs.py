"""Run `radpriv train` once per line of override sets and collect the final JSON lines.

    python benchmarks/run_configs.py OUT.jsonl "privacy.epsilon=1 trainer.max_epochs=4" "..."

Each configuration runs in its own process, one after the other (this machine has 2 cores),
and its summary (run id, metrics, wall time) is appended to OUT.jsonl as soon as it ends.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time


def main() -> None:
    out, configs = sys.argv[1], sys.argv[2:]
    for i, overrides in enumerate(configs, 1):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "radpriv.cli", "train", *shlex.split(overrides),
                               "trainer.progress_bar=false"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        record = {"overrides": overrides, "returncode": proc.returncode, "wall_s": round(wall, 1)}
        if proc.returncode == 0 and lines:
            record.update(json.loads(lines[-1]))
        else:
            record["error"] = proc.stderr.strip().splitlines()[-1:] if proc.stderr else []
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
        m = record.get("metrics", {})
        print(f"[{i}/{len(configs)}] {wall:6.0f}s  f1w={m.get('test/f1_weighted', float('nan')):.3f} "
              f"auroc={m.get('test/auroc_macro', float('nan')):.3f}  {overrides}", flush=True)


if __name__ == "__main__":
    main()
