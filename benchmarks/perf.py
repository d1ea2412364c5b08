"""Performance suite: ratios measured side by side in one invocation.

    python benchmarks/perf.py [--steps 5] [--reps 1] [--e2e] [--profile] [--out benchmarks/out]

Every training configuration runs in its own subprocess (a fresh process: its peak RSS is its
own; one configuration's warm caches do not flatter the next), on the same model, the same
Open-i training reports and the same logical batch; configurations alternate within each
repetition so drift on this shared machine hits them alike. Reported per configuration: reports
per second over the timed optimisation steps (the first step is a warm-up, not timed) and peak
RSS. Then ratios against their baseline, and the pyfunc model's inference throughput and load
time. `--e2e` adds the default job (`radpriv train privacy.epsilon=0.1`) split into set-up,
fit, evaluation and logging from its `time/*` metrics.

Writes perf.json and perf.md under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import ROOT, fit_timed_steps, header, run_child, write_result  # noqa: E402

# bf16 mixed precision (the default where it is native, as on the CPU this was tuned on) unless
# a configuration says fp32; both are named explicitly so the ratios mean the same everywhere
BF16 = "trainer.precision=bf16-mixed"
FP32 = "trainer.precision=32-true"
DP = ["privacy.epsilon=1", BF16]
NONPRIVATE = ["privacy.epsilon=null", BF16]
# the first recipe: LoRA on all six layers, so nothing is frozen below it (the ratio shows what
# top-half LoRA with the frozen-prefix cache saves)
ALL_LAYERS = ["finetune.layers_to_transform=all"]

# name -> (overrides, training loop); the default recipe is LoRA on the top half with the frozen
# lower half computed once (finetune.cache_frozen_prefix) and dynamic padding
CONFIGS: dict[str, tuple[list[str], str]] = {
    "lora_nonprivate": (NONPRIVATE, "lightning"),
    "lora_nonprivate_fp32": ([*NONPRIVATE, FP32], "lightning"),
    "lora_dp": (DP, "lightning"),
    "lora_dp_fp32": ([*DP, FP32], "lightning"),
    "lora_dp_plain_loop": (DP, "plain"),
    "lora_dp_pad_max_length": ([*DP, "data.padding=max_length"], "lightning"),
    "lora_dp_top_half_uncached": ([*DP, "finetune.cache_frozen_prefix=false"], "lightning"),
    "lora_dp_all_layers": ([*DP, *ALL_LAYERS], "lightning"),
}

# ratio name -> (numerator, denominator, target, what the target means)
RATIOS = [
    ("fp32 / bf16 DP-LoRA time per report", "lora_dp_fp32", "lora_dp", 1.4, "≥"),
    ("fp32 / bf16 non-private LoRA time per report", "lora_nonprivate_fp32", "lora_nonprivate", 1.4, "≥"),
    ("DP / non-private time per report (bf16)", "lora_dp", "lora_nonprivate", 1.10, "≤"),
    ("DP / non-private time per report (fp32)", "lora_dp_fp32", "lora_nonprivate_fp32", 1.10, "≤"),
    ("Lightning path / plain Opacus loop time per report", "lora_dp", "lora_dp_plain_loop", 1.05, "≤"),
    ("pad-to-max_length / dynamic padding time per report", "lora_dp_pad_max_length", "lora_dp", 1.5, "≥"),
    ("top-half LoRA: uncached / cached frozen prefix time per report", "lora_dp_top_half_uncached",
     "lora_dp", None, ""),
    ("all-layer LoRA (first recipe) / top-half cached (recipe) time per report", "lora_dp_all_layers",
     "lora_dp", None, ""),
]


# --------------------------------------------------------------------------- one configuration
def _timed_steps(step_fn, batches, steps: int) -> tuple[float, int]:
    """Run steps+1 optimisation steps of a hand-written loop; time the last `steps` (the first warms up)."""
    it = iter(batches)
    step_fn(next(it))
    n, t0 = 0, time.perf_counter()
    for _ in range(steps):
        n += step_fn(next(it))
    return time.perf_counter() - t0, n


def measure(name: str, steps: int, extra: Sequence[str] = (), profile: bool = False) -> dict:
    """Train `steps` timed DP/non-private steps of one configuration in this process; `profile`:
    under torch.profiler, with the operators' shares of the steps' CPU time in the result."""
    import contextlib

    import torch

    from radpriv.config import compose
    from radpriv.train import attach_prefix_cache, build

    overrides, loop = CONFIGS[name]
    cfg = compose([*extra, *overrides, "trainer.progress_bar=false"])
    torch.set_num_threads(int(cfg.trainer.num_threads or os.cpu_count() or 1))
    built = build(cfg)
    dm, module, plan = built.dm, built.module, built.plan
    dm.setup("fit")
    t_cache = time.perf_counter()
    attach_prefix_cache(cfg, dm, module)
    t_cache = time.perf_counter() - t_cache
    if plan is not None:
        # enough planned steps for the accountant; the plan's σ is the real one
        dm.poisson = True
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if profile \
        else contextlib.nullcontext()
    with profiler:
        if loop == "plain":
            seconds, reports = _plain_opacus_loop(module, dm, plan, steps, cfg.trainer.precision)
        else:
            timer = fit_timed_steps(module, dm, plan, steps, cfg.trainer.precision)
            seconds, reports = timer.seconds, timer.reports
    shares = {"op_shares": op_shares(profiler)} if profile else {}
    return {**shares, "name": name, "overrides": overrides, "loop": loop, "steps": steps,
            "reports": reports, "seconds": seconds, "reports_per_s": reports / seconds,
            "prefix_cache_s": t_cache,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads(), "precision": cfg.trainer.precision}


def op_shares(profiler, top: int = 10) -> dict[str, float]:
    """The `top` operators by own CPU time, as shares of all operators' own time (which counts each
    thread's time: shares, not seconds, are what compare across runs on a shared machine)."""
    events = [e for e in profiler.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    return {e.key: e.self_cpu_time_total / total for e in ranked}


def _plain_opacus_loop(module, dm, plan, steps: int, precision: str) -> tuple[float, int]:
    """The same peft model, Opacus hooks and optimizer, the same batches: no Lightning at all
    (the fp32 per-sample-gradient hooks radpriv needs under bf16, the forward under autocast)."""
    import torch
    from opacus.optimizers import DPOptimizer

    from radpriv.model.module import per_sample_loss
    from radpriv.model.precision import autocast
    from radpriv.privacy.fp32_grad_sample import Fp32GradSampleHooks as GradSampleHooks

    net = module.net
    net.train()
    GradSampleHooks(net, batch_first=True, loss_reduction="sum")
    params = [p for p in net.parameters() if p.requires_grad]
    opt = DPOptimizer(torch.optim.AdamW(params, lr=float(module.hparams.lr)),
                      noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
                      expected_batch_size=plan.expected_batch_size, loss_reduction="sum")
    cache = module.prefix_cache

    def logits(chunk):
        if cache is not None:
            feats = cache.gather("train", chunk["index"], chunk["attention_mask"].shape[1])
            return net(None, chunk["attention_mask"], prefix_hidden=feats, prefix_layers=cache.k)
        return net(chunk["input_ids"], chunk["attention_mask"])

    def step(batch) -> int:
        last = len(batch.chunks) - 1
        for k, chunk in enumerate(batch.chunks):
            with autocast(precision):
                loss = per_sample_loss(logits(chunk), chunk["labels"]).sum()
            loss.backward()
            if k < last:
                opt.signal_skip_step(do_skip=True)
                opt.step()
                opt.zero_grad()
        opt.step()
        opt.zero_grad()
        return batch.size

    return _timed_steps(step, dm.train_dataloader(), steps)


# --------------------------------------------------------------------------- inference
def measure_pyfunc(n_reports: int, extra: Sequence[str] = (), reps: int = 2) -> dict:
    """Log a (1-step) MiniLM model, then time mlflow.pyfunc load and predict on Open-i texts, in
    fp32 and in bf16 ($RADPRIV_PRECISION at load), alternated `reps` times."""
    import mlflow
    import pandas as pd

    from radpriv.config import compose
    from radpriv.data.sources import load_table
    from radpriv.train import train

    precisions = ("32-true", "bf16-mixed")
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        cwd = os.getcwd()
        os.chdir(tmp)  # artifacts beside the temporary store
        saved = os.environ.get("RADPRIV_PRECISION")
        try:
            cfg = compose([*extra, "privacy.epsilon=null", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                           "trainer.progress_bar=false", "tracking.checkpoint_dir=null",
                           f"tracking.uri={uri}"])
            run_id = train(cfg)["run_id"]
            texts = list(load_table(cfg.data, 42).texts)[:n_reports]
            mlflow.set_tracking_uri(uri)
            models, load_s = {}, {}
            for precision in precisions:
                os.environ["RADPRIV_PRECISION"] = precision
                t0 = time.perf_counter()
                models[precision] = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
                load_s[precision] = time.perf_counter() - t0
            frame = pd.DataFrame({"text": texts})
            first = {}
            for precision, model in models.items():
                t0 = time.perf_counter()
                model.predict(frame.iloc[:8])
                first[precision] = time.perf_counter() - t0
            seconds: dict[str, list[float]] = {p: [] for p in precisions}
            for rep in range(reps):
                for precision in (precisions if rep % 2 == 0 else precisions[::-1]):
                    t0 = time.perf_counter()
                    out = models[precision].predict(frame)
                    seconds[precision].append(time.perf_counter() - t0)
        finally:
            os.chdir(cwd)
            if saved is None:
                os.environ.pop("RADPRIV_PRECISION", None)
            else:
                os.environ["RADPRIV_PRECISION"] = saved
    by = {p: {"load_s": load_s[p], "first_call_8_reports_s": first[p],
              "predict_s": statistics.median(seconds[p]),
              "reports_per_s": len(texts) / statistics.median(seconds[p])} for p in precisions}
    return {"reports": len(texts), "columns": len(out.columns), "by_precision": by,
            "bf16_over_fp32_throughput": by["bf16-mixed"]["reports_per_s"] / by["32-true"]["reports_per_s"],
            **by["bf16-mixed"]}


def _train_process(overrides: Sequence[str]) -> tuple[float, dict]:
    """One `radpriv train` process in a fresh temporary store: (wall seconds, its metrics)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        proc = subprocess.run([sys.executable, "-m", "radpriv.cli", "train", *overrides,
                               "trainer.progress_bar=false", "tracking.checkpoint_dir=null"],
                              cwd=tmp, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"run {' '.join(overrides)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])["metrics"]


def measure_e2e() -> dict:
    """The default job as `make demo` runs it, split by the run's own time/* metrics."""
    wall, metrics = _train_process(["privacy.epsilon=0.1"])
    split = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("time/")}
    split["process_start_and_imports_s"] = wall - split["total_s"]
    return {"wall_s": wall, **split}


