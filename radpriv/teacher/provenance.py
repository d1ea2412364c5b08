"""The provenance file beside a teacher-labelled CSV, and the guarantee a student inherits.

`radpriv label` / `radpriv pate` write `<output>.provenance.json` next to the labelled CSV: who
labelled it (the teacher reference, or the PATE ensemble), the teacher's privacy facts, the
thresholds and label names, the date, the number of reports and the CSV's sha256 — never a word
of report text. That file is local, like the CSV. What may be *published* (an MLflow artifact,
privacy.json) is `public_view(record)`: a whitelist of data-independent fields; the counts and
the unkeyed sha256 of the CSV (which holds the student's training texts) are exact functions of
private reports and stay out.

A student trained with `radpriv train data=csv data.path=<labelled csv>` finds that file beside
its CSV (or takes `data.provenance=<file>`), logs its public view as the artifact
`teacher_provenance.json` and states in its privacy.json two guarantees for two different sets
of reports:
- its own DP-SGD ε for the reports it trains on (privacy_report, unchanged), and
- for the reports the *teacher* was trained on: the teacher's ε when the teacher is DP (the
  labels and everything trained on them are post-processing of the teacher), the PATE ε of the
  noisy vote, or — loudly — "NOT PROTECTED" when the teacher was trained without DP or its
  privacy is unknown. Unknown is never reported as protected.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from radpriv.errors import DataError

log = logging.getLogger(__name__)

FORMAT = "radpriv-teacher-provenance"
VERSION = 1
SUFFIX = ".provenance.json"
ARTIFACT = "teacher_provenance.json"
NOT_PROTECTED = "NOT PROTECTED"

# What a provenance record may publish (public_view). A whitelist, so that a field added to the
# record later stays local until someone decides it is public.
PUBLIC_FIELDS = ("format", "version", "mode", "label_source", "labels", "teacher", "teacher_resolved",
                 "teacher_encoder", "teacher_guarantee", "created", "pate")
PUBLIC_TEACHER_FIELDS = ("kind", "k", "teacher_model", "expert_data", "parent_run_id", "teacher_runs")
PUBLIC_GUARANTEE_FIELDS = ("protected", "epsilon", "delta", "unit", "mechanism", "statement")
# PATE's accounting: functions of σ, k, L, Q (the unlabelled queries), δ and the unit (chosen by the
# data's format and the config), nothing of the expert data
PUBLIC_PATE_FIELDS = ("k", "sigma", "n_labels", "n_queries", "delta", "sensitivity", "noise_multiplier", "mu",
                      "epsilon", "epsilon_pld", "epsilon_rdp", "epsilon_exact", "relation", "unit",
                      "neighbouring", "bound", "noise_seeded", "prob_columns")


def provenance_path(output: Path) -> Path:
    """`labels.csv` → `labels.csv.provenance.json` (beside it, found by the student run)."""
    output = Path(output)
    return output.with_name(output.name + SUFFIX)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def single_teacher_guarantee(facts: Mapping) -> dict:
    """What labels from one teacher cost the teacher's training reports (see module docstring)."""
    eps = facts.get("epsilon")
    if facts.get("private") is True and eps is not None and float(eps) < float("inf"):
        delta = facts.get("delta")
        # the teacher's own unit (its privacy facts); facts from before the patient unit: report
        unit = "patient" if facts.get("unit") == "patient" else "report"
        each = "each patient (with all their reports)" if unit == "patient" else "each report"
        return {
            "protected": True, "epsilon": float(eps), "delta": None if delta is None else float(delta),
            "unit": unit, "mechanism": "DP teacher; labels are post-processing of the teacher",
            "statement": (f"({float(eps):.4g}, {float(delta or 0):.3g})-DP for {each} of the teacher's "
                          "training split: the teacher is DP, so its labels and any model trained on "
                          "them are post-processing; the teacher's validation split (its thresholds) "
                          "is released as usual"),
        }
    why = ("the teacher was trained without differential privacy" if facts.get("private") is False
           else "the teacher's privacy is unknown (no privacy facts recorded with it)")
    return {
        "protected": False, "epsilon": None, "delta": None, "mechanism": "non-private teacher",
        "statement": (f"{NOT_PROTECTED}: {why}; its labels, and any model trained on them, can reveal "
                      "the reports it was trained on"),
    }


def build(*, mode: str, teacher: object, labels, guarantee: Mapping, output: Path, n_reports: int,
          n_labelled: int, text_column: str = "text", id_column: str = "id", **extra) -> dict:
    """The provenance record for an output CSV that has just been written."""
    return {
        "format": FORMAT, "version": VERSION, "mode": mode, "teacher": teacher,
        "labels": list(labels), "label_source": "teacher" if mode == "teacher" else "pate",
        "output": Path(output).name, "output_sha256": file_sha256(output),
        "text_column": text_column, "id_column": id_column,
        "n_reports": int(n_reports), "n_labelled": int(n_labelled), "created": now_utc(),
        "teacher_guarantee": dict(guarantee), **extra,
    }


