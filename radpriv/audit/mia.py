"""Per-report losses and the loss-threshold membership-inference AUC (Yeom et al., 2018)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def per_report_loss(probs: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """Mean BCE over each report's known labels (the training loss, from probabilities)."""
    labels = torch.as_tensor(labels, dtype=torch.float32)
    known = (labels >= 0).float()
    p = probs.float().clamp(1e-7, 1 - 1e-7)
    loss = F.binary_cross_entropy(p, labels.clamp(min=0), reduction="none") * known
    return (loss.sum(1) / known.sum(1).clamp(min=1.0)).numpy()


def loss_threshold_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """AUC of "lower loss ⇒ member": 0.5 is no leakage; every threshold at once."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(member_losses)), np.zeros(len(nonmember_losses))]
    return float(roc_auc_score(y, -np.r_[member_losses, nonmember_losses]))
