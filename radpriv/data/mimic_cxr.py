"""MIMIC-CXR (PhysioNet) exactly as distributed -> `ReportTable`.

Three inputs, found under `data.path` (one folder holding them all) unless given one by one:
- reports (`data.reports_path`): the free-text reports, `files/pXX/p<subject_id>/s<study_id>.txt`
  (XX = the first two digits of the subject id), either as that tree (MIMIC-CXR's `files/`
  folder, with or without the DICOM study folders beside the `.txt` files) or as MIMIC-CXR's
  `mimic-cxr-reports.zip` holding it. Under `data.path` the zip is used when present, else
  `files/`. Member/file names are matched on their `pXX/p<subject>/s<study>.txt` tail; other
  files are ignored.
- labels (`data.labels_path`): `mimic-cxr-2.0.0-chexpert.csv` (`data.labeler: chexpert`) or
  `mimic-cxr-2.0.0-negbio.csv` (`negbio`), `.csv` or PhysioNet's `.csv.gz`:
  `subject_id,study_id,` + the 14 CheXpert labels (alphabetical in the file; selected by name,
  and ordered as `data.labels`, default `schemas.CHEXPERT14`). Cells: `1.0` positive, `0.0`
  negative, `-1.0` uncertain, blank = not mentioned -> 0. Uncertain by `data.uncertain`:
  `ignore` (default: -1, masked out of the loss and the metrics), `zeros` (-> 0), `ones` (-> 1).
- split (`data.split_path`): `mimic-cxr-2.0.0-split.csv` (or `.csv.gz`),
  `dicom_id,study_id,subject_id,split`, one row per image, reduced to one split per study
  (`train`, `validate` -> val, `test`). When no split file is found (and none is named), the
  split is drawn by patient (subject_id) with a seed (`data.val_fraction`, `data.test_fraction`)
  and the table's `source` says so.

Text = the report sections named in `data.sections` (default findings, impression), each
found by its all-capital header at the start of a line (`FINDINGS:`, `IMPRESSION:`, also
`INDICATION:`, `COMPARISON:`, `TECHNIQUE:`, ...; frequent variants such as `IMPRESSIONS:`,
`CONCLUSION:`, `FINDINGS AND IMPRESSION:` are mapped by SECTION_ALIASES), joined in the
configured order with whitespace collapsed. A header that occurs twice contributes both
bodies. The `FINAL REPORT` banner is dropped.

Fallback (`data.section_fallback`) when none of the requested sections is found, or all of
them are empty, e.g. a report with no headers at all:
- `last_paragraph` (default): the last paragraph (text after the last blank line, less a
  leading header). This is what the CheXpert labeler was run on for MIMIC-CXR-JPG when a
  report had neither impression nor findings, so the text matches its labels;
- `whole`: the whole report (banner dropped);
- `exclude`: the report is dropped and counted as `no_section`.
The number of reports that took the fallback is logged and written into the table's `source`.

Rows are joined on study_id. Exclusions, counted per reason in `ReportTable.excluded`:
`empty_text` (nothing left after extraction), `no_section` (fallback `exclude`), `no_label`
(a report without a label row), `not_in_split` (a report without a split row). Label rows
(and split studies) without a report are counted: above `data.max_missing_reports_fraction`
(default 0.01) that is an error, else a warning. Errors are one-line DataErrors naming the
file and the line/column; no message quotes report text.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from radpriv.data._io import (
    check_max_fraction,
    check_missing_fraction,
    check_unique,
    data_dir,
    decode_utf8,
    first_existing,
    label_list,
    read_csv,
    reader_defaults,
    require_file,
    ternary_labels,
    uncertain_policy,
    warn_never_positive,
    with_defaults,
)
from radpriv.data.schemas import CHEXPERT14
from radpriv.data.splits import check_fraction, split_by_patient
from radpriv.data.table import ReportTable
from radpriv.errors import DataError

logger = logging.getLogger(__name__)

# conf/data/mimic_cxr.yaml: the value of a key the caller leaves out (tests/test_config.py)
DEFAULTS = reader_defaults("mimic_cxr")

REPORTS_ZIP = "mimic-cxr-reports.zip"
REPORTS_DIR = "files"
LABELERS = ("chexpert", "negbio")
SPLIT_STEM = "mimic-cxr-2.0.0-split"
FALLBACKS = ("last_paragraph", "whole", "exclude")
DEFAULT_SECTIONS = ("findings", "impression")
# the official split's names -> ReportTable's
SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "test": "test"}

_REPORT_RE = re.compile(r"(?:^|/)p(\d{2})/p(\d+)/s(\d+)\.txt$")
_STUDY_DIR_RE = re.compile(r"^s\d+$")  # DICOM/JPG study folders beside the .txt reports
# A section header: capitals (and space , / & ( ) -) at the start of a line, then a colon.
# No digits or lower case, so "AP CHEST, 8:14" or "___F with cough: ..." are not headers.
_HEADER_RE = re.compile(r"^[ \t]*([A-Z][A-Z ,/&()\-]*[A-Z)])[ \t]*:", re.M)
_BANNER_RE = re.compile(r"^[ \t]*FINAL REPORT[ \t]*$", re.M)
_PARAGRAPH_RE = re.compile(r"\n[ \t]*\n")

# Header (lower case, single spaces) -> canonical section name. Headers not listed keep their
# own lower-case name (so `data.sections` may name any header, e.g. "wet read").
SECTION_ALIASES: dict[str, str] = {
    "finding": "findings",
    "findings": "findings",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "findings and impression": "impression",
    "findings/impression": "impression",
    "findings / impression": "impression",
    "impression/findings": "impression",
    "comparisons": "comparison",
    "comparison exam": "comparison",
    "reason for exam": "indication",
    "reason for examination": "indication",
    "clinical indication": "indication",
    "clinical history": "history",
    "clinical information": "history",
    "exam": "examination",
    "type of examination": "examination",
}


# --------------------------------------------------------------------------- sections

def canonical_section(header: str) -> str:
    name = " ".join(header.lower().split())
    return SECTION_ALIASES.get(name, name)


def split_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(preamble, [(canonical section name, body), ...] in report order)."""
    text = _BANNER_RE.sub("", text)
    matches = list(_HEADER_RE.finditer(text))
    preamble = text[: matches[0].start()] if matches else text
    sections = []
    for k, m in enumerate(matches):
        end = matches[k + 1].start() if k + 1 < len(matches) else len(text)
        sections.append((canonical_section(m.group(1)), text[m.end():end]))
    return preamble, sections


