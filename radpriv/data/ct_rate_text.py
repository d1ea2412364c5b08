"""CT-RATE report text with its 18 radiologist labels -> `ReportTable`.

Reads the CSV CT-RATE's text classifier was trained on: `AccessionNo,report_text,` then the
18 labels of `schemas.CT_RATE18` (0/1; columns found by name, extra columns ignored).
The set has no official split here, so train/val/test are drawn by patient with a seed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

from radpriv.data._io import (
    binary_labels,
    check_unique,
    data_dir,
    read_csv,
    reader_defaults,
    require_file,
    with_defaults,
)
from radpriv.data.schemas import CT_RATE18
from radpriv.data.splits import check_fraction, split_by_patient
from radpriv.data.table import ReportTable
from radpriv.errors import DataError

logger = logging.getLogger(__name__)

# conf/data/ct_rate_text.yaml: the value of a key the caller leaves out (tests/test_config.py)
DEFAULTS = reader_defaults("ct_rate_text")

ID_COLUMN = "AccessionNo"
TEXT_COLUMN = "report_text"
DEFAULT_RELATIVE_PATH = Path("ct_rate_text") / "train.csv"

# CT-RATE names volumes `<split>_<patient>_<scan>_<reconstruction>`: the patient is the first two parts.
_PATIENT_RE = re.compile(r"^([A-Za-z]+_\d+)_.+$")


def ct_rate_patient_id(accession: str) -> str:
    """`train_12_a_1` -> `train_12`; an id without that shape (`train_1`) is its own patient."""
    m = _PATIENT_RE.match(accession.strip())
    return m.group(1) if m else accession.strip()


def _resolve_path(value: object) -> Path:
    hint = "set data.path=/path/to/train.csv"
    if value is None or str(value).strip() == "":
        dd = data_dir()
        if dd is None:
            raise DataError(
                f"no CT-RATE text CSV given: put it at $RADPRIV_DATA_DIR/{DEFAULT_RELATIVE_PATH.as_posix()} "
                f"(RADPRIV_DATA_DIR is not set) or {hint}"
            )
        return require_file(dd / DEFAULT_RELATIVE_PATH, "CT-RATE text CSV",
                            f"put train.csv (AccessionNo,report_text,<18 labels>) there or {hint}")
    return require_file(str(value), "CT-RATE text CSV", f"check the path or {hint}")


def load_ct_rate_text(cfg: Mapping, seed: int) -> ReportTable:
    """The CT-RATE text CSV as a ReportTable, split by patient (see conf/data/ct_rate_text.yaml)."""
    cfg = with_defaults(DEFAULTS, cfg)
    val_fraction = check_fraction("val_fraction", cfg["val_fraction"])
    test_fraction = check_fraction("test_fraction", cfg["test_fraction"])
    path = _resolve_path(cfg["path"])

    table = read_csv(path, [ID_COLUMN, TEXT_COLUMN, *CT_RATE18], what="CT-RATE text CSV")
    ids = [r[ID_COLUMN].strip() for r in table.rows]
    for i, line in zip(ids, table.lines):
        if not i:
            raise DataError(f"{path}: line {line}, column {ID_COLUMN!r}: empty id; every row needs its AccessionNo")
    check_unique(ids, [f"line {n}" for n in table.lines], path, ID_COLUMN)

    keep = [k for k, r in enumerate(table.rows) if r[TEXT_COLUMN].strip()]
    excluded = {"empty_text": len(table.rows) - len(keep)}
    if not keep:
        raise DataError(f"{path}: every {TEXT_COLUMN} is empty; nothing to train on")
    labels = binary_labels(table, CT_RATE18, keep)
    kept_ids = tuple(ids[k] for k in keep)
    patients = tuple(ct_rate_patient_id(i) for i in kept_ids)
    split = split_by_patient(patients, seed, val_fraction=val_fraction, test_fraction=test_fraction)

    out = ReportTable(
        name="ct_rate_text",
        ids=kept_ids,
        texts=tuple(table.rows[k][TEXT_COLUMN].strip() for k in keep),
        labels=labels,
        label_names=CT_RATE18,
        split=split,
        patient_ids=patients,
        excluded=excluded,
        source=f"ct_rate_text csv {path}; test seeded {test_fraction:g} by patient",
    )
    logger.info("ct_rate_text: read %d rows from %s, kept %d (%d patients); excluded %s; split %s",
                len(table.rows), path, len(out), len(set(patients)), excluded,
                {s: split.count(s) for s in ("train", "val", "test")})
    return out
