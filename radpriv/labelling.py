"""Reading reports, scoring them with a loaded bundle, and writing labels: the library that
`radpriv predict` (radpriv/predict.py), `radpriv label` and `radpriv pate` (radpriv/teacher/)
share, so that the three read the same inputs the same way, score them in the same
length-sorted batches, and fail with the same one-line errors.

No MLflow here: the commands resolve their model references (radpriv/tracking/model_ref.py)
and hand a loaded bundle (radpriv/model/bundle.py) to `predict_reports`.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from radpriv.errors import DataError, ModelError

log = logging.getLogger(__name__)

# columns tried, in order, when text_column= / id_column= are not given
TEXT_COLUMNS = ("text", "report_text", "report")
ID_COLUMNS = ("id", "uid", "AccessionNo", "report_id", "study_id", "filename", "VolumeName")
PROB_PREFIX = "prob_"
ID, TEXT = "id", "text"  # the labelled CSV's first two columns (radpriv label, radpriv pate)


# --------------------------------------------------------------------------- arguments

def precision_option(value: str | None) -> str | None:
    """auto | 32-true | bf16-mixed, checked now (None: $RADPRIV_PRECISION, else auto)."""
    from radpriv.model.precision import resolve_precision

    return None if value is None else resolve_precision(value, "cpu", "precision")


def requested_labels(value: str) -> list[str]:
    """`labels=` as a schema name (chexpert14, negbio14, ct_rate18) or a comma list of labels."""
    from radpriv.data.schemas import CHEXPERT14, CT_RATE18, NEGBIO14

    schemas = {"chexpert14": CHEXPERT14, "negbio14": NEGBIO14, "ct_rate18": CT_RATE18}
    if value.lower() in schemas:
        return list(schemas[value.lower()])
    return [x.strip() for x in value.split(",") if x.strip()]


# --------------------------------------------------------------------------- input

@dataclass
class Reports:
    ids: list[str]
    texts: list[str]
    source: str  # "csv" | "txt"


def read_reports(path: Path, text_columns: list[str] | None, id_column: str | None) -> Reports:
    """Reports from a CSV (one row each) or a folder of .txt files (one report each, id = stem)."""
    if not path.exists():
        raise DataError(f"{path}: input not found; give input=<a CSV file or a folder of .txt reports>")
    if path.is_dir():
        return _read_txt_dir(path)
    return _read_csv(path, text_columns, id_column)


def _read_csv(path: Path, text_columns: list[str] | None, id_column: str | None) -> Reports:
    from radpriv.data._io import read_csv

    if path.stat().st_size == 0:
        raise DataError(f"{path}: the input file is empty; expected a header line and one row per report")
    table = read_csv(path, [], what="input CSV")
    if not table.rows:
        raise DataError(f"{path}: no report rows below the header")
    columns = list(table.columns)
    if text_columns is None:
        found = next((c for c in TEXT_COLUMNS if c in columns), None)
        if found is None:
            raise DataError(f"{path}: line 1: no text column ({', '.join(TEXT_COLUMNS)}) in {columns}; "
                            "name it with text_column=<column> (or a,b to join several)")
        text_columns = [found]
    missing = [c for c in text_columns if c not in columns]
    if missing:
        raise DataError(f"{path}: line 1: text column(s) {missing} not found in {columns}; "
                        "set text_column=<column> (or a,b to join several)")
    if id_column is not None and id_column not in columns:
        raise DataError(f"{path}: line 1: id column {id_column!r} not found in {columns}; "
                        "set id_column=<column>")
    id_column = id_column or next((c for c in ID_COLUMNS if c in columns), None)
    if id_column is None:
        log.info("no id column (%s) in %s: ids are row numbers from 1", ", ".join(ID_COLUMNS), path.name)
    # several sections (e.g. Open-i findings,impression) are joined as the readers join them
    texts = [" ".join(t for t in (row[c].strip() for c in text_columns) if t) for row in table.rows]
    ids = ([row[id_column] for row in table.rows] if id_column
           else [str(i + 1) for i in range(len(table.rows))])
    return Reports(ids=ids, texts=texts, source="csv")


def _read_txt_dir(path: Path) -> Reports:
    from radpriv.data._io import read_text_utf8

    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise DataError(f"{path}: no .txt files in this folder (searched recursively); give a CSV "
                        "or a folder of one-report .txt files")
    stems = [p.stem for p in files]
    if len(set(stems)) < len(stems):
        # e.g. two folders holding a report of the same name: keep ids unambiguous
        log.info("repeated file names under %s: ids are paths relative to it", path)
        stems = [p.relative_to(path).with_suffix("").as_posix() for p in files]
    return Reports(ids=stems, texts=[read_text_utf8(p).strip() for p in files], source="txt")


# --------------------------------------------------------------------------- output

def check_writable(output: Path) -> None:
    """Fail before any work when the output cannot be written."""
    if output.is_dir():
        raise DataError(f"{output}: is a folder; give output=<file>.csv")
    parent = output.parent
    if parent.exists() and not parent.is_dir():
        raise DataError(f"{output}: {parent} is a file, not a folder; choose a writable output path")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{output}: cannot create its folder ({e.strerror or type(e).__name__}); "
                        "choose a writable output path") from None
    if not os.access(parent, os.W_OK | os.X_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise DataError(f"{output}: not writable; choose a writable output path")


def write_predictions(output: Path, ids: Sequence[str], probs: torch.Tensor, thresholds: Sequence[float],
                      label_names: Sequence[str], empty: Sequence[bool]) -> None:
    """id, one 0/1 column per label, one prob_<label> column per label; written then renamed,
    so an interrupted run never leaves a half-written file under the output name."""
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", *label_names, *(PROB_PREFIX + n for n in label_names)])
            t = torch.as_tensor(list(thresholds), dtype=probs.dtype)
            predicted = (probs >= t).to(torch.int64).tolist()
            rows = probs.tolist()
            for i, report_id in enumerate(ids):
                if empty[i]:  # no text, no prediction: blank cells rather than a guess
                    w.writerow([report_id, *[""] * (2 * len(label_names))])
                else:
                    w.writerow([report_id, *predicted[i], *(repr(p) for p in rows[i])])
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- model

def check_labels(requested: Sequence[str] | None, label_names: Sequence[str], ref: str) -> None:
    """The model must predict exactly the labels asked for (any order)."""
    if requested is None:
        return
    missing = [x for x in requested if x not in label_names]
    extra = [x for x in label_names if x not in requested]
    if missing or extra:
        def some(xs: list[str]) -> str:
            return ", ".join(xs[:3]) + (f", … ({len(xs)} in all)" if len(xs) > 3 else "")

        parts = ([f"it lacks {some(missing)}"] if missing else []) + \
                ([f"it also predicts {some(extra)}"] if extra else [])
        raise ModelError(f"model {ref}: its {len(label_names)} labels are not the label schema asked "
                         f"for with labels= ({'; '.join(parts)}); use a model trained on that schema")


# --------------------------------------------------------------------------- predict

def predict_reports(model, texts: Sequence[str], batch_size: int, progress: bool = True) -> torch.Tensor:
    """Probabilities for every text, in input order, with a progress bar.

    Texts are sorted by length once, then scored in blocks of a few batches by the bundle's
    `predict_proba` (which length-sorts again, by tokens, inside a block): batches pad little,
    the bar moves, and the numbers are those of the in-process model.
    """
    from tqdm.auto import tqdm

    from radpriv.model.bundle import predict_proba

    out = torch.zeros((len(texts), len(model.label_names)))
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    block = batch_size * 8
    with torch.inference_mode(), tqdm(total=len(texts), unit="report", disable=not progress,
                                      desc="predict", dynamic_ncols=True) as bar:
        for start in range(0, len(order), block):
            idx = order[start:start + block]
            out[idx] = predict_proba(model, [texts[i] for i in idx], batch_size=batch_size)
            bar.update(len(idx))
    return out



# --------------------------------------------------------------------------- labelled output

@dataclass
class InputReports:
    ids: list[str]
    texts: list[str]
    extra_columns: list[str]         # passed through to the output (CSV input only)
    extra_rows: list[list[str]]


def read_input(options_input: Path, text_columns: list[str] | None, id_column: str | None) -> InputReports:
    """`read_reports`, plus the input's other columns (a split or patient column survives)."""
    from radpriv.data._io import read_csv

    reports = read_reports(options_input, text_columns, id_column)
    if not any(t.strip() for t in reports.texts):
        raise DataError(f"{options_input}: every report is empty; nothing to label")
    if reports.source != "csv":
        return InputReports(reports.ids, reports.texts, [], [[] for _ in reports.ids])
    table = read_csv(options_input, [], what="input CSV")
    columns = list(table.columns)
    used_text = text_columns or [next(c for c in TEXT_COLUMNS if c in columns)]
    used_id = id_column or next((c for c in ID_COLUMNS if c in columns), None)
    extra = [c for c in columns if c not in used_text and c != used_id]
    return InputReports(reports.ids, reports.texts, extra, [[row[c] for c in extra] for row in table.rows])


