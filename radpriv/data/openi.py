"""Open-i (Indiana University chest X-ray reports) -> `ReportTable`.

Reads any of the three shapes the collection comes in, so that a user with nothing but a
network connection gets the same table as one with the widely used CSV export:
- `indiana_reports.csv` (`uid,MeSH,Problems,image,indication,comparison,findings,impression`);
- a folder holding the official XML reports (`ecgen-radiology/<uid>.xml`, any depth);
- the official archive `NLMCXR_reports.tgz`, downloaded into the cache when no path is given.

Labels: CheXpert-14 from the indexers' MeSH terms (`schemas.MESH_TO_CHEXPERT`), or NegBio's
expert gold labels (`openi_gld_std14.csv`, schema `schemas.NEGBIO14`). Test split: NegBio's
published `openi-testset.txt` when it is found, else a seeded 20% by patient (= report: Open-i
has one study per patient). Every dropped row is counted per reason in
`ReportTable.excluded` and logged (counts only, never text).
"""

from __future__ import annotations

import logging
import os
import re
import tarfile
import tempfile
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import numpy as np

from radpriv.data._io import (
    binary_labels,
    cache_dir,
    check_unique,
    data_dir,
    read_csv,
    read_text_utf8,
    reader_defaults,
    require_file,
    with_defaults,
)
from radpriv.data.schemas import (
    CHEXPERT14,
    NEGBIO14,
    NEGBIO_FINDINGS,
    NEGBIO_NORMAL_COLUMN,
    chexpert_from_mesh,
    mesh_entries,
)
from radpriv.data.splits import check_fraction, split_by_patient
from radpriv.data.table import ReportTable
from radpriv.errors import DataError

logger = logging.getLogger(__name__)

# conf/data/openi.yaml: the value of a key the caller leaves out (tests/test_config.py)
DEFAULTS = reader_defaults("openi")

OPENI_ARCHIVE_URL = "https://openi.nlm.nih.gov/imgs/collections/NLMCXR_reports.tgz"
ARCHIVE_NAME = "NLMCXR_reports.tgz"
CSV_NAME = "indiana_reports.csv"
GOLD_NAME = "openi_gld_std14.csv"
TEST_IDS_NAME = "openi-testset.txt"
MIN_ARCHIVE_REPORTS = 3000  # the official archive holds 3,955 reports; fewer means a bad download
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation: fail fast when offline

LABEL_MODES = ("chexpert_mesh", "negbio")
DEFAULT_TEXT_FIELDS = ("findings", "impression")
XML_TEXT_FIELDS = ("findings", "impression", "indication", "comparison")  # AbstractText Labels

# Rows whose MeSH terms are only these carry no usable label (README: "exclude by default").
# first-level term (casefolded) -> exclusion reason
_UNLABELLED_TERMS = {
    "no indexing": "no_indexing",
    "technical quality of image unsatisfactory": "image_quality_unsatisfactory",
}


@dataclass(frozen=True)
class OpeniReport:
    """One report as read, before labels and exclusions. `where` locates it for messages."""

    id: str
    fields: dict[str, str]  # lowercase section name -> text
    mesh: str  # the indexers' (major) MeSH terms joined with ";", as the CSV `MeSH` column
    where: str


# --------------------------------------------------------------------------- locating input

def _missing_message(reason: str, archive: Path) -> str:
    dd = data_dir()
    shown = f"{dd}" if dd is not None else "not set"
    return (
        f"Open-i reports not found and the official archive could not be obtained ({reason}). "
        f"Either put the CSV export at $RADPRIV_DATA_DIR/openi/{CSV_NAME} (RADPRIV_DATA_DIR is {shown}) "
        f"or set data.path=/path/to/{CSV_NAME}; or download {OPENI_ARCHIVE_URL} and put it at {archive}"
    )


def default_archive_path() -> Path:
    """Where the official archive is cached: `<cache>/openi/NLMCXR_reports.tgz`."""
    return cache_dir() / "openi" / ARCHIVE_NAME


