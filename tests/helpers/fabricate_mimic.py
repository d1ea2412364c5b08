"""Fabricated reports for `data=mimic_cxr`: invented studies written in the MIMIC-CXR layout
(files/ tree or mimic-cxr-reports.zip, label CSV, split CSV), and an in-place CSV editor.

Every report here is fabricated in this file (invented sentences); no real report text.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from pathlib import Path

import numpy as np

from radpriv.data.schemas import CHEXPERT14

LABEL_ORDER = sorted(CHEXPERT14)  # the label CSV's (alphabetical) column order
PHRASES = {
    "Cardiomegaly": "the fabricated heart outline is drawn wide",
    "Pleural Effusion": "invented fluid pools at the left base",
    "Support Devices": "a pretend tube ends above the carina",
    "Lung Opacity": "a made up hazy patch sits in the right lower zone",
}
UNCERTAIN_PHRASE = "perhaps some invented vascular blur"  # labelled Edema -1.0
SPLIT_OF = {**{i: "train" for i in range(10)}, 10: "validate", 11: "validate", 12: "test", 13: "test"}


def fabricate_studies(n_subjects: int = 14, per_subject: int = 2, seed: int = 0) -> list[dict]:
    """Invented MIMIC-CXR-like studies: raw report, expected model text, label cells, split."""
    rng = np.random.default_rng(seed)
    studies = []
    for s in range(n_subjects):
        subject = (10000001 if s % 3 else 11000001) + s  # folders p10 and p11
        for t in range(per_subject):
            k = len(studies)
            study = 50000000 + 100 * s + t
            pos = [lab for lab in PHRASES if rng.random() < 0.45]
            uncertain = k % 3 == 1
            cells = {lab: "" for lab in LABEL_ORDER}
            for lab in pos:
                cells[lab] = "1.0"
            if uncertain:
                cells["Edema"] = "-1.0"
            if not pos and not uncertain:
                cells["No Finding"] = "1.0"
            if k % 2 == 0:
                cells["Pneumothorax"] = "0.0"
            findings = ". ".join([PHRASES[lab] for lab in pos] + ([UNCERTAIN_PHRASE] if uncertain else [])
                                 + [f"fabricated marker sentence number {k}"]) + "."
            impression = (f"invented summary {k} of {len(pos)} made up things." if pos
                          else f"no invented acute process {k}.")
            if k % 7 == 3:  # no headers at all: the fallback takes the last paragraph
                raw = f"  {findings}\n \n  {impression}\n"
                expected = impression
            else:
                raw = (f"                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n"
                       f" INDICATION:  ___ with a fabricated reason {k}: check at 8:14\n \n"
                       f" COMPARISON:  None.\n \n FINDINGS:\n \n {findings}\n \n IMPRESSION:\n \n {impression}\n")
                expected = f"{findings} {impression}"
            studies.append({"subject": str(subject), "study": str(study), "raw": raw, "expected": expected,
                            "cells": cells, "split": SPLIT_OF[s]})
    return studies


def _csv_bytes(header: list[str], rows: list[list]) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def report_member(st: dict) -> str:
    return f"files/p{st['subject'][:2]}/p{st['subject']}/s{st['study']}.txt"


def write_mimic(root: Path, studies: list[dict] | None = None, *, reports: str = "tree", gz: bool = False,
                split: bool = True, labeler: str = "chexpert") -> list[dict]:
    """A MIMIC-CXR folder as distributed: files/ tree or mimic-cxr-reports.zip, label CSV, split CSV."""
    studies = fabricate_studies() if studies is None else studies
    root.mkdir(parents=True, exist_ok=True)
    if reports == "zip":
        with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as zf:
            for st in studies:
                zf.writestr(report_member(st), st["raw"])
    else:
        for st in studies:
            _write(root / report_member(st), st["raw"].encode("utf-8"))
            (root / report_member(st)).with_suffix("").mkdir()  # the DICOM study folder beside it
    ext = ".csv.gz" if gz else ".csv"
    _write(root / f"mimic-cxr-2.0.0-{labeler}{ext}", _csv_bytes(
        ["subject_id", "study_id", *LABEL_ORDER],
        [[st["subject"], st["study"], *(st["cells"][lab] for lab in LABEL_ORDER)] for st in studies]))
    if split:
        rows = []
        for k, st in enumerate(studies):
            for image in range(1 + k % 2):  # one row per image
                rows.append([f"{k:08x}-{image:04x}", st["study"], st["subject"], st["split"]])
        _write(root / f"mimic-cxr-2.0.0-split{ext}", _csv_bytes(["dicom_id", "study_id", "subject_id", "split"], rows))
    return studies


def rewrite_csv(path: Path, edit) -> None:
    """Apply `edit(rows)` (rows incl. header, lists of cells) to a CSV in place."""
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
    edit(rows)
    path.write_bytes(_csv_bytes(rows[0], rows[1:]))
