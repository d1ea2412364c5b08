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


def logged_model_predictions(run_id: str, tracking_uri: str, test: ReportTable,
                             batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, thresholds) of run `run_id`'s logged model on the test split's texts;
    the thresholds are those the run chose (on its validation split) and stored with the model."""
    from radpriv.evaluate import download_bundle
    from radpriv.model.bundle import load_bundle, predict_proba

    with tempfile.TemporaryDirectory() as tmp:
        model = load_bundle(download_bundle(run_id, tracking_uri, Path(tmp)))
    if list(model.label_names) != list(test.label_names):
        raise ModelError(f"run {run_id}'s model predicts {model.label_names}, not {test.name}'s labels")
    probs = predict_proba(model, test.texts, batch_size=batch_size).numpy()
    return probs, np.asarray(model.thresholds, dtype=np.float64)


def binarize(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """0/1 predictions at per-label thresholds, exactly as radpriv.model.metrics.binarize: ≥,
    with the thresholds cast to the probabilities' dtype first."""
    probs = np.asarray(probs)
    return (probs >= np.asarray(thresholds).astype(probs.dtype)[None, :]).astype(np.int8)
