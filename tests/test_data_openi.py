"""Open-i reader: the MeSH mapping counts on the real file, exclusions, splits, XML input."""

from __future__ import annotations

import csv
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest

from radpriv.data.openi import load_openi
from radpriv.data.schemas import CHEXPERT14, MESH_TO_CHEXPERT, NEGBIO14, chexpert_from_mesh
from radpriv.data.sources import load_table

# README "MeSH -> the 14 CheXpert labels": positives over all 3,851 rows of indiana_reports.csv.
README_POSITIVES = {
    "No Finding": 1379, "Enlarged Cardiomediastinum": 26, "Cardiomegaly": 345, "Lung Lesion": 119,
    "Lung Opacity": 761, "Edema": 92, "Consolidation": 30, "Pneumonia": 40, "Atelectasis": 315,
    "Pneumothorax": 22, "Pleural Effusion": 149, "Pleural Other": 61, "Fracture": 83,
    "Support Devices": 326,
}


def _file(real_data_dir: Path, name: str) -> Path:
    p = real_data_dir / "openi" / name
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return p


@pytest.fixture(scope="module")
def reports_csv(real_data_dir: Path) -> Path:
    return _file(real_data_dir, "indiana_reports.csv")


@pytest.fixture(scope="module")
def openi(reports_csv: Path):
    return load_openi({"name": "openi", "path": str(reports_csv)}, seed=0)


# ----------------------------------------------------------------------------- mapping

def test_mapping_table_covers_exactly_the_schema():
    assert tuple(MESH_TO_CHEXPERT) == CHEXPERT14
    assert len(CHEXPERT14) == 14 and len(NEGBIO14) == 15


def test_chexpert_from_mesh_rules():
    mesh = "Cardiomegaly/borderline;pulmonary atelectasis/base ;Thickening/pleura/apex"
    row = dict(zip(CHEXPERT14, chexpert_from_mesh(mesh)))
    assert row["Cardiomegaly"] == row["Atelectasis"] == row["Lung Opacity"] == row["Pleural Other"] == 1
    assert sum(row.values()) == 4
    # Thickening without a pleura qualifier, and qualifiers that merely contain a label term, do not count.
    assert chexpert_from_mesh("Thickening/bronchi;Lung/hypoinflation;Markings/Cardiomegaly").sum() == 0
    assert chexpert_from_mesh("").sum() == 0


def test_readme_counts_over_all_rows(reports_csv: Path):
    with reports_csv.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3851
    labels = np.stack([chexpert_from_mesh(r["MeSH"]) for r in rows])
    assert dict(zip(CHEXPERT14, labels.sum(0).astype(int).tolist())) == README_POSITIVES


# ----------------------------------------------------------------------------- real table

def test_exclusions_counted(openi):
    # 25 without findings and impression; "only No Indexing" 92; "only Technical Quality..." 6
    # (the README's 84 counts every row carrying that term, most with other, usable terms).
    assert openi.excluded == {"empty_text": 25, "no_indexing": 92,
                              "image_quality_unsatisfactory": 6, "no_mesh_terms": 0}
    assert len(openi) == 3851 - 25 - 92 - 6
    assert openi.label_names == CHEXPERT14
    assert openi.labels.dtype == np.float32 and set(np.unique(openi.labels)) <= {0.0, 1.0}
    assert all(t == t.strip() and t for t in openi.texts)
    assert openi.ids[0] == "CXR1"


def test_kept_rows_positives_match_full_file_minus_exclusions(openi, reports_csv: Path):
    with reports_csv.open(encoding="utf-8", newline="") as f:
        by_id = {f"CXR{r['uid']}": r["MeSH"] for r in csv.DictReader(f)}
    expected = np.stack([chexpert_from_mesh(by_id[i]) for i in openi.ids]).sum(0)
    np.testing.assert_array_equal(openi.labels.sum(0), expected)
    # The 25 empty-text rows are all `normal`: only No Finding loses positives.
    assert int(openi.labels[:, 0].sum()) == README_POSITIVES["No Finding"] - 25


def test_negbio_test_ids_are_the_test_split(openi, real_data_dir: Path):
    test_ids = set(_file(real_data_dir, "openi-testset.txt").read_text().split())
    in_test = {i for i, s in zip(openi.ids, openi.split) if s == "test"}
    assert in_test == test_ids & set(openi.ids)
    assert "openi-testset.txt" in openi.source
    counts = {s: openi.split.count(s) for s in ("train", "val", "test")}
    assert counts["val"] == round(0.1 * len(openi))


def test_patients_never_in_two_splits_and_seeded(openi, reports_csv: Path):
    assert openi.patient_ids == openi.ids
    seen: dict[str, str] = {}
    for p, s in zip(openi.patient_ids, openi.split):
        assert seen.setdefault(p, s) == s
    again = load_openi({"name": "openi", "path": str(reports_csv)}, seed=0)
    assert again.split == openi.split and again.fingerprint() == openi.fingerprint()
    other = load_openi({"name": "openi", "path": str(reports_csv)}, seed=1)
    assert other.split != openi.split
    # the published test split does not move with the seed
    assert {i for i, s in zip(other.ids, other.split) if s == "test"} == \
        {i for i, s in zip(openi.ids, openi.split) if s == "test"}


