"""Fabricated reports for tests: short invented sentences, never real report text."""

from __future__ import annotations

import numpy as np

from radpriv.data.table import ReportTable

FINDINGS = ("heart enlarged", "fluid at the base", "tube in place")
FILLER = ("lungs are clear", "no acute process", "bones are intact", "stable appearance",
          "mediastinum normal", "exam limited")


def synthetic_table(n: int = 48, seed: int = 0, name: str = "synthetic") -> ReportTable:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(FINDINGS))) < 0.35).astype(np.float32)
    texts, split = [], []
    for i in range(n):
        parts = [FINDINGS[j] for j in range(len(FINDINGS)) if labels[i, j]]
        parts += list(rng.choice(FILLER, size=int(rng.integers(1, 4)), replace=False))
        rng.shuffle(parts)
        texts.append(". ".join(parts) + ".")
        split.append("test" if i % 6 == 0 else "val" if i % 6 == 1 else "train")
    return ReportTable(
        name=name, ids=tuple(f"R{i}" for i in range(n)), texts=tuple(texts), labels=labels,
        label_names=tuple(f"label_{j}" for j in range(len(FINDINGS))), split=tuple(split),
        patient_ids=tuple(f"P{i}" for i in range(n)), source="synthetic",
    )
