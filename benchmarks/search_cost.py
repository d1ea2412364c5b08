"""What one search spends under each `tune.accounting` mode, computed without training.

    python benchmarks/search_cost.py [--n 2609] [--batch 256] [--epochs 8] [--trials 5] [--eps 1 10]

For a search of `--trials` trials plus one retrain, each run with q = batch/N and
epochs·⌈N/batch⌉ steps at δ = 1/N^1.1: the `compose` total of runs calibrated to each ε, and
the per-run σ (and the ε it spends alone) that a `random_search` of mean `--trials` (Poisson K)
plus a retrain needs for a *total* of ε. `public` costs the retrain alone: ε. The numbers come
from radpriv.tune.privacy_cost, the code `radpriv tune` itself logs with.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from radpriv.privacy import accounting  # noqa: E402
from radpriv.tune import privacy_cost  # noqa: E402
from radpriv.tune.privacy_cost import Mechanism  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2609, help="private training reports (Open-i: 2,609)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--eps", type=float, nargs="+", default=[1.0, 10.0])
    args = ap.parse_args()
    q, steps = privacy_cost.trial_rate_and_steps(args.n, args.batch, args.epochs)
    delta = accounting.default_delta(args.n)
    print(f"N={args.n} q={q:.4f} steps={steps} δ={delta:.3g}; {args.trials} trials + 1 retrain")
    for eps in args.eps:
        sigma = float(accounting.calibrate_noise_multiplier(eps, delta, q, steps, accountant="prv").noise_multiplier)
        composed = privacy_cost.composed_epsilon([Mechanism(sigma, q, steps)] * (args.trials + 1), delta)
        rs_sigma = privacy_cost.calibrate_search_noise(eps, delta, q, steps, float(args.trials), float("inf"), 1)
        rs_alone = accounting.epsilon_spent("prv", (rs_sigma, q, steps), delta)
        print(f"ε={eps:g}: one run σ={sigma:.4f} | compose ε_total={composed['pld']:.3f} (RDP {composed['rdp']:.3f}) | "
              f"random_search for total {eps:g}: σ={rs_sigma:.4f} per run (ε {rs_alone:.3f} alone) | public: {eps:g}")


if __name__ == "__main__":
    main()
