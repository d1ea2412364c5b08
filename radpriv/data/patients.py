"""The privacy unit: the patient, or the report where each report is its own patient.

A radiology dataset's people are its patients: MIMIC-CXR has several studies per subject_id,
CT-RATE several scans per patient. A guarantee per report protects a patient with k training
reports by group privacy only (about k·ε). At the patient unit DP-SGD samples, clips and counts
patients instead (radpriv/privacy/dp_step.py, docs/PRIVACY.md "Unit").

`privacy.unit=auto` (default) is `patient` whenever the source format names patients
(`ReportTable.patient_source`: MIMIC-CXR's subject_id, CT-RATE's volume names, a CSV's
`data.patient_column`) and `report` otherwise (Open-i, one study per patient; the ct_rate_text
CSV, whose AccessionNo names no patient). The choice depends on the format and the config only,
never on the data: a unit chosen because some patient has several reports would publish that
fact without noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from radpriv.data.table import ReportTable
from radpriv.errors import ConfigError

UNITS = ("patient", "report")
# reports of one patient in one logical step when privacy.max_reports_per_patient is null
DEFAULT_MAX_REPORTS_PER_PATIENT = 8


@dataclass(frozen=True)
class Unit:
    name: str  # patient | report
    why: str  # one line, for the log and privacy.json


def resolve_unit(setting, table: ReportTable) -> Unit:
    """`privacy.unit` (auto | patient | report) for this table."""
    value = "auto" if setting is None else str(setting).strip().lower()
    if value not in ("auto", *UNITS):
        raise ConfigError(f"privacy.unit={setting!r}: expected auto, patient or report")
    if value == "report":
        if table.patient_source:
            return Unit("report", f"privacy.unit=report: each report is protected; a patient with k training "
                                  f"reports ({table.name} names patients by {table.patient_source}) gets group "
                                  "privacy only, about k·ε")
        return Unit("report", f"privacy.unit=report: {table.name} names no patient, each report is its own")
    if value == "patient":
        if table.patient_ids is None:
            raise ConfigError(f"privacy.unit=patient: {table.name} has no patient ids (for a CSV, set "
                              "data.patient_column)")
        source = table.patient_source or "the report ids (each report its own patient unless ids repeat)"
        return Unit("patient", f"privacy.unit=patient: patients from {source}")
    if table.patient_source:
        return Unit("patient", f"{table.name} names patients by {table.patient_source}: each patient, with all "
                               "their training reports, is protected")
    return Unit("report", f"{table.name} names no patient, so each report is its own patient and is protected "
                          "(privacy.unit=patient with patient ids, e.g. data.patient_column, protects patients)")


@dataclass(frozen=True)
class PatientIndex:
    """The patients of one split: `members[p]` are the row indices of patient p, in row order;
    `patient_of[i]` is the patient of row i. Patients are numbered by first appearance."""

    members: tuple[np.ndarray, ...]
    patient_of: np.ndarray

    @classmethod
    def of(cls, table: ReportTable) -> PatientIndex:
        ids = table.patient_ids if table.patient_ids is not None else table.ids
        number: dict[str, int] = {}
        patient_of = np.array([number.setdefault(p, len(number)) for p in ids], dtype=np.int64)
        order = np.argsort(patient_of, kind="stable")
        bounds = np.flatnonzero(np.diff(patient_of[order])) + 1
        return cls(tuple(np.split(order, bounds)) if len(order) else (), patient_of)

    def __len__(self) -> int:
        return len(self.members)

    def sizes(self) -> np.ndarray:
        return np.array([len(m) for m in self.members], dtype=np.int64)


def privacy_unit(privacy, table: ReportTable) -> tuple[Unit, int]:
    """(unit, reports-per-patient cap) of the `privacy` config on this table, as every command
    resolves them. The cap is a function of the config alone, never of the data: null is
    min(8, privacy.max_physical_batch_size), so a patient's reports share one physical chunk."""
    unit = resolve_unit(privacy["unit"], table)
    physical = int(privacy.max_physical_batch_size)
    cap = privacy["max_reports_per_patient"]
    if cap is None:
        return unit, min(DEFAULT_MAX_REPORTS_PER_PATIENT, physical)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ConfigError(f"privacy.max_reports_per_patient={cap!r}: must be a whole number ≥ 1, or null")
    if unit.name == "patient" and cap > physical:
        raise ConfigError(f"privacy.max_reports_per_patient={cap} exceeds privacy.max_physical_batch_size="
                          f"{physical}: a patient's reports must fit one physical chunk")
    return unit, cap


def training_units(table: ReportTable, unit: Unit | str) -> int:
    """N of the privacy analysis: the training split's patients at the patient unit (counted as
    the DataModule's PatientIndex counts them), else its reports."""
    name = unit if isinstance(unit, str) else unit.name
    train = table.subset("train")
    return len(PatientIndex.of(train)) if name == "patient" else len(train)
