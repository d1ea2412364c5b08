"""How DP-LoRA's cost grows, measured here, and what it predicts for MIMIC-CXR.

    python benchmarks/scaling.py [--shards 5 2 1] [--lengths 128 256 512] [--out benchmarks/out]

Three tables, every point in its own fresh process, fp32 and bf16 alternated:

- N: one DP epoch (ε = 1) of MiniLM on Open-i's training split, sharded (`data.train_shard=1/k`:
  522, 1,305, 2,609 reports): the frozen-prefix cache (O(N)), the fit (O(N) steps of a fixed
  expected batch) and their sum, per report;
- max_length: the same on ct_rate_text at 128, 256 and 512 tokens (its reports are long: the
  padding-free cost per report grows with the tokens a report keeps, and attention with their
  square);
- encoder shape: DP-LoRA steps of randomly initialised encoders of the paper's shapes
  (BERT-small L4/H512, BERT-medium L8/H512, ALBERT-base L12/H768 shared) against MiniLM, 128
  tokens; speed depends on the shape, not on the weights, and the paper's checkpoints cannot be
  downloaded here.

From them, the projected time of the paper's grid on a MIMIC-CXR-sized training set on one CPU
worker like this one, and on W workers (`radpriv sweep` workers split cells; docs/SCALING.md).
A GPU's figure comes from benchmarks/gpu.py, run where a GPU is.

Writes scaling.json and scaling.md under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import ROOT, fit_timed_steps, header, run_child, write_result  # noqa: E402

PRECISIONS = ("32-true", "bf16-mixed")
DP = ["privacy.epsilon=1", "trainer.progress_bar=false"]
# the paper's encoders, by shape (transformers config fields); MiniLM is the real one here
SHAPES = {
    # all-MiniLM-L6-v2's shape: timed with random weights where the packaged weights are absent
    "minilm": {"model_type": "bert", "num_hidden_layers": 6, "hidden_size": 384, "num_attention_heads": 12,
               "intermediate_size": 1536},
    "bert_small": {"model_type": "bert", "num_hidden_layers": 4, "hidden_size": 512, "num_attention_heads": 8,
                   "intermediate_size": 2048},
    "bert_medium": {"model_type": "bert", "num_hidden_layers": 8, "hidden_size": 512, "num_attention_heads": 8,
                    "intermediate_size": 2048},
    "albert_base": {"model_type": "albert", "num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12,
                    "intermediate_size": 3072, "embedding_size": 128},
}
# MIMIC-CXR (Johnson et al. 2019): 227,835 studies; the paper's grid per model: 4 ε × 3 seeds of
# DP-LoRA, plus non-private LoRA and full fine-tuning per seed
MIMIC_REPORTS = 227_835
GRID_CELLS_PER_MODEL = 4 * 3 + 2 * 3


# --------------------------------------------------------------------------- one point (child)
def one_epoch(overrides: list[str]) -> dict:
    """Set-up, the frozen-prefix cache and one DP epoch of `overrides`, timed apart."""
    import lightning as L
    import torch

    from radpriv.config import compose
    from radpriv.privacy.callback import DPCallback
    from radpriv.train import attach_prefix_cache, build

    cfg = compose([*DP, *overrides])
    torch.set_num_threads(int(cfg.trainer.num_threads or os.cpu_count() or 1))
    built = build(cfg)
    dm, module, plan = built.dm, built.module, built.plan
    dm.setup("fit")
    t0 = time.perf_counter()
    attach_prefix_cache(cfg, dm, module)
    cache_s = time.perf_counter() - t0
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        accelerator="cpu", precision=cfg.trainer.precision, callbacks=[DPCallback(plan)])
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_s = time.perf_counter() - t0
    n = dm.num_train
    tokens = sum(len(x) for x in dm.datasets["train"].input_ids)
    n_all = sum(len(ds.input_ids) for ds in dm.datasets.values())
    return {"overrides": overrides, "precision": cfg.trainer.precision, "n_train": n, "n_cached": n_all,
            "mean_tokens": tokens / n, "steps": trainer.global_step, "cache_s": cache_s, "fit_s": fit_s,
            "fit_s_per_report": fit_s / n, "cache_s_per_report": cache_s / max(1, n_all),
            "threads": torch.get_num_threads()}


def random_encoder(name: str, where: Path, tokenizer: str | None = None) -> Path:
    """A randomly initialised encoder of the `name` shape, with MiniLM's (BERT uncased)
    tokenizer or the one in the `tokenizer` folder, saved as a folder `model.source` can point at."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from radpriv.model.encoder import resolve_spec

    folder = where / name
    if (folder / "config.json").is_file():
        return folder
    shape = dict(SHAPES[name])
    config = AutoConfig.for_model(shape.pop("model_type"), vocab_size=30522, **shape)
    AutoModel.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer or resolve_spec("minilm").location).save_pretrained(folder)
    return folder