def test_negbio_labels(real_data_dir: Path, reports_csv: Path):
    _file(real_data_dir, "openi_gld_std14.csv")
    t = load_table({"name": "openi", "path": str(reports_csv), "labels": "negbio"}, seed=0)
    assert t.label_names == NEGBIO14
    assert t.excluded == {"empty_text": 25, "no_gold_label": 0}
    assert len(t) == 3851 - 25
    assert int(t.labels[:, NEGBIO14.index("Cardiomegaly")].sum()) > 0


def test_exclusions_logged_as_counts_only(reports_csv: Path, caplog):
    with caplog.at_level(logging.INFO, logger="radpriv.data.openi"):
        t = load_openi({"name": "openi", "path": str(reports_csv)}, seed=0)
    text = caplog.text
    assert "'empty_text': 25" in text and "'no_indexing': 92" in text
    assert t.texts[0][:40] not in text


def test_config_file_loads_real_data(reports_csv: Path, monkeypatch):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "radpriv" / "conf" / "data" / "openi.yaml")
    assert cfg.max_length == 128 and cfg.path is None
    monkeypatch.setenv("RADPRIV_DATA_DIR", str(reports_csv.parent.parent))
    t = load_table(cfg, seed=0)
    assert len(t) == 3728 and t.source.startswith(f"openi csv {reports_csv}")


def test_unlabelled_kept_when_asked(reports_csv: Path):
    t = load_openi({"name": "openi", "path": str(reports_csv), "exclude_unlabelled": False}, seed=0)
    assert t.excluded == {"empty_text": 25}
    assert len(t) == 3851 - 25


# ----------------------------------------------------------------------------- XML input (synthetic)

SYNTHETIC = [  # uid, findings, impression, major MeSH terms
    ("7", "Heart is mildly enlarged. Lungs are clear.", "Mild cardiomegaly.", ["Cardiomegaly/mild"]),
    ("8", "No acute abnormality.", "Normal chest.", ["normal"]),
    ("12", "Small left effusion. XXXX catheter in place.", "Effusion.",
     ["Pleural Effusion/left/small", "Catheters, Indwelling"]),
    ("20", "", "", ["normal"]),
    ("21", "Film is underpenetrated.", "Limited study.", ["Technical Quality of Image Unsatisfactory "]),
]


def _xml(uid: str, findings: str, impression: str, mesh: list[str]) -> str:
    majors = "".join(f"<major>{m}</major>" for m in mesh)
    return (
        '<?xml version="1.0" encoding="utf-8"?><eCitation><meta type="rr"/>'
        f'<uId id="CXR{uid}"/><MedlineCitation><Article><Abstract>'
        '<AbstractText Label="COMPARISON">None.</AbstractText>'
        '<AbstractText Label="INDICATION">Synthetic indication.</AbstractText>'
        f'<AbstractText Label="FINDINGS">{findings}</AbstractText>'
        f'<AbstractText Label="IMPRESSION">{impression}</AbstractText>'
        f'</Abstract></Article></MedlineCitation><MeSH>{majors}<automatic>Lung</automatic></MeSH></eCitation>'
    )


def write_xml_folder(root: Path) -> Path:
    folder = root / "ecgen-radiology"
    folder.mkdir(parents=True)
    for uid, f, i, m in reversed(SYNTHETIC):
        (folder / f"{uid}.xml").write_text(_xml(uid, f, i, m), encoding="utf-8")
    return folder


def write_csv(path: Path) -> Path:
    with path.open("w", encoding="utf-8", newline="") as out:
        w = csv.writer(out)
        w.writerow(["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"])
        for uid, f, i, m in SYNTHETIC:
            w.writerow([uid, ";".join(m), "", "Xray", "Synthetic indication.", "None.", f, i])
    return path


def _synthetic_equal(a, b):
    assert a.ids == b.ids == ("CXR7", "CXR8", "CXR12")
    assert a.texts == b.texts
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.split == b.split
    assert a.excluded == b.excluded == {"empty_text": 1, "no_indexing": 0,
                                        "image_quality_unsatisfactory": 1, "no_mesh_terms": 0}


def test_xml_folder_matches_csv(tmp_path: Path):
    cfg = {"name": "openi", "val_fraction": 0.0, "test_fraction": 0.34}
    from_csv = load_openi({**cfg, "path": str(write_csv(tmp_path / "r.csv"))}, seed=3)
    from_xml = load_openi({**cfg, "path": str(write_xml_folder(tmp_path / "x").parent)}, seed=3)
    _synthetic_equal(from_csv, from_xml)
    assert from_xml.texts[0] == "Heart is mildly enlarged. Lungs are clear. Mild cardiomegaly."
    row = dict(zip(CHEXPERT14, from_xml.labels[2]))
    assert row["Pleural Effusion"] == row["Support Devices"] == 1
    assert "seeded" in from_xml.source and from_xml.split.count("test") == 1


def test_tgz_archive_and_text_fields(tmp_path: Path):
    folder = write_xml_folder(tmp_path / "x")
    archive = tmp_path / "NLMCXR_reports.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="ecgen-radiology")
    cfg = {"name": "openi", "val_fraction": 0.0, "test_fraction": 0.34}
    from_tgz = load_openi({**cfg, "path": str(archive)}, seed=3)
    from_xml = load_openi({**cfg, "path": str(folder)}, seed=3)
    _synthetic_equal(from_tgz, from_xml)
    t = load_openi({**cfg, "path": str(archive), "text_fields": ["indication", "impression"]}, seed=3)
    assert t.texts[1] == "Synthetic indication. Normal chest."
    assert t.excluded["empty_text"] == 0
