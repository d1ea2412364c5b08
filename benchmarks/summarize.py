"""Mean ± sd over seeds of run_configs.py results, as a markdown table.

    python benchmarks/summarize.py OUT.jsonl [MORE.jsonl ...]

Rows are grouped by their overrides with `seed=...` removed; each row reports how many seeds
it has, so a table never hides a single-seed number behind a mean.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict

METRICS = [("test/f1_weighted", "F1 weighted"), ("test/f1_micro", "micro"), ("test/f1_macro", "macro"),
           ("test/auroc_macro", "AUROC macro"), ("privacy/epsilon", "ε spent")]


def _key(overrides: str) -> str:
    return " ".join(t for t in overrides.split() if not re.match(r"^seed=", t))


def summarize(paths: list[str]) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for path in paths:
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if record.get("returncode") == 0:
                    groups[_key(record["overrides"])].append(record["metrics"])
    head = "| configuration | seeds | " + " | ".join(label for _, label in METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    for key, runs in groups.items():
        cells = []
        for metric, _ in METRICS:
            values = [r[metric] for r in runs if metric in r]
            if not values:
                cells.append("—")
            elif len(values) == 1:
                cells.append(f"{values[0]:.3f}")
            else:
                cells.append(f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}")
        lines.append(f"| `{key}` | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(summarize(sys.argv[1:]))