def shape_steps(overrides: list[str], steps: int) -> dict:
    """Reports per second over `steps` timed DP steps (after one warm-up step)."""
    import torch

    from radpriv.config import compose
    from radpriv.train import attach_prefix_cache, build

    cfg = compose([*DP, *overrides])  # a later privacy.epsilon in overrides wins
    torch.set_num_threads(int(cfg.trainer.num_threads or os.cpu_count() or 1))
    built = build(cfg)
    dm, module, plan = built.dm, built.module, built.plan
    dm.setup("fit")
    attach_prefix_cache(cfg, dm, module)
    accelerator = "gpu" if cfg.trainer.accelerator in ("gpu", "cuda") else "cpu"
    if accelerator == "gpu":
        torch.cuda.reset_peak_memory_stats()
    timer = fit_timed_steps(module, dm, plan, steps, cfg.trainer.precision, accelerator)
    if accelerator == "gpu":
        torch.cuda.synchronize()
    return {"overrides": overrides, "precision": cfg.trainer.precision, "private": plan is not None,
            "reports_per_s": timer.reports / timer.seconds, "reports": timer.reports,
            "peak_device_gb": torch.cuda.max_memory_allocated() / 2**30 if accelerator == "gpu" else None}


def _child(kind: str, overrides: list[str], steps: int) -> dict:
    """One point in a fresh process (its own memory peak; no warm caches from the last)."""
    return run_child(Path(__file__).resolve(), ["--one", kind, "--steps", str(steps),
                                                *[f"--set={o}" for o in overrides]], f"{kind} {' '.join(overrides)}")


# --------------------------------------------------------------------------- projection
def project(by_n: list[dict], shapes: dict[str, dict], epochs: int, workers: list[int]) -> dict:
    """Hours for the paper's grid on MIMIC_REPORTS training reports, per precision.

    Per report and epoch: the fit cost of the largest Open-i point (Open-i reports are ~as long
    as MIMIC-CXR's findings + impression at 128 tokens), times each encoder's step time relative
    to MiniLM; plus the prefix cache once per cell. Non-private cells are counted at the DP cost
    (an upper end: they skip per-sample gradients)."""
    out = {}
    for precision in PRECISIONS:
        largest = max((r for r in by_n if r["precision"] == precision), key=lambda r: r["n_train"])
        per_report = largest["fit_s_per_report"]
        cache = largest["cache_s_per_report"]
        minilm = shapes.get("minilm", {}).get(precision)
        hours = {}
        for name, by_precision in shapes.items():
            if name == "minilm" or minilm is None or precision not in by_precision:
                continue
            factor = minilm / by_precision[precision]  # seconds per report relative to MiniLM
            cell_s = MIMIC_REPORTS * (epochs * per_report * factor + cache * factor)
            hours[name] = cell_s * GRID_CELLS_PER_MODEL / 3600
        total = sum(hours.values())
        out[precision] = {"fit_s_per_report_minilm": per_report, "hours_per_model_grid": hours,
                          "hours_one_worker": total,
                          "hours_by_workers": {w: total / w for w in workers}}
    return out


