"""What one search spends under each `tune.accounting` mode, computed without training.

    python benchmarks/search_cost.py [--n 2609] [--batch 256] [--epochs 8] [--trials 5] [--eps 1 10]

For a search of `--trials` trials plus one retrain, each run with q = batch/N and
epochs·⌈N/batch⌉ steps at δ = 1/N^1.1, all under replace-one adjacency:

- `compose`: runs calibrated to each ε; the privacy filter's default budget (the planned cost of
  the trials plus the retrain) and its order α; beside it, for reference only, the PLD of the
  same number of runs *fixed in advance* (not a guarantee for an adaptive search);
- `random_search`: the per-run σ (and the ε it spends alone) that a search of mean `--trials`
  (Poisson K) plus a retrain needs for a *total* of ε;
- `public`: the filter's default budget, one retrain.

The numbers come from radpriv.tune, the code `radpriv tune` itself uses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from radpriv.privacy import accounting, replace_one  # noqa: E402
from radpriv.tune import privacy_cost, privacy_filter  # noqa: E402
from radpriv.tune.privacy_cost import Mechanism  # noqa: E402

RELATION = accounting.GUARANTEE_RELATION


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
    print(f"N={args.n} q={q:.4f} steps={steps} δ={delta:.3g}; {args.trials} trials + 1 retrain; replace-one")
    for eps in args.eps:
        sigma = float(accounting.calibrate_noise_multiplier(eps, delta, q, steps, accountant="prv", relation=RELATION))
        run = Mechanism(sigma, q, steps)
        flt = privacy_filter.create(None, delta, run, args.trials, reserve_retrain=True)
        fixed = replace_one.epsilon(((sigma, q, steps * (args.trials + 1)),), delta)
        public = privacy_filter.create(None, delta, run, 0, reserve_retrain=False)
        rs_sigma = privacy_cost.calibrate_search_noise(eps, delta, q, steps, float(args.trials), float("inf"), 1)
        rs_alone = accounting.epsilon_spent("prv", (rs_sigma, q, steps), delta, relation=RELATION)
        print(f"ε={eps:g}: one run σ={sigma:.4f} | compose filter budget ε_total={flt.budget_epsilon:.3f} "
              f"(α={flt.order:g}; a fixed composition would be {fixed:.3f} by PLD) | random_search for total "
              f"{eps:g}: σ={rs_sigma:.4f} per run (ε {rs_alone:.3f} alone) | public: {public.budget_epsilon:.3f} "
              f"(α={public.order:g})")


if __name__ == "__main__":
    main()
