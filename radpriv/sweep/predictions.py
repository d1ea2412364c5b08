"""Test-set predictions of a finished cell, rebuilt from its logged model — in memory only.

Per-report predictions (and report ids) are never written to MLflow: with the labels they
would describe individual test reports. The sweep needs them only to resample the test set.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from radpriv.data.table import ReportTable
from radpriv.errors import ModelError


def logged_model_predictions(run_id: str, tracking_uri: str, test: ReportTable, batch_size: int = 64,
                             by_name: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, thresholds) of run `run_id`'s logged model on the test split's texts;
    the thresholds are those the run chose (on its validation split) and stored with the model.

    by_name: the model may have other labels (a public model of a related schema): its columns
    are matched to the test split's by name, and a test label it lacks is never predicted
    (threshold +inf), which is all a model that never saw that label can do."""
    from radpriv.model.bundle import load_bundle, load_meta, predict_proba
    from radpriv.tracking.model_ref import local_bundle

    with tempfile.TemporaryDirectory() as tmp:
        folder = local_bundle(run_id, tracking_uri, Path(tmp), f"run {run_id}").folder
        # in the precision the run's own test metrics were computed in (older runs: fp32), so the
        # sweep's statistics are those of the logged F1, whatever this machine's default
        model = load_bundle(folder, load_meta(folder).get("trained_precision", "32-true"))
    names, wanted = list(model.label_names), list(test.label_names)
    if names != wanted and not (by_name and set(names) & set(wanted)):
        raise ModelError(f"run {run_id}'s model predicts {model.label_names}, not {test.name}'s labels")
    probs = predict_proba(model, test.texts, batch_size=batch_size).numpy()
    thresholds = np.asarray(model.thresholds, dtype=np.float64)
    if names == wanted:
        return probs, thresholds
    out = np.zeros((len(probs), len(wanted)), dtype=probs.dtype)
    out_thr = np.full(len(wanted), np.inf)
    for j, name in enumerate(wanted):
        if name in names:
            out[:, j], out_thr[j] = probs[:, names.index(name)], thresholds[names.index(name)]
    return out, out_thr


def binarize(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """0/1 predictions at per-label thresholds, exactly as radpriv.model.metrics.binarize: ≥,
    with the thresholds cast to the probabilities' dtype first."""
    probs = np.asarray(probs)
    return (probs >= np.asarray(thresholds).astype(probs.dtype)[None, :]).astype(np.int8)