def markdown(result: dict) -> str:
    lines = [f"# Scaling ({result['date']}, {result['machine']})", "", f"Command: `{result['command']}`", "",
             "| data | N train | mean tokens | precision | prefix cache (s) | one DP epoch (s) | ms / report |",
             "|---|---|---|---|---|---|---|"]
    for r in result["by_n"] + result["by_length"]:
        data = " ".join(o for o in r["overrides"] if o.startswith(("data=", "data.train_shard", "data.max_length")))
        lines.append(f"| {data or 'openi'} | {r['n_train']} | {r['mean_tokens']:.0f} | {r['precision']} | "
                     f"{r['cache_s']:.1f} | {r['fit_s']:.1f} | {1000 * r['fit_s_per_report']:.1f} |")
    lines += ["", "| encoder (shape, 128 tokens) | " + " | ".join(f"{p} reports/s" for p in PRECISIONS) + " |",
              "|---|" + "---|" * len(PRECISIONS)]
    for name, by in result["shapes"].items():
        lines.append(f"| {name} | " + " | ".join(f"{by.get(p, float('nan')):.1f}" for p in PRECISIONS) + " |")
    lines += ["", f"Projected: the paper's grid ({GRID_CELLS_PER_MODEL} cells per encoder, "
              f"{result['epochs']} epochs) on {MIMIC_REPORTS:,} reports, hours"]
    for precision, p in result["projection"].items():
        per = ", ".join(f"{k} {v:.0f}" for k, v in p["hours_per_model_grid"].items())
        workers = ", ".join(f"{w} workers {h:.0f}" for w, h in p["hours_by_workers"].items())
        lines.append(f"- {precision}: {per}; one worker {p['hours_one_worker']:.0f} h; {workers}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", nargs="*", type=int, default=[5, 2, 1],
                    help="N points: one shard of k of Open-i's training split (1: all of it)")
    ap.add_argument("--lengths", nargs="*", type=int, default=[128, 256, 512])
    ap.add_argument("--length-shard", default="0/2", help="the ct_rate_text shard timed at every length")
    ap.add_argument("--shape-steps", type=int, default=4)
    ap.add_argument("--shapes", nargs="*", default=[s for s in SHAPES if s != "minilm"],
                    help="the paper's encoder shapes to time")
    ap.add_argument("--epochs", type=int, default=8, help="epochs per cell in the projection")
    ap.add_argument("--workers", nargs="*", type=int, default=[2, 8])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.one:
        fn = one_epoch if args.one == "epoch" else shape_steps
        print(json.dumps(fn(args.set) if args.one == "epoch" else fn(args.set, args.steps)))
        return
    from tqdm import tqdm

    def alternated(points):
        return [(p, prec) for i, p in enumerate(points)
                for prec in (PRECISIONS if i % 2 == 0 else PRECISIONS[::-1])]

    by_n, by_length, shapes = [], [], {}
    size_points = [[f"data.train_shard=0/{k}"] if k > 1 else [] for k in args.shards]
    length_points = [["data=ct_rate_text", f"data.max_length={n}", f"data.train_shard={args.length_shard}"]
                     for n in args.lengths]
    with tempfile.TemporaryDirectory() as tmp:
        shape_points = [("minilm", [])] + [(name, ["model=custom", f"model.name={name}",
                                                   f"model.source={random_encoder(name, Path(tmp))}"])
                                           for name in args.shapes]
        jobs = ([("n", p, prec) for p, prec in alternated(size_points)]
                + [("length", p, prec) for p, prec in alternated(length_points)]
                + [("shape", p, prec) for p, prec in alternated(shape_points)])
        for kind, point, prec in tqdm(jobs, desc="scaling points"):
            if kind == "shape":
                name, overrides = point
                r = _child("shape", [*args.set, *overrides, f"trainer.precision={prec}"], args.shape_steps)
                shapes.setdefault(name, {})[prec] = r["reports_per_s"]
            else:
                r = _child("epoch", [*args.set, *point, f"trainer.precision={prec}"], 0)
                (by_n if kind == "n" else by_length).append(r)
    result = {**header(), "by_n": by_n, "by_length": by_length, "shapes": shapes, "epochs": args.epochs,
              "projection": project(by_n, shapes, args.epochs, args.workers)}
    write_result(args.out, "scaling", result, markdown)


if __name__ == "__main__":
    main()
