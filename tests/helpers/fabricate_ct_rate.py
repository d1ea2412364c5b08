"""Fabricated reports for `data=ct_rate`: invented volumes written in the native CT-RATE layout
(radiology_text_reports + multi_abnormality_labels CSVs), and an in-place CSV editor.

Every report here is fabricated in this file (invented sentences); no real report text.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from radpriv.data.schemas import CT_RATE18

REPORT_HEADER = ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]
PHRASES = {0: "a fabricated clip is seen", 2: "the invented heart is wide", 8: "made up basal collapse",
           12: "pretend fluid in the pleural space"}


def fabricate_volumes(seed: int = 0) -> list[dict]:
    """Invented CT-RATE volumes: 12 train patients and 4 validation patients, 1-2 scans each,
    1-2 reconstructions per scan (reconstructions share the report and the labels)."""
    rng = np.random.default_rng(seed)
    volumes = []
    for part, n_patients in (("train", 12), ("valid", 4)):
        for patient in range(1, n_patients + 1):
            for scan in "ab"[: 1 + patient % 2]:
                labels = [0] * len(CT_RATE18)
                parts = []
                for j, phrase in PHRASES.items():
                    if rng.random() < 0.4:
                        labels[j] = 1
                        parts.append(phrase)
                key = f"{part}_{patient}_{scan}"
                findings = ". ".join(parts + [f"fabricated marker sentence for {key}"]) + "."
                impression = f"invented impression for {key}." if parts else ""
                for recon in range(1, 1 + (1 if patient % 3 else 2)):
                    volumes.append({"name": f"{key}_{recon}.nii.gz", "part": part, "scan": key,
                                    "patient": f"{part}_{patient}", "clinical": f"made up history {key}.",
                                    "technique": "fabricated technique.", "findings": findings,
                                    "impression": impression, "labels": labels})
    return volumes


def _csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode("utf-8"))
    return path


def write_ct_rate(root: Path, volumes: list[dict] | None = None, *, valid: bool = True) -> list[dict]:
    """A CT-RATE folder as distributed: dataset/radiology_text_reports + multi_abnormality_labels."""
    volumes = fabricate_volumes() if volumes is None else volumes
    files = {"train": ("train_reports.csv", "train_predicted_labels.csv"),
             "valid": ("validation_reports.csv", "valid_predicted_labels.csv")}
    for part, (rep, lab) in files.items():
        if part == "valid" and not valid:
            continue
        rows = [v for v in volumes if v["part"] == part]
        _csv(root / "dataset" / "radiology_text_reports" / rep, REPORT_HEADER,
             [[v["name"], v["clinical"], v["technique"], v["findings"], v["impression"]] for v in rows])
        _csv(root / "dataset" / "multi_abnormality_labels" / lab, ["VolumeName", *CT_RATE18],
             [[v["name"], *v["labels"]] for v in rows])
    return volumes


def rewrite_csv(path: Path, edit) -> None:
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
    edit(rows)
    _csv(path, rows[0], rows[1:])
