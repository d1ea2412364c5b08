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


def _fabricated_ct_report(rng: np.random.Generator, marker: str) -> tuple[str, list[int]]:
    """Two filler sentences, each CT-RATE finding phrase with probability 0.4, then `marker`."""
    labels = [0] * len(CT_RATE18)
    parts = list(rng.choice(FILLER, size=2, replace=False))
    for j, phrase in PHRASES.items():
        if rng.random() < 0.4:
            labels[j] = 1
            parts.append(phrase)
    parts.append(marker)
    return ". ".join(parts) + ".", labels


def write_fabricated_ct_csv(path: Path, n: int = 60, seed: int = 0) -> list[str]:
    """A CT-RATE-shaped CSV of invented sentences; returns the texts (to search the store for)."""
    rng = np.random.default_rng(seed)
    texts = []
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["AccessionNo", "report_text", *CT_RATE18])
        for i in range(n):
            text, labels = _fabricated_ct_report(rng, f"fabricated marker sentence number {i} for leak checks")
            texts.append(text)
            w.writerow([f"train_{i}_a_1", text, *labels])
    return texts


def write_ct_patient_csv(path: Path, n_patients: int = 30, seed: int = 0, max_reports: int = 4) -> list[str]:
    """A `data=csv` file of invented CT-RATE-labelled reports (columns id, patient, text and the
    18 labels) where each patient holds 1–`max_reports` reports; returns the texts."""
    rng = np.random.default_rng(seed)
    texts = []
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "patient", "text", *CT_RATE18])
        for k in range(n_patients):
            for j in range(int(rng.integers(1, max_reports + 1))):
                text, labels = _fabricated_ct_report(rng, f"fabricated visit {j} of person {k} for leak checks")
                texts.append(text)
                w.writerow([f"P{k:03d}-r{j}", f"P{k:03d}", text, *labels])
    return texts


CT_PATIENT_CSV = ["data=csv", "data.text_column=text", f"data.label_columns=[{','.join(CT_RATE18)}]",
                  "data.id_column=id", "data.patient_column=patient"]


def write_unlabelled_csv(path: Path, texts, n: int) -> Path:
    """An `id,report_text` CSV of the first n texts and one empty report (what a teacher labels)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "report_text"])
        w.writerows([[f"u{i}", t] for i, t in enumerate(texts[:n])] + [["empty", ""]])
    return path


PATIENT_LABELS = ("clip", "enlarged", "fluid")


def write_patient_csv(path: Path, n_patients: int = 40, seed: int = 0, max_reports: int = 6) -> dict[str, list[str]]:
    """A `data=csv` file of invented reports where patient `P<k>` holds 1–`max_reports` reports
    (columns id, patient, text and three labels); returns each patient's report ids."""
    rng = np.random.default_rng(seed)
    reports: dict[str, list[str]] = {}
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "patient", "text", *PATIENT_LABELS])
        for k in range(n_patients):
            patient = f"P{k:03d}"
            for j in range(int(rng.integers(1, max_reports + 1))):
                labels = (rng.random(len(PATIENT_LABELS)) < 0.4).astype(int)
                parts = list(rng.choice(FILLER, size=2, replace=False))
                parts += [f"{PHRASES[[0, 2, 12][i]]}" for i in range(len(labels)) if labels[i]]
                parts.append(f"invented visit {j} of person {k}")
                rid = f"{patient}-r{j}"
                reports.setdefault(patient, []).append(rid)
                w.writerow([rid, patient, ". ".join(parts) + ".", *labels])
    return reports


PATIENT_CSV = ["data=csv", "data.text_column=text", f"data.label_columns=[{','.join(PATIENT_LABELS)}]",
               "data.id_column=id", "data.patient_column=patient"]