def check_columns(extra: Sequence[str], label_names: Sequence[str], path: Path) -> None:
    """The output must not hold a column twice: an input column named like a teacher label would
    mix the input's labels with the teacher's (a different schema) under one name."""
    reserved = {ID, TEXT, *label_names, *(PROB_PREFIX + n for n in label_names)}
    clash = [c for c in extra if c in reserved]
    if clash:
        raise DataError(f"{path}: line 1: input column(s) {clash} clash with the teacher's output "
                        f"columns (id, text, its {len(label_names)} labels and prob_<label>); drop or "
                        "rename them: the labelled CSV holds the teacher's labels only")


def write_labelled(output: Path, reports: InputReports, probs: torch.Tensor, thresholds: Sequence[float],
                   label_names: Sequence[str], empty: Sequence[bool]) -> None:
    """id, text, passed-through columns, 0/1 per label, prob_<label>; written then renamed."""
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow([ID, TEXT, *reports.extra_columns, *label_names, *(PROB_PREFIX + n for n in label_names)])
            t = torch.as_tensor(list(thresholds), dtype=probs.dtype)
            predicted = (probs >= t).to(torch.int64).tolist()
            rows = probs.tolist()
            for i, report_id in enumerate(reports.ids):
                head = [report_id, reports.texts[i], *reports.extra_rows[i]]
                if empty[i]:  # no text, no label: blank cells (the student's reader skips the row)
                    w.writerow([*head, *[""] * (2 * len(label_names))])
                else:
                    w.writerow([*head, *predicted[i], *(repr(p) for p in rows[i])])
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
