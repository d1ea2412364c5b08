"""The sweep's results table: one row per (method, model, ε), as CSV and markdown.

Rows hold aggregates only (means, sds, CIs, test statistics, run ids): nothing per report.
`privacy.unit` is what a DP row's ε protects (patient or report, from its runs' privacy.json or
`radpriv.unit` tag; DP-LR protects reports); "—" for a non-private row.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

METHOD_LABELS = {
    "dp_lora": "DP-LoRA",
    "dp_lora_public": "DP-LoRA (public start)",
    "public": "public model alone (no private data)",
    "lora": "LoRA, non-private",
    "full": "full fine-tuning, non-private",
    "tfidf_lr": "TF-IDF + LR, non-private",
    "dp_lr": "DP-LR (hashed n-grams)",
}
METHOD_ORDER = ("lora", "full", "public", "dp_lora", "dp_lora_public", "tfidf_lr", "dp_lr")
NO_UNIT = "—"  # a non-private row protects nothing
COLUMNS = ("method", "model", "epsilon", "epsilon_spent", "privacy.unit", "n_seeds",
           "f1_weighted_mean", "f1_weighted_sd", "f1_weighted_ci_low", "f1_weighted_ci_high",
           "f1_micro_mean", "f1_micro_sd", "f1_micro_ci_low", "f1_micro_ci_high",
           "f1_macro_mean", "f1_macro_sd", "f1_macro_ci_low", "f1_macro_ci_high",
           "diff_vs_lora", "diff_ci_low", "diff_ci_high", "p_vs_lora", "p_holm", "run_ids")


def sort_rows(rows: list[dict]) -> list[dict]:
    """Per model: LoRA, full, the public model alone, then DP-LoRA by ε, cold then from the public
    model; the classical baselines last."""
    def key(r):
        eps = r.get("epsilon")
        return (r["method"] in ("tfidf_lr", "dp_lr"), str(r.get("model") or ""),
                METHOD_ORDER.index(r["method"]), math.inf if eps is None else float(eps))
    return sorted(rows, key=key)


def row_name(row: dict) -> str:
    """A short, MLflow-metric-safe name: lora/minilm, dp_lora/minilm/eps0.1, dp_lr/eps1."""
    parts = [row["method"]] + ([row["model"]] if row.get("model") else [])
    if row.get("epsilon") is not None:
        parts.append(f"eps{float(row['epsilon']):g}")
    return "/".join(parts)


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def write_csv(rows: list[dict], path: Path) -> Path:
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            out = {c: _csv_value(r.get(c)) for c in COLUMNS}
            out["epsilon"] = "inf" if r.get("epsilon") is None else _csv_value(float(r["epsilon"]))
            out["privacy.unit"] = r.get("privacy.unit") or NO_UNIT
            w.writerow(out)
    return Path(path)


def _fmt(v, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _metric_cell(r: dict, metric: str) -> str:
    sd = r.get(f"{metric}_sd")
    sd_text = "" if sd is None or math.isnan(sd) else f" ± {sd:.3f}"
    return (f"{_fmt(r[f'{metric}_mean'])}{sd_text} "
            f"[{_fmt(r[f'{metric}_ci_low'])}, {_fmt(r[f'{metric}_ci_high'])}]")


def _p(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.3f}" if v >= 0.001 else f"{v:.1e}"


def markdown(rows: list[dict], alpha: float = 0.05) -> str:
    level = f"{100 * (1 - alpha):g}%"
    lines = [
        f"| method | model | ε | ε spent | unit | seeds | F1 weighted, mean ± sd [{level} CI] | micro | macro "
        f"| Δ weighted vs LoRA [{level} CI] | p | p (Holm) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        eps = "∞" if r.get("epsilon") is None else f"{float(r['epsilon']):g}"
        diff = ("—" if r.get("diff_vs_lora") is None else
                f"{r['diff_vs_lora']:+.3f} [{r['diff_ci_low']:+.3f}, {r['diff_ci_high']:+.3f}]")
        lines.append(
            f"| {METHOD_LABELS[r['method']]} | {r.get('model') or '—'} | {eps} | "
            f"{_fmt(r.get('epsilon_spent'), 4)} | {r.get('privacy.unit') or NO_UNIT} | {r['n_seeds']} | "
            f"{_metric_cell(r, 'f1_weighted')} | "
            f"{_metric_cell(r, 'f1_micro')} | {_metric_cell(r, 'f1_macro')} | {diff} | "
            f"{_p(r.get('p_vs_lora'))} | {_p(r.get('p_holm'))} |")
    return "\n".join(lines) + "\n"


def write_markdown(rows: list[dict], path: Path, header: str = "", alpha: float = 0.05) -> Path:
    Path(path).write_text((header + "\n\n" if header else "") + markdown(rows, alpha), encoding="utf-8")
    return Path(path)