def _squash(text: str) -> str:
    return " ".join(text.split())


def last_paragraph(text: str) -> str:
    """The last non-empty paragraph (after the last blank line), less a leading header."""
    text = _BANNER_RE.sub("", text)
    paragraphs = [p for p in _PARAGRAPH_RE.split(text) if p.strip()]
    if not paragraphs:
        return ""
    last = paragraphs[-1]
    m = _HEADER_RE.match(last)
    return _squash(last[m.end():] if m else last)


def extract_sections(text: str, sections: tuple[str, ...], fallback: str) -> tuple[str, bool]:
    """(model text, whether the fallback was used); "" when nothing is left."""
    _, found = split_sections(text)
    parts = [_squash(body) for name in sections for n, body in found if n == name]
    joined = " ".join(p for p in parts if p)
    if joined:
        return joined, False
    if fallback == "last_paragraph":
        return last_paragraph(text), True
    if fallback == "whole":
        return _squash(_BANNER_RE.sub("", text)), True
    return "", True  # exclude


# --------------------------------------------------------------------------- locating input

@dataclass(frozen=True)
class RawReport:
    subject: str
    study: str
    where: str  # file path, or `zip:member`
    text: str  # the extracted model text; "" when the report is excluded
    excluded: str = ""  # why text is "": empty_text | no_section


def _given(value: object) -> Path | None:
    if value is None or str(value).strip() == "":
        return None
    return Path(str(value)).expanduser()


def _root(cfg: Mapping) -> Path | None:
    root = _given(cfg["path"])
    if root is None:
        dd = data_dir()
        if dd is not None and (dd / "mimic_cxr").is_dir():
            root = dd / "mimic_cxr"
    if root is not None and not root.is_dir():
        if root.exists():
            raise DataError(f"{root}: is a file; data.path must be the folder holding {REPORTS_ZIP} (or "
                            f"{REPORTS_DIR}/), the label CSV and the split CSV")
        raise DataError(f"{root}: folder not found; set data.path to the folder holding {REPORTS_ZIP} "
                        f"(or {REPORTS_DIR}/), the label CSV and the split CSV")
    return root


