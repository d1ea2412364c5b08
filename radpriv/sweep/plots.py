"""The sweep's two pictures (matplotlib, Agg: no display needed).

- `privacy_utility_curve`: weighted F1 against ε on a log axis, one line per model with its
  bootstrap CI band; non-private LoRA / full fine-tuning of each model and TF-IDF + LR as
  horizontal lines; DP-LR, which depends on ε, as a dashed curve of its own. With
  sweep.init_from=public, DP-LoRA from the public model is a second curve per model, and the
  public model alone a dotted line (it costs the private data no ε).
- `per_label_heatmap`: per-label test F1 (mean over seeds), labels × ε, one panel per model,
  with the non-private LoRA and full columns beside the ε ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

NEURAL = ("dp_lora", "dp_lora_public", "public", "lora", "full")  # rows of one model (not the baselines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def privacy_utility_curve(rows: Sequence[dict], path: Path, title: str = "",
                          metric: str = "f1_weighted") -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    models = sorted({r["model"] for r in rows if r["method"] in NEURAL})
    eps_all = sorted({float(r["epsilon"]) for r in rows if r.get("epsilon")})  # not the public model's 0: log axis
    if not eps_all:
        eps_all = [1.0]
    x_span = (min(eps_all) / 1.6, max(eps_all) * 1.6)
    for i, model in enumerate(models):
        color = colors[i % len(colors)]
        for method, style, what in (("dp_lora", "o-", ""), ("dp_lora_public", "^--", ", public start")):
            dp = sorted((r for r in rows if r["method"] == method and r["model"] == model),
                        key=lambda r: float(r["epsilon"]))
            if dp:
                x = [float(r["epsilon"]) for r in dp]
                ax.plot(x, [r[f"{metric}_mean"] for r in dp], style, color=color, label=f"DP-LoRA {model}{what}")
                ax.fill_between(x, [r[f"{metric}_ci_low"] for r in dp], [r[f"{metric}_ci_high"] for r in dp],
                                color=color, alpha=0.18, linewidth=0)
        lines = (("lora", "--", "LoRA {}, non-private"), ("full", ":", "full FT {}, non-private"),
                 ("public", (0, (1, 3)), "public model {} alone"))
        for method, style, label in lines:
            for r in rows:
                if r["method"] == method and r["model"] == model:
                    ax.axhline(r[f"{metric}_mean"], color=color, linestyle=style, linewidth=1.3,
                               label=label.format(model))
    for r in rows:
        if r["method"] == "tfidf_lr":
            ax.axhline(r[f"{metric}_mean"], color="0.35", linestyle="-.", linewidth=1.3,
                       label="TF-IDF + LR, non-private")
    dplr = sorted((r for r in rows if r["method"] == "dp_lr"), key=lambda r: float(r["epsilon"]))
    if dplr:
        x = [float(r["epsilon"]) for r in dplr]
        ax.plot(x, [r[f"{metric}_mean"] for r in dplr], "s--", color="0.5", label="DP-LR (hashed n-grams)")
        ax.fill_between(x, [r[f"{metric}_ci_low"] for r in dplr], [r[f"{metric}_ci_high"] for r in dplr],
                        color="0.5", alpha=0.12, linewidth=0)
    ax.set_xscale("log")
    ax.set_xlim(*x_span)
    ax.set_xticks(eps_all)
    ax.set_xticklabels([f"{e:g}" for e in eps_all])
    ax.set_ylim(0, 1)
    ax.set_xlabel("privacy budget ε (log scale)")
    ax.set_ylabel(f"test {metric.replace('_', ' ')}")
    ax.set_title(title or "privacy–utility trade-off (bands: 95% bootstrap CI)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def per_label_heatmap(per_label: dict[tuple[str, str, float | None], np.ndarray], label_names: Sequence[str],
                      path: Path, title: str = "") -> Path:
    """`per_label`: (method, model, ε) → (L,) per-label F1, for the neural cells."""
    plt = _pyplot()
    models = sorted({model for (method, model, _) in per_label if method in NEURAL})
    fig, axes = plt.subplots(1, max(1, len(models)), squeeze=False,
                             figsize=(1.2 + 0.75 * 7 * max(1, len(models)), 0.32 * len(label_names) + 1.8))
    image = None
    for ax, model in zip(axes[0], models):
        cols = []
        for method, what in (("dp_lora", ""), ("dp_lora_public", " public start")):
            eps = sorted(e for (m, mod, e) in per_label if m == method and mod == model)
            cols += [(method, e, f"ε={e:g}{what}") for e in eps]
        cols += [(m, e, name) for m, e, name in (("public", 0.0, "public alone"), ("lora", None, "LoRA"),
                                                 ("full", None, "full")) if (m, model, e) in per_label]
        grid = np.array([per_label[(m, model, e)] for m, e, _ in cols]).T if cols else np.zeros((len(label_names), 0))
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([c[2] for c in cols], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(label_names)))
        ax.set_yticklabels(label_names if ax is axes[0][0] else [], fontsize=8)
        ax.set_title(model, fontsize=9)
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if v < 0.5 else "black")
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), fraction=0.03, label="test F1 (mean over seeds)")
    fig.suptitle(title or "per-label test F1", fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