def resolve_openi_path(path: str | os.PathLike | None) -> tuple[Path, str]:
    """(path, kind) with kind "csv" | "xml_dir" | "archive"; downloads when nothing is given."""
    if path is None or str(path).strip() == "":
        dd = data_dir()
        if dd is not None and (dd / "openi" / CSV_NAME).is_file():
            return dd / "openi" / CSV_NAME, "csv"
        archive = default_archive_path()
        if not archive.is_file():
            download_openi_archive(archive)
        return archive, "archive"
    p = Path(path).expanduser()
    hint = f"give data.path = an {CSV_NAME}, a folder of Open-i XML reports, or {ARCHIVE_NAME}"
    if p.is_dir():
        return (p / CSV_NAME, "csv") if (p / CSV_NAME).is_file() else (p, "xml_dir")
    p = require_file(p, "Open-i reports", hint)
    if p.suffix.lower() == ".csv":
        return p, "csv"
    if tarfile.is_tarfile(p):
        return p, "archive"
    raise DataError(f"{p}: neither a .csv file nor a tar archive; {hint}")


def download_openi_archive(dest: Path, url: str = OPENI_ARCHIVE_URL,
                           timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download the official archive to `dest`, atomically, and check it before keeping it.

    The bytes go to a temporary file beside `dest`, which is renamed only once the whole
    archive has arrived and reads as a gzip tar with at least MIN_ARCHIVE_REPORTS reports;
    an interrupted or corrupt download therefore never poisons the cache.
    """
    from tqdm import tqdm

    logger.info("openi: downloading %s to %s", url, dest)
    tmp: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            size = int((getattr(resp, "headers", None) or {}).get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
        try:
            n = sum(1 for _ in _iter_archive_xml(tmp))
        except DataError:
            n = -1
        if n < MIN_ARCHIVE_REPORTS:
            found = "is not a readable gzip tar" if n < 0 else f"holds {n} XML reports"
            raise DataError(_missing_message(
                f"the download {found}, expected at least {MIN_ARCHIVE_REPORTS} XML reports", dest))
        os.replace(tmp, dest)
        tmp = None
    except (urllib.error.URLError, OSError, HTTPException, ValueError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(_missing_message(f"download of {url} failed: {reason}", dest)) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    logger.info("openi: archive saved to %s (%d reports)", dest, n)
    return dest


# --------------------------------------------------------------------------- reading

def _natural_key(report_id: str) -> tuple[int, str]:
    m = re.search(r"(\d+)$", report_id)
    return (int(m.group(1)) if m else -1, report_id)


def _report_id(raw: str) -> str:
    raw = raw.strip()
    return f"CXR{raw}" if raw.isdigit() else raw


def parse_report_xml(data: bytes, where: str) -> OpeniReport:
    """One Open-i XML report. Elements are found by tag anywhere: positions vary by file."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        line, col = e.position
        raise DataError(
            f"{where}: line {line}, column {col + 1}: not well-formed XML; "
            f"replace it with the original file from {ARCHIVE_NAME}"
        ) from None
    uid = next((el.get("id", "").strip() for el in root.iter("uId") if el.get("id", "").strip()), "")
    if not uid:
        raise DataError(f"{where}: no <uId id=\"CXR...\"> element; an Open-i report needs its id")
    fields: dict[str, str] = {}
    for el in root.iter("AbstractText"):
        label = (el.get("Label") or "").strip().lower()
        if label:
            fields[label] = "".join(el.itertext()).strip()
    major = [(el.text or "").strip() for mesh in root.iter("MeSH") for el in mesh.iter("major")]
    return OpeniReport(id=_report_id(uid), fields=fields, mesh=";".join(t for t in major if t), where=where)


def _is_report_xml(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.lower().endswith(".xml") and not base.startswith("._")


def _iter_archive_xml(path: Path) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of every XML report in a tar archive; DataError if unreadable."""
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile() and _is_report_xml(member.name):
                    f = tar.extractfile(member)
                    if f is not None:
                        yield member.name, f.read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(
            f"{path}: not a readable gzip tar archive ({type(e).__name__}); "
            f"delete it and download {OPENI_ARCHIVE_URL} again"
        ) from None


def read_openi_reports(path: Path, kind: str, text_fields: list[str] | None = None,
                       need_mesh: bool = True) -> list[OpeniReport]:
    """All reports of a CSV ("csv"), XML folder ("xml_dir") or archive ("archive").

    Ids are `CXR<uid>` and checked for duplicates. XML reports are sorted by uid number, the
    order of the CSV export. For a CSV, `text_fields` (and `MeSH` when `need_mesh`) are
    required columns.
    """
    if kind == "csv":
        return _read_csv_reports(path, list(text_fields or DEFAULT_TEXT_FIELDS), need_mesh)
    if kind == "xml_dir":
        files = sorted(f for f in path.rglob("*.xml") if f.is_file() and _is_report_xml(f.name))
        reports = [parse_report_xml(f.read_bytes(), str(f)) for f in files]
    else:
        reports = [parse_report_xml(data, f"{path}:{name}") for name, data in _iter_archive_xml(path)]
    if not reports:
        raise DataError(
            f"{path}: no {CSV_NAME} and no .xml reports found; give data.path = an {CSV_NAME}, "
            f"a folder of Open-i XML reports, or {ARCHIVE_NAME}"
        )
    check_unique([r.id for r in reports], [r.where for r in reports], path, "report id (uId)")
    return sorted(reports, key=lambda r: _natural_key(r.id))


def _read_csv_reports(path: Path, text_fields: list[str], need_mesh: bool) -> list[OpeniReport]:
    required = ["uid", *(["MeSH"] if need_mesh else []), *text_fields]
    table = read_csv(path, required, what="Open-i reports CSV")
    reports = []
    for row, line in zip(table.rows, table.lines):
        if not row["uid"].strip():
            raise DataError(f"{path}: line {line}, column 'uid': empty report id; every row needs its uid")
        reports.append(OpeniReport(
            id=_report_id(row["uid"]),
            fields={f: row[f] for f in text_fields},
            mesh=row.get("MeSH", ""),
            where=f"line {line}",
        ))
    if not reports:
        raise DataError(f"{path}: no report rows below the header; give the full {CSV_NAME}")
    check_unique([r.id for r in reports], [r.where for r in reports], path, "uid")
    return reports


def unlabelled_reason(mesh_field: str) -> str | None:
    """Why a report's MeSH terms carry no usable label, or None when they do."""
    terms = {parts[0].casefold() for parts in mesh_entries(mesh_field)}
    if not terms:
        return "no_mesh_terms"
    if terms <= set(_UNLABELLED_TERMS):
        return "no_indexing" if "no indexing" in terms else _UNLABELLED_TERMS[next(iter(terms))]
    return None


def _read_gold(path: Path) -> dict[str, np.ndarray]:
    columns = [*NEGBIO_FINDINGS, NEGBIO_NORMAL_COLUMN]  # "normal" -> "No Finding" (schemas.NEGBIO14)
    table = read_csv(path, ["filename", *columns], what="NegBio gold-label CSV")
    ids = [_report_id(r["filename"]) for r in table.rows]
    check_unique(ids, [f"line {n}" for n in table.lines], path, "filename")
    labels = binary_labels(table, columns)
    return dict(zip(ids, labels))


def _read_test_ids(path: Path) -> set[str]:
    return {_report_id(x) for x in read_text_utf8(path).split() if x.strip()}


def _text_fields(cfg: Mapping, kind: str) -> list[str]:
    value = cfg["text_fields"]
    fields = list(DEFAULT_TEXT_FIELDS) if value is None else ([value] if isinstance(value, str) else list(value))
    fields = [str(f).strip().lower() for f in fields]
    if not fields or not all(fields):
        raise DataError(f"data.text_fields={fields!r}: name at least one section, e.g. [findings, impression]")
    if kind != "csv":
        unknown = [f for f in fields if f not in XML_TEXT_FIELDS]
        if unknown:
            raise DataError(f"data.text_fields: {unknown} are not Open-i XML sections; "
                            f"use some of {list(XML_TEXT_FIELDS)}")
    return fields


def _beside(cfg_value: object, folder: Path, name: str) -> tuple[Path, bool]:
    """(path, explicitly given) for a companion file that defaults to `folder/name`."""
    if cfg_value is None or str(cfg_value).strip() == "":
        return folder / name, False
    return Path(str(cfg_value)).expanduser(), True


# --------------------------------------------------------------------------- the reader

def load_openi(cfg: Mapping, seed: int) -> ReportTable:
    """The Open-i reports as a ReportTable (see the module docstring and conf/data/openi.yaml)."""
    cfg = with_defaults(DEFAULTS, cfg)
    mode = str(cfg["labels"] or "chexpert_mesh")
    if mode not in LABEL_MODES:
        raise DataError(f"data.labels={mode!r} is not an Open-i label mode; use one of {list(LABEL_MODES)}")
    val_fraction = check_fraction("val_fraction", cfg["val_fraction"])
    test_fraction = check_fraction("test_fraction", cfg["test_fraction"])
    exclude_unlabelled = bool(cfg["exclude_unlabelled"])

    path, kind = resolve_openi_path(cfg["path"])
    text_fields = _text_fields(cfg, kind)
    reports = read_openi_reports(path, kind, text_fields, need_mesh=mode == "chexpert_mesh")
    if kind == "archive" and cfg["path"] in (None, "") and len(reports) < MIN_ARCHIVE_REPORTS:
        raise DataError(
            f"{path}: holds {len(reports)} reports, expected at least {MIN_ARCHIVE_REPORTS}; "
            f"delete it and download {OPENI_ARCHIVE_URL} again"
        )
    folder = path if kind == "xml_dir" else path.parent
    source = [f"openi {kind} {path}"]

    # Exclusions, in a fixed order: each dropped row is counted under its first reason.
    excluded: Counter[str] = Counter({"empty_text": 0})
    if mode == "chexpert_mesh" and exclude_unlabelled:
        excluded.update({"no_indexing": 0, "image_quality_unsatisfactory": 0, "no_mesh_terms": 0})
    kept: list[tuple[OpeniReport, str]] = []
    for r in reports:
        text = " ".join(t for t in (r.fields.get(f, "").strip() for f in text_fields) if t)
        if not text:
            excluded["empty_text"] += 1
            continue
        if mode == "chexpert_mesh" and exclude_unlabelled:
            reason = unlabelled_reason(r.mesh)
            if reason is not None:
                excluded[reason] += 1
                continue
        kept.append((r, text))

    if mode == "chexpert_mesh":
        rows = [chexpert_from_mesh(r.mesh) for r, _ in kept]
        label_names = CHEXPERT14
    else:
        gold_path, _ = _beside(cfg["gold_path"], folder, GOLD_NAME)
        gold_path = require_file(gold_path, "NegBio gold-label CSV",
                                 f"put {GOLD_NAME} there or set data.gold_path=/path/to/{GOLD_NAME}")
        gold = _read_gold(gold_path)
        source.append(f"labels {gold_path}")
        excluded["no_gold_label"] = sum(1 for r, _ in kept if r.id not in gold)
        kept = [(r, t) for r, t in kept if r.id in gold]
        rows = [gold[r.id] for r, _ in kept]
        label_names = NEGBIO14
    if not kept:
        raise DataError(f"{path}: no usable reports left after exclusions {dict(excluded)}; "
                        "check data.text_fields and the labels")

    ids = tuple(r.id for r, _ in kept)
    test_path, explicit = _beside(cfg["test_ids_path"], folder, TEST_IDS_NAME)
    if explicit or test_path.is_file():
        test_path = require_file(test_path, "test-id list",
                                 "put one CXR<uid> per line there or set data.test_ids_path=null")
        test_ids = _read_test_ids(test_path)
        n_in = sum(1 for i in ids if i in test_ids)
        logger.info("openi: test split = %s: %d of its %d ids are among the %d kept reports",
                    test_path, n_in, len(test_ids), len(ids))
        split = split_by_patient(ids, seed, val_fraction=val_fraction, test_patients=test_ids)
        source.append(f"test {test_path}")
    else:
        logger.info("openi: no %s beside the reports; seeded %.0f%% test split by patient (seed %d)",
                    TEST_IDS_NAME, 100 * test_fraction, seed)
        split = split_by_patient(ids, seed, val_fraction=val_fraction, test_fraction=test_fraction)
        source.append(f"test seeded {test_fraction:g} (no {TEST_IDS_NAME})")

    table = ReportTable(
        name="openi",
        ids=ids,
        texts=tuple(t for _, t in kept),
        labels=np.stack(rows).astype(np.float32),
        label_names=label_names,
        split=split,
        patient_ids=ids,  # one study per patient in Open-i
        excluded=dict(excluded),
        source="; ".join(source),
    )
    logger.info("openi: read %d reports, kept %d (%s labels); excluded %s; split %s",
                len(reports), len(table), mode, dict(excluded),
                {s: table.split.count(s) for s in ("train", "val", "test")})
    return table
