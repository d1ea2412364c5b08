"""Any CSV of reports with label columns (`data=csv`) -> `ReportTable`.

For a hospital's own export: one row per report, `.csv` or `.csv.gz`, UTF-8.
- text: `data.text_column` (default `text`), or several columns `data.text_columns` joined by a
  space in the listed order (whitespace collapsed); a row whose text is empty is excluded
  (`empty_text`).
- labels: `data.label_columns` (required; their order is the model's output order). Cells
  1 / 0 / -1 / blank: blank (not mentioned) = 0, -1 (uncertain) by `data.uncertain`: `ignore`
  (masked out of the loss and the metrics), `zeros` or `ones`. A list or one comma-separated
  string of column names.
- `data.id_column` (optional; unique): else ids are `line<N>`, the row's line in the file.
- `data.patient_column` (optional): splits keep a patient's reports together; else each
  report is its own patient.
- `data.split_column` (optional): train / val / validate / test (any case). When it names no
  validation row, `data.val_fraction` of the train rows' patients are drawn for validation
  (seeded), since thresholds are chosen on validation. Without it, validation and test are
  drawn by patient with `data.val_fraction` / `data.test_fraction` and `seed`.
Errors are one-line DataErrors naming the file and the line/column.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from radpriv.data._io import (
    check_unique,
    data_dir,
    label_list,
    read_csv,
    reader_defaults,
    require_file,
    ternary_labels,
    uncertain_policy,
    warn_never_positive,
    with_defaults,
)
from radpriv.data.splits import check_fraction, split_by_patient
from radpriv.data.table import ReportTable
from radpriv.errors import DataError

logger = logging.getLogger(__name__)

# conf/data/csv.yaml: the value of a key the caller leaves out (tests/test_config.py)
DEFAULTS = reader_defaults("csv")

SPLIT_VALUES = {"train": "train", "val": "val", "validate": "val", "validation": "val", "test": "test"}


def _column(value: object) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    return str(value).strip()


def _label_columns(value: object) -> tuple[str, ...]:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError("data.label_columns is required for data=csv: name the label columns, e.g. "
                        "data.label_columns=[Cardiomegaly,Edema]")
    if isinstance(value, str):
        value = [v for v in value.split(",")]
    return label_list(value, (), key="data.label_columns")


def _text_columns(cfg: Mapping) -> list[str]:
    value = cfg["text_columns"]
    if value is None or (isinstance(value, str) and not value.strip()):
        value = [cfg["text_column"] or "text"]
    cols = [value] if isinstance(value, str) else list(value)
    cols = [str(c).strip() for c in cols]
    if not cols or not all(cols):
        raise DataError(f"data.text_columns={cols!r}: name at least one text column")
    return list(dict.fromkeys(cols))


def _path(value: object) -> Path:
    hint = "set data.path=/path/to/reports.csv (a CSV with a text column and label columns)"
    if value is None or str(value).strip() == "":
        dd = data_dir()
        shown = dd if dd is not None else "not set"
        raise DataError(f"no CSV given for data=csv: {hint} (RADPRIV_DATA_DIR is {shown}; "
                        "data=csv never guesses a file)")
    return require_file(str(value), "reports CSV", f"check the path or {hint}")


def _teacher_provenance(cfg: Mapping) -> tuple[dict, Path] | None:
    """The teacher provenance of a labelled CSV (data.provenance or <path>.provenance.json)."""
    from radpriv.teacher import provenance

    found = provenance.resolve({**cfg, "name": "csv"})
    return None if found is None else (provenance.load(found), found)


def load_generic_csv(cfg: Mapping, seed: int) -> ReportTable:
    """The CSV as a ReportTable (see the module docstring and conf/data/csv.yaml)."""
    cfg = with_defaults(DEFAULTS, cfg)
    teacher = _teacher_provenance(cfg)
    label_columns = _label_columns(cfg["label_columns"] or (teacher[0]["labels"] if teacher else None))
    text_columns = _text_columns(cfg)
    id_column = _column(cfg["id_column"])
    patient_column = _column(cfg["patient_column"])
    split_column = _column(cfg["split_column"])
    policy = uncertain_policy(cfg["uncertain"])
    val_fraction = check_fraction("val_fraction", cfg["val_fraction"])
    test_fraction = check_fraction("test_fraction", cfg["test_fraction"])
    path = _path(cfg["path"])
    overlap = set(label_columns) & set(text_columns)
    if overlap:
        raise DataError(f"data.label_columns and data.text_columns share {sorted(overlap)}; "
                        "a column is text or a label")

    if teacher:  # the teacher's label schema must be the student's (radpriv/teacher/provenance.py)
        from radpriv.teacher.provenance import check_against_data

        check_against_data(teacher[0], teacher[1], label_columns, path)
    extra = [c for c in (id_column, patient_column, split_column) if c]
    table = read_csv(path, [*text_columns, *label_columns, *extra], what="reports CSV")
    if not table.rows:
        raise DataError(f"{path}: no rows below the header; nothing to train on")

    def cell(i: int, column: str, what: str) -> str:
        value = table.rows[i][column].strip()
        if not value:
            raise DataError(f"{path}: line {table.lines[i]}, column {column!r}: empty {what}; every row needs one")
        return value

    n = len(table.rows)
    ids = [cell(i, id_column, "id") for i in range(n)] if id_column else [f"line{ln}" for ln in table.lines]
    if id_column:
        check_unique(ids, [f"line {ln}" for ln in table.lines], path, id_column)
    given_split: list[str] | None = None
    if split_column:
        given_split = []
        for i in range(n):
            value = cell(i, split_column, "split").lower()
            if value not in SPLIT_VALUES:
                raise DataError(f"{path}: line {table.lines[i]}, column {split_column!r}: split "
                                f"{table.rows[i][split_column][:20]!r} is not train, val, validate or test")
            given_split.append(SPLIT_VALUES[value])

    excluded: Counter[str] = Counter({"empty_text": 0})
    keep: list[int] = []
    texts: list[str] = []
    for i, row in enumerate(table.rows):
        text = " ".join(" ".join(row[c].split()) for c in text_columns if row[c].strip())
        if not text:
            excluded["empty_text"] += 1
            continue
        keep.append(i)
        texts.append(text)
    if not keep:
        raise DataError(f"{path}: every text cell of {text_columns} is empty; nothing to train on")
    labels = ternary_labels(table, label_columns, keep, policy)
    kept_ids = tuple(ids[i] for i in keep)
    patients = tuple(cell(i, patient_column, "patient id") for i in keep) if patient_column else kept_ids

    if given_split is not None:
        split = [given_split[i] for i in keep]
        how = f"split column {split_column!r}"
        if "val" not in split and val_fraction > 0:
            train_idx = [k for k, s in enumerate(split) if s == "train"]
            sub = split_by_patient([patients[k] for k in train_idx], seed, val_fraction=val_fraction)
            for k, s in zip(train_idx, sub):
                split[k] = s
            how += f" (no validation rows: val {val_fraction:g} of train patients, seeded)"
        mixed = _patients_in_several_splits(patients, split)
        if mixed:
            logger.warning("csv: %d patient(s) have reports in more than one split (column %r); their "
                           "reports are correlated across splits", mixed, split_column)
    else:
        split = list(split_by_patient(patients, seed, val_fraction=val_fraction, test_fraction=test_fraction))
        how = (f"split seeded by {'patient' if patient_column else 'report'} "
               f"(val {val_fraction:g}, test {test_fraction:g})")

    out = ReportTable(
        name="csv",
        ids=kept_ids,
        texts=tuple(texts),
        labels=labels,
        label_names=label_columns,
        split=tuple(split),
        patient_ids=patients,
        patient_source=f"column {patient_column!r} (data.patient_column)" if patient_column else None,
        excluded=dict(excluded),
        source=f"csv {path}; text {'+'.join(text_columns)}; uncertain={policy}; {how}",
    )
    logger.info("csv: read %d rows from %s, kept %d (%d patients); excluded %s; split %s", n, path,
                len(out), len(set(patients)), dict(excluded),
                {s: out.split.count(s) for s in ("train", "val", "test")})
    warn_never_positive("csv", labels, label_columns, out.split, logger)
    return out


def _patients_in_several_splits(patients, split) -> int:
    seen: dict[str, set[str]] = {}
    for p, s in zip(patients, split):
        seen.setdefault(p, set()).add(s)
    return sum(1 for v in seen.values() if len(v) > 1)
