"""Input checks shared by the readers: where data lives, and strict CSV validation.

Every problem becomes a one-line `DataError` that names the file, the line (1-based, the
header is line 1) and the column where that applies, and says what to do. Messages never
quote report text: a bad *label* value is quoted (it is short and not free text), a text
cell never is.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radpriv.errors import DataError

DATA_DIR_ENV = "RADPRIV_DATA_DIR"
CACHE_DIR_ENV = "RADPRIV_CACHE_DIR"

# Accepted spellings of a 0/1 label cell (pandas writes 0/1 ints as "0.0"/"1.0" after a NaN).
_BINARY = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0}


def reader_defaults(name: str) -> dict:
    """conf/data/<name>.yaml as a dict: the one set of defaults of a reader that is also called
    as a library with a partial `data` dict (composed configs carry every key already)."""
    from omegaconf import OmegaConf

    from radpriv.config import CONF_DIR

    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "data" / f"{name}.yaml"), resolve=True)


def with_defaults(defaults: Mapping, cfg: Mapping) -> dict:
    """A `data` config over its reader's DEFAULTS: a key the caller left out has its YAML value."""
    return {**defaults, **{str(k): cfg[k] for k in cfg}}


def data_dir() -> Path | None:
    """`$RADPRIV_DATA_DIR` if set (the folder holding `openi/`, `ct_rate_text/`, ...)."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """`$RADPRIV_CACHE_DIR`, else `~/.cache/radpriv`: where downloads are kept."""
    value = os.environ.get(CACHE_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "radpriv"


def require_file(path: str | os.PathLike, what: str, hint: str) -> Path:
    """The path as a `Path` if it is an existing file; else a DataError saying what to do."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise DataError(f"{p}: is a folder, expected the {what} file; {hint}")
    if not p.is_file():
        raise DataError(f"{p}: {what} not found; {hint}")
    return p


def decode_utf8(data: bytes, where: object) -> str:
    """`data` decoded as UTF-8 (a BOM is dropped); a decoding error names `where`, line and column."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{where}: line {line}, column {column}: byte 0x{data[e.start]:02x} is not valid UTF-8; "
            "re-save the file with UTF-8 encoding"
        ) from None


def read_text_utf8(path: Path) -> str:
    """The file decoded as UTF-8 (a BOM is dropped); a decoding error names line and column.

    A name ending in `.gz` is decompressed first (PhysioNet ships its CSVs as `.csv.gz`).
    """
    data = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(
                f"{path}: not a readable gzip file ({type(e).__name__}); download it again, "
                "or give the uncompressed .csv"
            ) from None
    return decode_utf8(data, path)


@dataclass(frozen=True)
class CsvTable:
    """A validated CSV: header, rows as dicts (all cells strings) and each row's first line."""

    path: Path
    columns: tuple[str, ...]
    rows: list[dict[str, str]]
    lines: list[int]


def read_csv(path: Path, required: Iterable[str], what: str = "CSV") -> CsvTable:
    """Read a whole CSV strictly: UTF-8, the required columns, one cell per header column."""
    text = read_text_utf8(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the {what} is empty; expected a header line and rows")
        columns = tuple(c.strip() for c in header)
        wanted = list(dict.fromkeys(required))
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise DataError(
                f"{path}: line 1: missing required column(s) {missing}; found {list(columns)}; "
                "rename or add the columns"
            )
        rows: list[dict[str, str]] = []
        lines: list[int] = []
        start = reader.line_num + 1
        for cells in reader:
            if not cells:  # a blank line
                start = reader.line_num + 1
                continue
            if len(cells) != len(columns):
                raise DataError(
                    f"{path}: line {start}: {len(cells)} cells but the header has {len(columns)} "
                    "columns; check the quoting of that row"
                )
            rows.append(dict(zip(columns, cells)))
            lines.append(start)
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({e}); fix the quoting") from None
    return CsvTable(path=path, columns=columns, rows=rows, lines=lines)


def binary_labels(table: CsvTable, columns: Sequence[str], keep: Sequence[int] | None = None) -> np.ndarray:
    """The named columns as a float32 0/1 matrix; the first other value is an error.

    `keep` selects rows (indices into `table.rows`); default all. Rows are checked in file
    order and, within a row, in the order of `columns`.
    """
    return _label_matrix(table, columns, keep, _BINARY,
                         "is not 0 or 1; labels must be 0 (absent) or 1 (present)")


def _label_matrix(table: CsvTable, columns: Sequence[str], keep: Sequence[int] | None,
                  values: dict[str, float], what_to_do: str) -> np.ndarray:
    """Cells → floats through `values`; the first cell not in it is a DataError naming file,
    line and column (rows in file order, columns in the given order)."""
    idx = range(len(table.rows)) if keep is None else keep
    out = np.zeros((len(idx), len(columns)), dtype=np.float32)
    for r, i in enumerate(idx):
        row = table.rows[i]
        for j, col in enumerate(columns):
            value = values.get(row[col].strip())
            if value is None:
                raise DataError(f"{table.path}: line {table.lines[i]}, column {col!r}: label value "
                                f"{row[col][:20]!r} {what_to_do}")
            out[r, j] = value
    return out


def check_unique(ids: Sequence[str], where: Sequence[str], source: Path | str, column: str) -> None:
    """DataError on the first id that occurs twice, naming every place it occurs.

    `where[i]` describes row i ("line 12", or an XML file name).
    """
    seen: dict[str, list[int]] = {}
    for i, x in enumerate(ids):
        seen.setdefault(x, []).append(i)
    for x, rows in seen.items():
        if len(rows) > 1:
            places = ", ".join(where[i] for i in rows)
            raise DataError(
                f"{source}: duplicate {column} {x!r} at {places}; each report must appear once: "
                "remove or merge the repeated rows"
            )


# --------------------------------------------------------------------------- labels with uncertainty

UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")
# Accepted spellings of a label cell that may be uncertain (MIMIC-CXR writes "1.0", "0.0", "-1.0"
# and leaves a label that the report does not mention blank).
_TERNARY = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0, "": 0.0}


