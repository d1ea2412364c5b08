"""What every benchmark shares: timed optimisation steps, a point in a fresh process, the write-out.

A point runs in its own subprocess so its peak memory is its own and no warm cache from the last
point flatters it; the first optimisation step of a point warms up and is never timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _sync(pl_module) -> None:
    """Wait for the GPU's queued kernels, so a step's time is its device time, not its launch time."""
    import torch

    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)


def step_timer(steps: int):
    """A Lightning callback timing optimisation steps 2..steps+1 (`.seconds`) and counting their
    reports (`.reports`)."""
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self):
            self.steps, self.seen, self.reports, self.seconds, self.t0 = steps, 0, 0, 0.0, None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            _sync(pl_module)
            self.t0 = time.perf_counter() if self.seen >= 1 else None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync(pl_module)
            if self.t0 is not None:
                self.seconds += time.perf_counter() - self.t0
                self.reports += batch.size
                self.t0 = None
            self.seen += 1

    return StepTimer()


def fit_timed_steps(module, dm, plan, steps: int, precision: str, accelerator: str = "cpu"):
    """Fit `steps` + 1 optimisation steps with Lightning (DP when `plan` is set); the timer of the last `steps`."""
    import lightning as L

    from radpriv.privacy.callback import DPCallback

    timer = step_timer(steps)
    trainer = L.Trainer(max_steps=steps + 1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, devices=1,
                        accelerator=accelerator, precision=precision,
                        callbacks=[*([DPCallback(plan)] if plan is not None else []), timer])
    trainer.fit(module, datamodule=dm)
    return timer


def run_child(script: str | Path, args: Sequence[str], what: str) -> dict:
    """Run `script args` in a fresh Python process; its last JSON line on stdout."""
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def header() -> dict:
    """When, where and how a result was produced: every result file starts with these."""
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} CPU cores",
            "command": "python " + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}


def write_result(out: str | Path, stem: str, result: dict, markdown: Callable[[dict], str]) -> None:
    """`stem`.json and `stem`.md under `out`, and the markdown on stdout."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
