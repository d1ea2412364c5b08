"""Plots logged with a run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def per_label_f1_bar(f1_by_label: dict[str, float], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(f1_by_label)
    values = [f1_by_label[n] for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    ax.barh(names[::-1], values[::-1], color="#3b6ea5")
    ax.set_xlim(0, 1)
    ax.set_xlabel("test F1")
    ax.set_title(title, fontsize=10)
    for y, v in enumerate(values[::-1]):
        ax.text(min(v + 0.01, 0.93), y, f"{v:.2f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