def _no_root(what: str, key: str) -> DataError:
    return DataError(f"MIMIC-CXR {what} not given: set data.path=/path/to/mimic-cxr (the folder holding "
                     f"{REPORTS_ZIP} or {REPORTS_DIR}/, the label CSV and the split CSV) or {key}=...")


def resolve_reports(cfg: Mapping, root: Path | None) -> tuple[Path, str]:
    """(path, "zip" | "tree") of the reports."""
    given = _given(cfg["reports_path"])
    if given is not None:
        if given.is_dir():
            return given, "tree"
        p = require_file(given, "MIMIC-CXR reports", f"give data.reports_path = the {REPORTS_DIR}/ "
                         f"folder or {REPORTS_ZIP}")
        if not zipfile.is_zipfile(p):
            raise DataError(f"{p}: not a zip archive; give data.reports_path = the {REPORTS_DIR}/ folder "
                            f"or {REPORTS_ZIP}")
        return p, "zip"
    if root is None:
        raise _no_root("reports", "data.reports_path")
    if (root / REPORTS_ZIP).is_file():
        if not zipfile.is_zipfile(root / REPORTS_ZIP):
            raise DataError(f"{root / REPORTS_ZIP}: not a readable zip archive; download it again")
        return root / REPORTS_ZIP, "zip"
    if (root / REPORTS_DIR).is_dir():
        return root / REPORTS_DIR, "tree"
    raise DataError(f"{root}: neither {REPORTS_ZIP} nor a {REPORTS_DIR}/ folder of reports "
                    f"(pXX/p<subject>/s<study>.txt) in it; put one there or set data.reports_path")


def resolve_labels(cfg: Mapping, root: Path | None, labeler: str) -> Path:
    stem = f"mimic-cxr-2.0.0-{labeler}"
    given = _given(cfg["labels_path"])
    if given is not None:
        return require_file(given, f"{labeler} label CSV", f"give data.labels_path = {stem}.csv or .csv.gz")
    if root is None:
        raise _no_root("label CSV", "data.labels_path")
    found = first_existing(root, [f"{stem}.csv", f"{stem}.csv.gz"])
    if found is None:
        raise DataError(f"{root}: no {stem}.csv or {stem}.csv.gz in it (data.labeler={labeler}); "
                        "put it there (from MIMIC-CXR-JPG) or set data.labels_path")
    return found


def resolve_split(cfg: Mapping, root: Path | None) -> Path | None:
    given = _given(cfg["split_path"])
    if given is not None:
        return require_file(given, "split CSV", f"give data.split_path = {SPLIT_STEM}.csv or .csv.gz, "
                            "or data.split_path=null for a seeded split")
    if root is None:
        return None
    return first_existing(root, [f"{SPLIT_STEM}.csv", f"{SPLIT_STEM}.csv.gz"])


# --------------------------------------------------------------------------- reading reports

def _iter_tree(root: Path) -> Iterator[tuple[str, str, str, bytes]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _STUDY_DIR_RE.match(d))
        rel = Path(dirpath).relative_to(root).as_posix()
        for name in filenames:
            m = _REPORT_RE.search(f"{rel}/{name}")
            if m:
                path = Path(dirpath) / name
                yield str(int(m.group(2))), str(int(m.group(3))), str(path), path.read_bytes()


def _iter_zip(path: Path) -> Iterator[tuple[str, str, str, bytes]]:
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                m = _REPORT_RE.search(info.filename)
                if m:
                    yield str(int(m.group(2))), str(int(m.group(3))), f"{path}:{info.filename}", zf.read(info)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable zip archive ({type(e).__name__}); download it again") from None


