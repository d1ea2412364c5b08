"""Fabricated reports for tests: short invented sentences, never real report text."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from radpriv.data.schemas import CT_RATE18
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


PHRASES = {0: "metal clip seen", 2: "heart is enlarged", 8: "basal atelectasis", 12: "fluid in the pleural space"}


def write_fabricated_ct_csv(path: Path, n: int = 60, seed: int = 0) -> list[str]:
    """A CT-RATE-shaped CSV of invented sentences; returns the texts (to search the store for)."""
    rng = np.random.default_rng(seed)
    texts = []
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["AccessionNo", "report_text", *CT_RATE18])
        for i in range(n):
            labels = [0] * len(CT_RATE18)
            parts = list(rng.choice(FILLER, size=2, replace=False))
            for j, phrase in PHRASES.items():
                if rng.random() < 0.4:
                    labels[j] = 1
                    parts.append(phrase)
            parts.append(f"fabricated marker sentence number {i} for leak checks")
            text = ". ".join(parts) + "."
            texts.append(text)
            w.writerow([f"train_{i}_a_1", text, *labels])
    return texts


def write_unlabelled_csv(path: Path, texts, n: int) -> Path:
    """An `id,report_text` CSV of the first n texts and one empty report (what a teacher labels)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "report_text"])
        w.writerows([[f"u{i}", t] for i, t in enumerate(texts[:n])] + [["empty", ""]])
    return path