def measure_e2e_pair(reps: int = 2) -> dict:
    """Whole-process time of a one-epoch MiniLM run on Open-i, DP (ε = 1) against non-private,
    alternated `reps` times: what a user waits, fixed per-run privacy work included."""
    runs = {"dp": ["privacy.epsilon=1", "trainer.max_epochs=1"],
            "nonprivate": ["privacy.epsilon=null", "trainer.max_epochs=1"]}
    walls: dict[str, list[float]] = {k: [] for k in runs}
    splits: dict[str, dict] = {}
    for rep in range(reps):
        for name in (list(runs) if rep % 2 == 0 else list(runs)[::-1]):
            wall, metrics = _train_process(runs[name])
            walls[name].append(wall)
            splits[name] = {k.split("/", 1)[1]: round(v, 2) for k, v in metrics.items() if k.startswith("time/")}
    med = {k: statistics.median(v) for k, v in walls.items()}
    return {"wall_s": walls, "median_wall_s": med, "dp_over_nonprivate": med["dp"] / med["nonprivate"],
            "last_split": splits}


# --------------------------------------------------------------------------- driver
def _run_child(name: str, steps: int, extra: Sequence[str] = (), profile: bool = False) -> dict:
    return run_child(__file__, ["--one", name, "--steps", str(steps), *[f"--set={o}" for o in extra],
                                *(["--profile"] if profile else [])], name)