def _pick(mapping: Mapping, fields) -> dict:
    return {k: mapping[k] for k in fields if k in mapping}


def public_view(record: Mapping) -> dict:
    """The part of a provenance record that may be published: whitelisted, data-independent fields.

    Left out: `output_sha256` (an unkeyed hash of a CSV holding the student's training texts:
    anyone who can guess the CSV can confirm it), `n_reports`/`n_labelled` (exact counts of that
    CSV), the teacher's thresholds and everything not listed in PUBLIC_FIELDS. A PATE teacher is
    reduced to its kind, k, model, dataset name and run references.
    """
    view = _pick(record, PUBLIC_FIELDS)
    if isinstance(view.get("teacher"), Mapping):
        view["teacher"] = _pick(view["teacher"], PUBLIC_TEACHER_FIELDS)
    if isinstance(view.get("teacher_guarantee"), Mapping):
        view["teacher_guarantee"] = _pick(view["teacher_guarantee"], PUBLIC_GUARANTEE_FIELDS)
    if isinstance(view.get("pate"), Mapping):
        view["pate"] = _pick(view["pate"], PUBLIC_PATE_FIELDS)
    return view


def write(record: Mapping, output: Path) -> Path:
    path = provenance_path(output)
    path.write_text(json.dumps(record, indent=2, default=float))
    return path


def load(path: Path) -> dict:
    """Read and check a provenance file; a DataError (one line) when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.provenance={path}: file not found; give the .provenance.json that "
                        "`radpriv label` / `radpriv pate` wrote beside the labelled CSV")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a JSON provenance file ({type(e).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise DataError(f"{path}: not a radpriv teacher provenance file (format {FORMAT!r} expected)")
    g = record.get("teacher_guarantee")
    if not isinstance(g, dict) or "protected" not in g or not isinstance(record.get("labels"), list):
        raise DataError(f"{path}: provenance file lacks teacher_guarantee/labels; relabel with radpriv label")
    return record


def resolve(data_cfg: Mapping) -> Path | None:
    """The provenance file of a `data=csv` config: `data.provenance`, else `<data.path>.provenance.json`
    when it exists; None for other datasets or when there is none."""
    if not isinstance(data_cfg, Mapping) or data_cfg.get("name") != "csv":
        return None
    given = data_cfg.get("provenance")
    if given is not None and str(given).strip():
        return Path(str(given)).expanduser()
    if not data_cfg.get("path"):
        return None
    beside = provenance_path(Path(str(data_cfg["path"])).expanduser())
    return beside if beside.is_file() else None


def check_against_data(record: Mapping, path: Path, label_columns, data_path: Path) -> None:
    """The student's label columns must be the teacher's; a changed CSV is a warning (e.g. expert-
    labelled validation/test rows appended). The warning stays local: whether the CSV was edited
    is a bit about the student's training data, so privacy.json does not publish it."""
    labels = list(record["labels"])
    if list(label_columns) != labels:
        raise DataError(f"{path}: the teacher's labels {labels} differ from data.label_columns "
                        f"{list(label_columns)}; train on the teacher's label schema (leave "
                        "data.label_columns unset to take it from the provenance file)")
    if record.get("output_sha256") and file_sha256(data_path) != record["output_sha256"]:
        log.warning("teacher provenance %s: %s is not byte-for-byte the file the teacher wrote (rows "
                    "added or edited); the teacher guarantee covers only the teacher's labels", path.name,
                    Path(data_path).name)


def teacher_section(record: Mapping, path: Path) -> dict:
    """privacy.json `teacher`: the second guarantee of a student trained on teacher labels."""
    g = dict(record["teacher_guarantee"])
    return {  # privacy.json is published: the teacher as public_view has it
        "provenance_file": Path(path).name, "mode": record.get("mode"), "teacher": public_view(record).get("teacher"),
        "protected": bool(g.get("protected")), "epsilon": g.get("epsilon"), "delta": g.get("delta"),
        "unit": g.get("unit"), "mechanism": g.get("mechanism"), "guarantee": g.get("statement"),
        "labelled_on": record.get("created"),
    }


def add_teacher_guarantee(privacy: dict, data_cfg: Mapping) -> Path | None:
    """Add `teacher` and `guarantees` (student's and teacher's reports) to a run's privacy.json
    dict when its data carry a teacher provenance file; returns that file (to log), else None."""
    path = resolve(data_cfg)
    if path is None:
        return None
    record = load(path)
    section = teacher_section(record, path)
    privacy["teacher"] = section
    privacy["guarantees"] = {
        "student_training_reports": privacy.get("guarantee"),
        "teacher_training_reports": section["guarantee"],
    }
    if not section["protected"]:
        log.warning("teacher labels: the teacher's training reports are %s (%s)", NOT_PROTECTED,
                    section["guarantee"])
    return path