def uncertain_policy(value: object) -> str:
    """`data.uncertain` checked: ignore (masked, -1) | zeros (-> 0) | ones (-> 1)."""
    policy = "ignore" if value is None else str(value).strip().lower()
    if policy not in UNCERTAIN_POLICIES:
        raise DataError(f"data.uncertain={value!r}: use one of {list(UNCERTAIN_POLICIES)} "
                        "(ignore masks uncertain labels out of the loss and the metrics)")
    return policy


def ternary_labels(table: CsvTable, columns: Sequence[str], keep: Sequence[int] | None = None,
                   uncertain: str = "ignore") -> np.ndarray:
    """The named columns as a float32 matrix from cells 1 / 0 / -1 / blank.

    Blank (not mentioned) is 0; -1 (uncertain) becomes -1 (`ignore`: masked), 0 (`zeros`) or 1
    (`ones`). Any other value is a DataError naming file, line and column.
    """
    policy = uncertain_policy(uncertain)
    uncertain_value = {"ignore": -1.0, "zeros": 0.0, "ones": 1.0}[policy]
    out = _label_matrix(table, columns, keep, _TERNARY,
                        "is not one of 1, 0, -1 or blank; use 1 (positive), 0 (negative), "
                        "-1 (uncertain) or leave it blank (not mentioned = 0)")
    out[out == -1.0] = uncertain_value
    return out


def label_list(value: object, default: Sequence[str], key: str = "data.labels") -> tuple[str, ...]:
    """A configured list of label (column) names; `default` when null."""
    if value is None:
        return tuple(default)
    names = [value] if isinstance(value, str) else list(value)  # type: ignore[arg-type]
    names = [str(n).strip() for n in names]
    if not names or not all(names):
        raise DataError(f"{key}={names!r}: name at least one label column")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"{key}: {dup} listed more than once; name each label once")
    return tuple(names)


def check_missing_fraction(n_missing: int, n_total: int, max_fraction: float, path: Path | str,
                           first: str, what: str, log: logging.Logger) -> None:
    """Rows of an id file with no report: a warning, or a DataError above `max_fraction`.

    `first` locates the first such row ("line 12, study_id '5'"); `what` names the rows.
    """
    if n_missing == 0:
        return
    share = n_missing / max(n_total, 1)
    if share > max_fraction:
        raise DataError(
            f"{path}: {n_missing} of {n_total} {what} ({share:.1%}) have no report (first at {first}); "
            f"more than data.max_missing_reports_fraction={max_fraction:g}: check that the reports and "
            "this file come from the same release, or raise that threshold"
        )
    log.warning("%s: %d of %d %s (%.2f%%) have no report; they are skipped (first at %s)",
                path, n_missing, n_total, what, 100 * share, first)


def check_max_fraction(value: object) -> float:
    """`data.max_missing_reports_fraction` as a float in [0, 1]."""
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"data.max_missing_reports_fraction={value!r} is not a number; use e.g. 0.01") from None
    if not 0.0 <= f <= 1.0:
        raise DataError(f"data.max_missing_reports_fraction={f} is outside [0, 1]; use e.g. 0.01")
    return f


def warn_never_positive(name: str, labels: np.ndarray, label_names: Sequence[str],
                        split: Sequence[str], log: logging.Logger) -> list[str]:
    """Log a warning for each label with no positive in the training split; returns their names."""
    train = np.array([s == "train" for s in split], dtype=bool)
    never = [n for j, n in enumerate(label_names) if not (labels[train, j] == 1).any()]
    if never:
        log.warning("%s: %d label(s) never positive in the training split: %s; the model cannot "
                    "learn them", name, len(never), never)
    return never


def first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    """The first of `folder/name` that is a file, else None."""
    for n in names:
        if (folder / n).is_file():
            return folder / n
    return None
