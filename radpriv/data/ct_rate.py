"""CT-RATE (Hugging Face, gated) exactly as distributed -> `ReportTable`.

`data.path` is the CT-RATE folder that holds `dataset/` (or that `dataset/` folder itself):
- `dataset/radiology_text_reports/train_reports.csv`, `validation_reports.csv`:
  `VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN`;
- `dataset/multi_abnormality_labels/train_predicted_labels.csv`, `valid_predicted_labels.csv`:
  `VolumeName` + the 18 labels of `schemas.CT_RATE18` (0/1, machine-predicted), selected by
  name and ordered as `data.labels`.
The train pair is required; the validation pair is optional (both files or neither).

Reports and labels are joined on `VolumeName` (`<split>_<patient>_<scan>_<reconstruction>.nii.gz`).
Reconstructions of one scan share one report: they are deduplicated to one row per scan
(id `<split>_<patient>_<scan>`, the lowest reconstruction number is kept, the other rows are
counted as `duplicate_reconstruction`; reconstructions whose text or labels differ are counted
in a warning). The patient is `<split>_<patient>`.

Text: the columns `data.text_fields` (default Findings_EN, Impressions_EN), stripped and
joined by a space, whitespace collapsed; a scan whose text is empty is excluded (`empty_text`).

Split (by patient, seeded by `seed`):
- `data.official_validation: test` (default): CT-RATE's official validation files are the
  test split, because CT-RATE publishes no separate test set and a model must never choose
  its thresholds on the reports it is scored on; validation is `data.val_fraction` of the
  train files' patients.
- `data.official_validation: val`: the official validation files are the validation split
  and `data.test_fraction` of the train files' patients are drawn for test.
- No validation files: validation and test are drawn from the train files' patients
  (`val_fraction`, `test_fraction`); the table's `source` says so.

Bad input is a one-line DataError naming the file and the line/column. Label rows without a
report are counted: above `data.max_missing_reports_fraction` that is an error, else a warning;
reports without a label row are excluded (`no_label`).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radpriv.data._io import (
    binary_labels,
    check_max_fraction,
    check_missing_fraction,
    check_unique,
    data_dir,
    label_list,
    read_csv,
    reader_defaults,
    require_file,
    warn_never_positive,
    with_defaults,
)
from radpriv.data.schemas import CT_RATE18
from radpriv.data.splits import check_fraction, split_by_patient
from radpriv.data.table import ReportTable
from radpriv.errors import DataError

logger = logging.getLogger(__name__)

# conf/data/ct_rate.yaml: the value of a key the caller leaves out (tests/test_config.py)
DEFAULTS = reader_defaults("ct_rate")

ID_COLUMN = "VolumeName"
REPORTS_DIR = "radiology_text_reports"
LABELS_DIR = "multi_abnormality_labels"
# official part -> (reports file, labels file)
PARTS = {
    "train": ("train_reports.csv", "train_predicted_labels.csv"),
    "valid": ("validation_reports.csv", "valid_predicted_labels.csv"),
}
DEFAULT_TEXT_FIELDS = ("Findings_EN", "Impressions_EN")
OFFICIAL_VALIDATION = ("test", "val")

_VOLUME_RE = re.compile(r"^([A-Za-z]+)_([A-Za-z0-9]+)_([A-Za-z0-9]+)_(\d+)(?:\.nii(?:\.gz)?)?$")


@dataclass(frozen=True)
class Volume:
    patient: str  # <split>_<patient>
    scan: str  # <split>_<patient>_<scan>
    reconstruction: int


def parse_volume_name(name: str) -> Volume | None:
    """`train_12_a_2.nii.gz` -> Volume("train_12", "train_12_a", 2); None if not that shape."""
    m = _VOLUME_RE.match(name.strip())
    if m is None:
        return None
    split, patient, scan, recon = m.groups()
    return Volume(f"{split}_{patient}", f"{split}_{patient}_{scan}", int(recon))


def _dataset_folder(value: object) -> Path:
    hint = "set data.path to the CT-RATE folder holding dataset/ (radiology_text_reports/, multi_abnormality_labels/)"
    if value is None or str(value).strip() == "":
        dd = data_dir()
        if dd is None or not (dd / "ct_rate").is_dir():
            raise DataError(f"no CT-RATE folder given: {hint}, or put it at $RADPRIV_DATA_DIR/ct_rate")
        root = dd / "ct_rate"
    else:
        root = Path(str(value)).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: {'is a file' if root.exists() else 'folder not found'}; {hint}")
    for candidate in (root / "dataset", root):
        if (candidate / REPORTS_DIR).is_dir() or (candidate / LABELS_DIR).is_dir():
            return candidate
    raise DataError(f"{root}: no dataset/{REPORTS_DIR}/ or {REPORTS_DIR}/ folder in it; {hint}")


def _text_fields(value: object) -> list[str]:
    fields = list(DEFAULT_TEXT_FIELDS) if value is None else ([value] if isinstance(value, str) else list(value))
    fields = [str(f).strip() for f in fields]
    if not fields or not all(fields):
        raise DataError(f"data.text_fields={fields!r}: name at least one column, e.g. [Findings_EN, Impressions_EN]")
    return fields


@dataclass
class _Row:
    scan: str
    patient: str
    reconstruction: int
    text: str
    labels: np.ndarray
    part: str


def _read_part(folder: Path, part: str, text_fields: list[str], label_names: tuple[str, ...],
               max_missing: float, excluded: Counter) -> list[_Row]:
    """One official part (train or valid): reports joined with labels, one row per volume."""
    rep_name, lab_name = PARTS[part]
    rep_path = require_file(folder / REPORTS_DIR / rep_name, "CT-RATE report CSV",
                            f"put {rep_name} in {folder / REPORTS_DIR}")
    lab_path = require_file(folder / LABELS_DIR / lab_name, "CT-RATE label CSV",
                            f"put {lab_name} in {folder / LABELS_DIR}")
    reports = read_csv(rep_path, [ID_COLUMN, *text_fields], what="CT-RATE report CSV")
    labels = read_csv(lab_path, [ID_COLUMN, *label_names], what="CT-RATE label CSV")

    def volumes(table) -> list[str]:
        out = []
        for row, line in zip(table.rows, table.lines):
            name = row[ID_COLUMN].strip()
            if parse_volume_name(name) is None:
                raise DataError(f"{table.path}: line {line}, column {ID_COLUMN!r}: {name[:60]!r} is not "
                                "<split>_<patient>_<scan>_<reconstruction>.nii.gz")
            out.append(name)
        check_unique(out, [f"line {n}" for n in table.lines], table.path, ID_COLUMN)
        return out

    rep_ids, lab_ids = volumes(reports), volumes(labels)
    if not reports.rows:
        raise DataError(f"{rep_path}: no report rows below the header; give the full {rep_name}")
    rep_row = {v: i for i, v in enumerate(rep_ids)}
    missing = [i for i, v in enumerate(lab_ids) if v not in rep_row]
    first = f"line {labels.lines[missing[0]]}, {ID_COLUMN} {lab_ids[missing[0]]!r}" if missing else ""
    check_missing_fraction(len(missing), len(lab_ids), max_missing, lab_path, first, "label rows", logger)
    lab_row = {v: i for i, v in enumerate(lab_ids)}
    matrix = binary_labels(labels, label_names)
    rows: list[_Row] = []
    for i, v in enumerate(rep_ids):
        if v not in lab_row:
            excluded["no_label"] += 1
            continue
        vol = parse_volume_name(v)
        assert vol is not None
        cells = reports.rows[i]
        text = " ".join(" ".join(cells[f].split()) for f in text_fields if cells[f].strip())
        rows.append(_Row(vol.scan, vol.patient, vol.reconstruction, text, matrix[lab_row[v]], part))
    return rows


def load_ct_rate(cfg: Mapping, seed: int) -> ReportTable:
    """CT-RATE as a ReportTable (see the module docstring and conf/data/ct_rate.yaml)."""
    cfg = with_defaults(DEFAULTS, cfg)
    text_fields = _text_fields(cfg["text_fields"])
    label_names = label_list(cfg["labels"], CT_RATE18)
    val_fraction = check_fraction("val_fraction", cfg["val_fraction"])
    test_fraction = check_fraction("test_fraction", cfg["test_fraction"])
    max_missing = check_max_fraction(cfg["max_missing_reports_fraction"])
    official_validation = str(cfg["official_validation"] or "test").strip().lower()
    if official_validation not in OFFICIAL_VALIDATION:
        raise DataError(f"data.official_validation={official_validation!r}: use test or val")

    folder = _dataset_folder(cfg["path"])
    valid_files = [folder / REPORTS_DIR / PARTS["valid"][0], folder / LABELS_DIR / PARTS["valid"][1]]
    have_valid = [p.is_file() for p in valid_files]
    if any(have_valid) and not all(have_valid):
        present, absent = (valid_files if have_valid[0] else valid_files[::-1])
        raise DataError(f"{absent}: not found, but {present.name} is there; give both validation files or neither")

    excluded: Counter[str] = Counter({"no_label": 0, "duplicate_reconstruction": 0, "empty_text": 0})
    rows = _read_part(folder, "train", text_fields, label_names, max_missing, excluded)
    if all(have_valid):
        rows += _read_part(folder, "valid", text_fields, label_names, max_missing, excluded)

    # one row per scan: the lowest reconstruction
    by_scan: dict[str, list[_Row]] = {}
    for r in rows:
        by_scan.setdefault(r.scan, []).append(r)
    kept: list[_Row] = []
    inconsistent = 0
    for scan in sorted(by_scan, key=_natural):
        group = sorted(by_scan[scan], key=lambda r: r.reconstruction)
        first = group[0]
        excluded["duplicate_reconstruction"] += len(group) - 1
        inconsistent += any(r.text != first.text or not np.array_equal(r.labels, first.labels) for r in group[1:])
        if not first.text:
            excluded["empty_text"] += 1
            continue
        kept.append(first)
    if inconsistent:
        logger.warning("ct_rate: %d scan(s) have reconstructions with different text or labels; the lowest "
                       "reconstruction's row is used", inconsistent)
    if not kept:
        raise DataError(f"{folder}: no usable reports left after exclusions {dict(excluded)}; check data.text_fields")

    ids = tuple(r.scan for r in kept)
    patients = tuple(r.patient for r in kept)
    train_idx = [k for k, r in enumerate(kept) if r.part == "train"]
    split = ["test"] * len(kept)
    train_patients = [patients[k] for k in train_idx]
    if not all(have_valid):
        sub = split_by_patient(train_patients, seed, val_fraction=val_fraction, test_fraction=test_fraction)
        how = f"no validation files: val {val_fraction:g} and test {test_fraction:g} of patients, seeded"
    elif official_validation == "test":
        sub = split_by_patient(train_patients, seed, val_fraction=val_fraction, test_fraction=0.0)
        how = f"test = official validation files; val {val_fraction:g} of train patients, seeded"
    else:
        split = ["val"] * len(kept)
        sub = split_by_patient(train_patients, seed, val_fraction=0.0, test_fraction=test_fraction)
        how = f"val = official validation files; test {test_fraction:g} of train patients, seeded"
    for k, s in zip(train_idx, sub):
        split[k] = s
    if not train_idx:
        raise DataError(f"{folder}: no usable report in the train files; nothing to train on")

    table = ReportTable(
        name="ct_rate",
        ids=ids,
        texts=tuple(r.text for r in kept),
        labels=np.stack([r.labels for r in kept]).astype(np.float32),
        label_names=label_names,
        split=tuple(split),
        patient_ids=patients,
        patient_source="the patient of the CT-RATE volume name (<split>_<patient>_<scan>_<reconstruction>)",
        excluded=dict(excluded),
        source=f"ct_rate {folder}; text {'+'.join(text_fields)}; {how}",
    )
    logger.info("ct_rate: %d volumes -> %d scans kept (%d patients); excluded %s; split %s", len(rows),
                len(table), len(set(patients)), dict(excluded),
                {s: table.split.count(s) for s in ("train", "val", "test")})
    warn_never_positive("ct_rate", table.labels, label_names, table.split, logger)
    return table


def _natural(scan: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in scan.split("_"))