def markdown(result: dict) -> str:
    lines = [f"# Performance ({result['date']}, {result['machine']})", "",
             f"Command: `{result['command']}`", "",
             "| configuration | reports/s | peak RSS (MB) | runs |", "|---|---|---|---|"]
    for name, r in result["configs"].items():
        lines.append(f"| {name} | {r['reports_per_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['runs']} |")
    lines += ["", "| ratio | value | target |", "|---|---|---|"]
    for r in result["ratios"]:
        target = f"{r['direction']} {r['target']}" if r["target"] else "—"
        lines.append(f"| {r['name']} | {r['value']:.3f} | {target} |")
    for name, r in result["configs"].items():
        if r.get("op_shares"):
            lines += ["", f"Where {name}'s steps spend CPU time (torch.profiler, own time per operator): "
                      + ", ".join(f"{op} {share:.0%}" for op, share in r["op_shares"].items())]
    if "pyfunc" in result:
        p = result["pyfunc"]
        for precision, q in p["by_precision"].items():
            lines += ["", f"pyfunc inference, {precision}: {q['reports_per_s']:.1f} reports/s over {p['reports']} "
                          f"reports; load {q['load_s']:.1f} s; "
                          f"first call (8 reports) {q['first_call_8_reports_s']:.2f} s"]
        lines += ["", f"predict throughput bf16 / fp32: {p['bf16_over_fp32_throughput']:.2f} (target ≥ 1.4)"]
    if "e2e" in result:
        e = result["e2e"]
        lines += ["", f"default job (ε = 0.1): {e['wall_s']:.0f} s wall (target ≤ 210 s); "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in e.items() if k != "wall_s")]
    if "e2e_pair" in result:
        e = result["e2e_pair"]
        lines += ["", "one-epoch MiniLM run, whole process: DP (ε = 1) "
                  + " / ".join(f"{w:.1f}" for w in e["wall_s"]["dp"]) + " s, non-private "
                  + " / ".join(f"{w:.1f}" for w in e["wall_s"]["nonprivate"])
                  + f" s; DP / non-private {e['dp_over_nonprivate']:.3f} (target ≤ 1.10)"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="timed optimisation steps per configuration")
    ap.add_argument("--reps", type=int, default=1, help="alternating repetitions of every configuration")
    ap.add_argument("--only", nargs="*", default=None, help="a subset of configurations")
    ap.add_argument("--pyfunc-reports", type=int, default=746)
    ap.add_argument("--no-pyfunc", action="store_true")
    ap.add_argument("--e2e", action="store_true", help="also time the default ε=0.1 job end to end, and "
                    "a one-epoch DP against non-private run, whole process, alternated twice")
    ap.add_argument("--pair", action="store_true", help="only the one-epoch DP / non-private process pair of --e2e")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a Hydra override for every configuration (e.g. --set model=bert_small)")
    ap.add_argument("--profile", action="store_true", help="also profile each configuration's steps "
                    "(torch.profiler; slows them: compare ratios of unprofiled runs)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.set, args.profile)))
        return
    from tqdm import tqdm

    names = args.only or list(CONFIGS)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    jobs = [(rep, n) for rep in range(args.reps) for n in (names if rep % 2 == 0 else names[::-1])]
    for _rep, name in tqdm(jobs, desc="configurations"):
        runs[name].append(_run_child(name, args.steps, args.set, args.profile))
    configs = {n: {"reports_per_s": statistics.median(r["reports_per_s"] for r in rs),
                   "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "runs": len(rs),
                   "prefix_cache_s": statistics.median(r["prefix_cache_s"] for r in rs),
                   **({"op_shares": rs[-1]["op_shares"]} if "op_shares" in rs[-1] else {})}
               for n, rs in runs.items()}
    ratios = []
    for label, num, den, target, direction in RATIOS:
        if num in configs and den in configs:
            # time per report ratio = throughput(den) / throughput(num)
            value = configs[den]["reports_per_s"] / configs[num]["reports_per_s"]
            ratios.append({"name": label, "value": value, "target": target, "direction": direction})
    result = {**header(), "steps": args.steps, "configs": configs, "ratios": ratios, "runs": runs}
    if not args.no_pyfunc:
        result["pyfunc"] = measure_pyfunc(args.pyfunc_reports, args.set)
    if args.e2e:
        result["e2e"] = measure_e2e()
    if args.e2e or args.pair:
        result["e2e_pair"] = measure_e2e_pair()
    write_result(args.out, "perf", result, markdown)


if __name__ == "__main__":
    main()
