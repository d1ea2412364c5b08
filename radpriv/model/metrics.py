"""Multi-label metrics and per-label decision thresholds.

Thresholds are chosen on the validation split only (one per label, the F1-maximising cut on
a fixed grid) and then applied unchanged to the test split: choosing them on test would
overstate test F1. Entries labelled -1 (unknown, e.g. MIMIC-CXR uncertain under `ignore`)
are left out of every metric through torchmetrics' `ignore_index`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import multilabel_auroc, multilabel_f1_score

MASKED = -1
THRESHOLD_GRID = np.round(np.arange(0.02, 0.99, 0.02), 2)
DEFAULT_THRESHOLD = 0.5


def fit_thresholds(probs: np.ndarray, labels: np.ndarray,
                   grid: Sequence[float] = THRESHOLD_GRID) -> np.ndarray:
    """Per label, the grid threshold with the best F1 on these (validation) rows.

    A label with no positive among the known entries keeps 0.5: there is nothing to tune on.
    Ties go to the threshold closest to 0.5, so flat regions do not drift to the extremes.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    out = np.full(labels.shape[1], DEFAULT_THRESHOLD)
    grid = np.asarray(grid, dtype=np.float64)
    order = np.argsort(np.abs(grid - DEFAULT_THRESHOLD), kind="stable")
    for j in range(labels.shape[1]):
        known = labels[:, j] != MASKED
        y = labels[known, j] == 1
        if y.sum() == 0:
            continue
        p = probs[known, j][:, None] >= grid[None, :]
        tp = (p & y[:, None]).sum(0)
        fp = (p & ~y[:, None]).sum(0)
        fn = (~p & y[:, None]).sum(0)
        f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        best = order[np.argmax(f1[order])]
        out[j] = grid[best]
    return out


def binarize(probs: torch.Tensor, thresholds: torch.Tensor | np.ndarray | float) -> torch.Tensor:
    thr = torch.as_tensor(thresholds, dtype=probs.dtype, device=probs.device)
    return (probs >= thr).to(torch.long)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, thresholds,
                           label_names: Sequence[str]) -> dict[str, float]:
    """Weighted/micro/macro F1, per-label F1 and macro AUROC at the given thresholds."""
    n = len(label_names)
    target = labels.to(torch.long)
    preds = binarize(probs, thresholds)
    out: dict[str, float] = {}
    for avg in ("weighted", "micro", "macro"):
        out[f"f1_{avg}"] = float(multilabel_f1_score(preds, target, num_labels=n, average=avg,
                                                     ignore_index=MASKED, zero_division=0))
    per_label = multilabel_f1_score(preds, target, num_labels=n, average="none",
                                    ignore_index=MASKED, zero_division=0)
    for name, v in zip(label_names, per_label.tolist()):
        out[f"f1/{name}"] = float(v)
    out["auroc_macro"] = macro_auroc(probs, target)
    return out


def macro_auroc(probs: torch.Tensor, target: torch.Tensor) -> float:
    """Mean AUROC over the labels with both classes present (AUROC is undefined otherwise)."""
    n = target.shape[1]
    known = target != MASKED
    has_both = [bool(((target[:, j] == 1) & known[:, j]).any() and ((target[:, j] == 0) & known[:, j]).any())
                for j in range(n)]
    if not any(has_both):
        return float("nan")
    per = multilabel_auroc(probs.float(), target, num_labels=n, average="none", ignore_index=MASKED)
    vals = [float(v) for v, ok in zip(per.tolist(), has_both) if ok]
    return float(np.mean(vals))