def read_reports(path: Path, kind: str, sections: tuple[str, ...], fallback: str) -> tuple[dict[str, RawReport], int]:
    """study_id -> report (text already extracted), and the number of fallback extractions."""
    reports: dict[str, RawReport] = {}
    n_fallback = 0
    for subject, study, where, data in (_iter_zip(path) if kind == "zip" else _iter_tree(path)):
        text = decode_utf8(data, where)
        if study in reports:
            raise DataError(f"{path}: duplicate study_id {study!r} at {reports[study].where} and {where}; "
                            "each study must have one report")
        extracted, fell_back = extract_sections(text, sections, fallback)
        n_fallback += fell_back
        reason = "" if extracted else (
            "no_section" if fallback == "exclude" and text.strip() and fell_back else "empty_text")
        reports[study] = RawReport(subject=subject, study=study, where=where, text=extracted, excluded=reason)
    if not reports:
        raise DataError(f"{path}: no reports named pXX/p<subject_id>/s<study_id>.txt found in it; give "
                        f"the MIMIC-CXR {REPORTS_DIR}/ folder or {REPORTS_ZIP}")
    return reports, n_fallback


def _id_cell(table, i: int, column: str) -> str:
    value = table.rows[i][column].strip()
    if not value.isdigit():
        raise DataError(f"{table.path}: line {table.lines[i]}, column {column!r}: {value[:20]!r} is not "
                        f"a numeric {column}; every row needs one")
    return str(int(value))


def read_split(path: Path, reports: Mapping[str, RawReport], max_missing: float) -> dict[str, str]:
    """study_id -> "train" | "val" | "test" from the per-image official split file."""
    table = read_csv(path, ["study_id", "subject_id", "split"], what="MIMIC-CXR split CSV")
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
    subject_of: dict[str, str] = {}
    unknown: list[int] = []
    for i, row in enumerate(table.rows):
        line = table.lines[i]
        study = _id_cell(table, i, "study_id")
        subject = _id_cell(table, i, "subject_id")
        value = row["split"].strip().lower()
        if value not in SPLIT_NAMES:
            raise DataError(f"{path}: line {line}, column 'split': {row['split'][:20]!r} is not train, "
                            "validate or test")
        name = SPLIT_NAMES[value]
        if study in out:
            if out[study] != name or subject_of[study] != subject:
                raise DataError(f"{path}: line {line}: study_id {study!r} has split {name!r} / subject "
                                f"{subject} here but {out[study]!r} / {subject_of[study]} at line "
                                f"{first_line[study]}; one study belongs to one split and one subject")
            continue
        out[study], first_line[study], subject_of[study] = name, line, subject
        if study not in reports:
            unknown.append(i)
    if not out:
        raise DataError(f"{path}: no rows below the header; give the full {SPLIT_STEM}.csv")
    first = (f"line {table.lines[unknown[0]]}, study_id {_id_cell(table, unknown[0], 'study_id')!r}"
             if unknown else "")
    check_missing_fraction(len(unknown), len(out), max_missing, path, first,
                           "studies named in the split file", logger)
    for study, subject in subject_of.items():
        r = reports.get(study)
        if r is not None and r.subject != subject:
            raise DataError(f"{path}: line {first_line[study]}, column 'subject_id': study {study} belongs to "
                            f"subject {subject} here but to subject {r.subject} in {r.where}")
    return out


# --------------------------------------------------------------------------- the reader

def _sections(value: object) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_SECTIONS
    names = [value] if isinstance(value, str) else list(value)  # type: ignore[arg-type]
    names = [" ".join(str(n).lower().split()) for n in names]
    if not names or not all(names):
        raise DataError(f"data.sections={names!r}: name at least one section, e.g. [findings, impression]")
    return tuple(dict.fromkeys(canonical_section(n) for n in names))


