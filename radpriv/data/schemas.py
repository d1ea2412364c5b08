"""Label schemas, and the one table that turns Open-i MeSH terms into CheXpert-14 labels.

Label names and their order are part of a trained model's contract (they become the columns
of its output and `label_schema.json`), so they are fixed here once, as tuples.

The MeSH -> CheXpert mapping is a project decision, not a published standard
(`../shared/data/README.md`). It is kept as one visible table so that a reader can check it
against the README, and its positive counts on the real `indiana_reports.csv` are asserted
by `tests/test_data_openi.py`.
"""

from __future__ import annotations

import numpy as np

# The 14 CheXpert labels, in the order of the README's mapping table (MIMIC-CXR's schema;
# "No Finding" first). This is not the alphabetical order of MIMIC-CXR's label CSV: a
# MIMIC-CXR reader selects its columns by name.
CHEXPERT14: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

# NegBio's Open-i gold labels (`openi_gld_std14.csv`). Decision: 15 columns = the 14
# ChestX-ray14 findings named and ordered exactly as in the file, then "No Finding", which
# is read from the file's `normal` column. "No Finding" is kept because it is a real,
# frequent class (1,379 reports) and CheXpert14 carries it too, so both Open-i label modes
# describe normal reports the same way. (The name keeps "14" after the ChestX-ray14 set.)
NEGBIO_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NEGBIO_NORMAL_COLUMN = "normal"  # the gold file's column that becomes "No Finding"
NEGBIO14: tuple[str, ...] = NEGBIO_FINDINGS + ("No Finding",)

# CT-RATE's 18 abnormality labels, spelled and ordered as in its multi_abnormality_labels files.
CT_RATE18: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)

# ---------------------------------------------------------------------------------------
# MeSH (Open-i indexers' terms) -> CheXpert-14. THE mapping table: edit only here.
# Keys are CHEXPERT14 labels; values are first-level MeSH terms (the part of an entry
# before its first "/"). A label is positive when any of its terms occurs.
MESH_TO_CHEXPERT: dict[str, tuple[str, ...]] = {
    "No Finding": ("normal",),
    "Enlarged Cardiomediastinum": ("Mediastinum",),
    "Cardiomegaly": ("Cardiomegaly",),
    "Lung Lesion": ("Nodule", "Mass"),
    "Lung Opacity": (
        "Opacity", "Airspace Disease", "Density", "Infiltrate", "Consolidation",
        "Pneumonia", "Pulmonary Atelectasis", "Pulmonary Edema",
    ),
    "Edema": ("Pulmonary Edema", "Pulmonary Congestion"),
    "Consolidation": ("Consolidation",),
    "Pneumonia": ("Pneumonia",),
    "Atelectasis": ("Pulmonary Atelectasis",),
    "Pneumothorax": ("Pneumothorax",),
    "Pleural Effusion": ("Pleural Effusion",),
    "Pleural Other": ("Pulmonary Fibrosis", "Fibrosis"),
    "Fracture": ("Fractures, Bone",),
    "Support Devices": (
        "Catheters, Indwelling", "Surgical Instruments", "Implanted Medical Device",
        "Tube, Inserted", "Medical Device", "Stents", "Sutures",
    ),
}
# The one rule that needs a qualifier: (first-level term, qualifier) -> label.
# `Thickening/pleura/apex` is pleural thickening ("Pleural Other"); `Thickening/bronchi` is not.
MESH_QUALIFIED_TO_CHEXPERT: dict[tuple[str, str], str] = {
    ("Thickening", "pleura"): "Pleural Other",
}
# ---------------------------------------------------------------------------------------

# Lookups built once from the table above. Matching is case-insensitive (casefolded, with
# surrounding whitespace stripped): the real file is consistent, but hand-made or older
# exports are not always, and no two terms in the table differ only by case.
_TERM_TO_COLUMNS: dict[str, tuple[int, ...]] = {}
for _label, _terms in MESH_TO_CHEXPERT.items():
    for _term in _terms:
        _key = _term.casefold()
        _TERM_TO_COLUMNS[_key] = _TERM_TO_COLUMNS.get(_key, ()) + (CHEXPERT14.index(_label),)
_QUALIFIED_TO_COLUMN: dict[tuple[str, str], int] = {
    (t.casefold(), q.casefold()): CHEXPERT14.index(label)
    for (t, q), label in MESH_QUALIFIED_TO_CHEXPERT.items()
}
del _label, _terms, _term, _key


def mesh_entries(mesh_field: str) -> list[list[str]]:
    """Split a MeSH field (`Term/qualifier/...;Term2`) into entries of stripped parts.

    Empty entries (a trailing `;`) are dropped. Part 0 of each entry is the first-level term.
    """
    entries = []
    for entry in (mesh_field or "").split(";"):
        parts = [p.strip() for p in entry.split("/")]
        if parts and parts[0]:
            entries.append(parts)
    return entries


def chexpert_from_mesh(mesh_field: str) -> np.ndarray:
    """One CheXpert-14 label row (float32, 0/1, CHEXPERT14 order) from an Open-i MeSH field.

    Each `;`-separated entry is matched on its first-level term (before the first `/`),
    case-insensitively, against MESH_TO_CHEXPERT; MESH_QUALIFIED_TO_CHEXPERT adds labels
    for a first-level term with a given qualifier (any later `/` part).
    """
    row = np.zeros(len(CHEXPERT14), dtype=np.float32)
    for parts in mesh_entries(mesh_field):
        term = parts[0].casefold()
        for j in _TERM_TO_COLUMNS.get(term, ()):
            row[j] = 1.0
        for qualifier in parts[1:]:
            j = _QUALIFIED_TO_COLUMN.get((term, qualifier.casefold()))
            if j is not None:
                row[j] = 1.0
    return row
