"""Per-report losses of a logged model and the loss-threshold membership-inference AUC.

The attack of Yeom et al. (2018): "a lower loss means the report was trained on". Its AUC over
every threshold at once is 0.5 when the model behaves the same on training and unseen reports.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def per_report_loss(probs: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """Mean BCE over each report's known labels (−1 = unknown is skipped), as in training."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
    known = (labels >= 0).float()
    p = probs.float().clamp(1e-7, 1 - 1e-7)
    loss = F.binary_cross_entropy(p, labels.clamp(min=0), reduction="none") * known
    return (loss.sum(1) / known.sum(1).clamp(min=1.0)).numpy()


def model_losses(model, texts, labels, batch_size: int, desc: str, chunk: int = 256) -> np.ndarray:
    """Per-report losses of a loaded bundle (radpriv.model.bundle), in chunks under a progress bar.

    The bar shows counts only (`desc` names the group, never a text).
    """
    from radpriv.model.bundle import predict_proba

    texts, labels = list(texts), np.asarray(labels)
    out = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), chunk), desc=desc, unit="chunk", leave=False, disable=None):
            probs = predict_proba(model, texts[start:start + chunk], batch_size)
            out.append(per_report_loss(probs, labels[start:start + chunk]))
    return np.concatenate(out) if out else np.zeros(0)


def loss_threshold_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """AUC of "lower loss ⇒ member" (sklearn's roc_auc_score on −loss): 0.5 is no leakage."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(member_losses)), np.zeros(len(nonmember_losses))]
    return float(roc_auc_score(y, -np.r_[member_losses, nonmember_losses]))
