"""Fabricated reports for `data=csv`: an invented CSV with named text and label columns, id,
patient and split columns, and the `data.*` settings that read all of them.

Every report here is fabricated in this file (invented sentences); no real report text.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np

LABELS = ["Nodule", "Effusion", "Device"]
HEADER = ["report_id", "mrn", "part", "history", "body", "conclusion", *LABELS, "unused"]
PHRASES = {"Nodule": "an invented small spot", "Effusion": "made up fluid at the base",
           "Device": "a pretend line in place"}


def fabricate_rows(n: int = 36, seed: int = 0) -> list[list[str]]:
    """Invented reports: 18 patients x 2 reports; label cells 1 / 0 / -1 / blank."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        patient = f"MRN{k // 2:03d}"
        part = "train" if k < 24 else ("Validate" if k < 30 else "TEST")
        cells, parts = [], []
        for lab in LABELS:
            r = rng.random()
            if r < 0.35:
                cells.append("1")
                parts.append(PHRASES[lab])
            elif r < 0.5:
                cells.append("-1")
                parts.append(f"maybe {PHRASES[lab]}")
            elif r < 0.75:
                cells.append("0")
            else:
                cells.append("")
        body = ". ".join(parts + [f"fabricated marker sentence {k}"]) + "."
        rows.append([f"R{k:03d}", patient, part, f"made up history {k}.", body,
                     f"invented conclusion {k}.", *cells, "x"])
    return rows


def write_csv(path: Path, rows: list[list[str]] | None = None, header: list[str] = HEADER) -> Path:
    rows = fabricate_rows() if rows is None else rows
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    data = buf.getvalue().encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


FULL = {"text_columns": ["body", "conclusion"], "label_columns": LABELS, "id_column": "report_id",
        "patient_column": "mrn", "split_column": "part"}