def load_mimic_cxr(cfg: Mapping, seed: int) -> ReportTable:
    """MIMIC-CXR as a ReportTable (see the module docstring and conf/data/mimic_cxr.yaml)."""
    cfg = with_defaults(DEFAULTS, cfg)
    labeler = str(cfg["labeler"] or "chexpert").strip().lower()
    if labeler not in LABELERS:
        raise DataError(f"data.labeler={labeler!r}: use one of {list(LABELERS)}")
    label_names = label_list(cfg["labels"], CHEXPERT14)
    policy = uncertain_policy(cfg["uncertain"])
    sections = _sections(cfg["sections"])
    fallback = str(cfg["section_fallback"] or "last_paragraph").strip().lower()
    if fallback not in FALLBACKS:
        raise DataError(f"data.section_fallback={fallback!r}: use one of {list(FALLBACKS)}")
    max_missing = check_max_fraction(cfg["max_missing_reports_fraction"])
    val_fraction = check_fraction("val_fraction", cfg["val_fraction"])
    test_fraction = check_fraction("test_fraction", cfg["test_fraction"])

    # every input is located (and checked to exist) before the big read
    root = _root(cfg)
    reports_path, kind = resolve_reports(cfg, root)
    labels_path = resolve_labels(cfg, root, labeler)
    split_path = resolve_split(cfg, root)

    labels_csv = read_csv(labels_path, ["subject_id", "study_id", *label_names], what=f"{labeler} label CSV")
    if not labels_csv.rows:
        raise DataError(f"{labels_path}: no label rows below the header; give the full label CSV")
    studies = [_id_cell(labels_csv, i, "study_id") for i in range(len(labels_csv.rows))]
    subjects = [_id_cell(labels_csv, i, "subject_id") for i in range(len(labels_csv.rows))]
    check_unique(studies, [f"line {n}" for n in labels_csv.lines], labels_path, "study_id")

    reports, n_fallback = read_reports(reports_path, kind, sections, fallback)
    row_of = {s: i for i, s in enumerate(studies)}
    missing = [i for i, s in enumerate(studies) if s not in reports]
    first = f"line {labels_csv.lines[missing[0]]}, study_id {studies[missing[0]]!r}" if missing else ""
    check_missing_fraction(len(missing), len(studies), max_missing, labels_path, first,
                           "label rows", logger)
    for i, s in enumerate(studies):
        r = reports.get(s)
        if r is not None and r.subject != subjects[i]:
            raise DataError(f"{labels_path}: line {labels_csv.lines[i]}, column 'subject_id': study {s} "
                            f"belongs to subject {subjects[i]} here but to subject {r.subject} in {r.where}")
    official = read_split(split_path, reports, max_missing) if split_path is not None else None

    excluded: Counter[str] = Counter({"empty_text": 0, "no_label": 0})
    if fallback == "exclude":
        excluded["no_section"] = 0
    if official is not None:
        excluded["not_in_split"] = 0
    kept: list[RawReport] = []
    for r in sorted(reports.values(), key=lambda r: (int(r.subject), int(r.study))):
        if r.excluded:
            excluded[r.excluded] += 1
            continue
        if r.study not in row_of:
            excluded["no_label"] += 1
            continue
        if official is not None and r.study not in official:
            excluded["not_in_split"] += 1
            continue
        kept.append(r)
    if not kept:
        raise DataError(f"{reports_path}: no usable reports left after exclusions {dict(excluded)}; "
                        "check data.sections and that the reports and labels belong together")

    labels = ternary_labels(labels_csv, label_names, [row_of[r.study] for r in kept], policy)
    ids = tuple(r.study for r in kept)
    patients = tuple(r.subject for r in kept)
    if official is not None:
        split = tuple(official[s] for s in ids)
        split_source = f"split {split_path}"
    else:
        logger.info("mimic_cxr: no %s.csv(.gz) found; seeded split by patient (val %.2g, test %.2g, seed %d)",
                    SPLIT_STEM, val_fraction, test_fraction, seed)
        split = split_by_patient(patients, seed, val_fraction=val_fraction, test_fraction=test_fraction)
        split_source = f"split seeded by patient (val {val_fraction:g}, test {test_fraction:g})"
    table = ReportTable(
        name="mimic_cxr",
        ids=ids,
        texts=tuple(r.text for r in kept),
        labels=labels,
        label_names=label_names,
        split=split,
        patient_ids=patients,
        patient_source="subject_id",
        excluded=dict(excluded),
        source=(f"mimic_cxr reports {kind} {reports_path}; labels {labels_path} ({labeler}, "
                f"uncertain={policy}); {split_source}; sections {'+'.join(sections)} "
                f"(fallback {fallback}: {n_fallback} reports)"),
    )
    logger.info("mimic_cxr: read %d reports and %d label rows; kept %d (%d patients); %d took the "
                "section fallback (%s); excluded %s; split %s", len(reports), len(studies), len(table),
                len(set(patients)), n_fallback, fallback, dict(excluded),
                {s: split.count(s) for s in ("train", "val", "test")})
    warn_never_positive("mimic_cxr", labels, label_names, split, logger)
    return table
