"""`data=ct_rate`: the native CT-RATE layout (report CSVs + multi_abnormality_labels CSVs).

Every report here is fabricated by tests/helpers/fabricate_ct_rate.py (invented sentences); no
real report text.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import numpy as np
import pytest

from radpriv.data.ct_rate import load_ct_rate, parse_volume_name
from radpriv.data.schemas import CT_RATE18
from radpriv.errors import DataError
from tests.helpers.fabricate_ct_rate import rewrite_csv, write_ct_rate


def load(root: Path, **cfg):
    return load_ct_rate({"path": str(root), **cfg}, seed=0)


@pytest.fixture(scope="module")
def ct_root(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("ct_rate")
    return root, write_ct_rate(root)



@pytest.fixture
def radpriv_logs(caplog):
    caplog.set_level(logging.INFO, logger="radpriv")
    return caplog


def test_volume_names():
    v = parse_volume_name("train_12_a_2.nii.gz")
    assert (v.patient, v.scan, v.reconstruction) == ("train_12", "train_12_a", 2)
    assert parse_volume_name("valid_3_b_1").scan == "valid_3_b"
    assert parse_volume_name("train_12.nii.gz") is None


def test_join_dedup_text_and_labels(ct_root):
    root, volumes = ct_root
    t = load(root)
    scans = {v["scan"]: v for v in volumes}
    assert t.name == "ct_rate" and t.label_names == CT_RATE18
    assert sorted(t.ids) == sorted(scans) and len(set(t.ids)) == len(t.ids)
    assert t.excluded["duplicate_reconstruction"] == len(volumes) - len(scans) > 0
    for i, text, lab, p in zip(t.ids, t.texts, t.labels, t.patient_ids):
        v = scans[i]
        assert text == f"{v['findings']} {v['impression']}".strip()  # Findings_EN + Impressions_EN
        assert "made up history" not in text
        np.testing.assert_array_equal(lab, np.array(v["labels"], dtype=np.float32))
        assert p == v["patient"]
    # the same table whether data.path is the CT-RATE folder or its dataset/ folder
    assert load(root / "dataset").fingerprint() == t.fingerprint()
    t2 = load(root, text_fields=["Impressions_EN"])
    assert t2.excluded["empty_text"] == sum(1 for v in scans.values() if not v["impression"]) > 0


def _patients_per_split(t) -> dict[str, set]:
    out: dict[str, set] = {}
    for p, s in zip(t.patient_ids, t.split):
        out.setdefault(p, set()).add(s)
    return out


def test_patient_split_policies(tmp_path, ct_root):
    root, volumes = ct_root
    t = load(root)  # official validation -> test; val drawn from train patients
    assert all(len(s) == 1 for s in _patients_per_split(t).values())
    assert all((s == "test") == i.startswith("valid_") for i, s in zip(t.ids, t.split))
    val_patients = {p for p, s in zip(t.patient_ids, t.split) if s == "val"}
    assert len(val_patients) == round(0.1 * 12) == 1 and "official validation files" in t.source
    assert load(root).split == t.split  # seeded: the same split again
    t = load(root, official_validation="val", test_fraction=0.25)
    assert all((s == "val") == i.startswith("valid_") for i, s in zip(t.ids, t.split))
    assert len({p for p, s in zip(t.patient_ids, t.split) if s == "test"}) == 3
    assert all(len(s) == 1 for s in _patients_per_split(t).values())
    write_ct_rate(tmp_path / "trainonly", volumes, valid=False)
    t = load(tmp_path / "trainonly")
    assert set(t.split) == {"train", "val", "test"} and not any(i.startswith("valid_") for i in t.ids)
    assert "no validation files" in t.source
    assert all(len(s) == 1 for s in _patients_per_split(t).values())


# ----------------------------------------------------------------------------- bad input

def _err(root: Path, **cfg) -> str:
    before = {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.is_dir() else {}
    with pytest.raises(DataError) as e:
        load(root, **cfg)
    msg = str(e.value)
    assert "\n" not in msg and "fabricated marker" not in msg and "invented" not in msg
    assert {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # nothing written
    return msg


def test_missing_folder_files_and_columns(tmp_path, ct_root):
    _, volumes = ct_root
    assert str(tmp_path / "absent") in _err(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    assert "radiology_text_reports" in _err(tmp_path / "empty")
    root = tmp_path / "c"
    write_ct_rate(root, volumes)
    labels = root / "dataset" / "multi_abnormality_labels" / "valid_predicted_labels.csv"
    labels.unlink()
    msg = _err(root)
    assert str(labels) in msg and "validation_reports.csv is there" in msg
    write_ct_rate(root, volumes)
    (root / "dataset" / "multi_abnormality_labels" / "train_predicted_labels.csv").unlink()
    assert "train_predicted_labels.csv" in _err(root)
    write_ct_rate(root, volumes)
    reports = root / "dataset" / "radiology_text_reports" / "train_reports.csv"
    rewrite_csv(reports, lambda rows: [r.pop() for r in rows])  # drop Impressions_EN
    msg = _err(root)
    assert str(reports) in msg and "line 1" in msg and "Impressions_EN" in msg


def test_bad_values_names_duplicates_and_encoding(tmp_path, ct_root):
    _, volumes = ct_root
    root = tmp_path / "c"
    labels = root / "dataset" / "multi_abnormality_labels" / "train_predicted_labels.csv"
    reports = root / "dataset" / "radiology_text_reports" / "train_reports.csv"
    write_ct_rate(root, volumes)
    rewrite_csv(labels, lambda rows: rows[4].__setitem__(3, "0.7"))
    msg = _err(root)
    assert str(labels) in msg and "line 5" in msg and repr(CT_RATE18[2]) in msg and "'0.7'" in msg
    write_ct_rate(root, volumes)
    rewrite_csv(reports, lambda rows: rows[2].__setitem__(0, "scan7.nii.gz"))
    msg = _err(root)
    assert str(reports) in msg and "line 3" in msg and "'VolumeName'" in msg
    write_ct_rate(root, volumes)
    rewrite_csv(reports, lambda rows: rows.append(list(rows[1])))
    msg = _err(root)
    assert str(reports) in msg and "duplicate VolumeName" in msg and "line 2" in msg
    write_ct_rate(root, volumes)
    reports.write_bytes(reports.read_bytes().replace(b"fabricated marker", b"fabricated \xe9arker", 1))
    msg = _err(root)
    assert str(reports) in msg and "line 2" in msg and "UTF-8" in msg


def test_label_rows_without_reports_and_reports_without_labels(tmp_path, ct_root, radpriv_logs):
    _, volumes = ct_root
    root = tmp_path / "c"
    write_ct_rate(root, volumes)
    reports = root / "dataset" / "radiology_text_reports" / "train_reports.csv"
    labels = root / "dataset" / "multi_abnormality_labels" / "train_predicted_labels.csv"
    rewrite_csv(reports, lambda rows: rows.pop(3))
    msg = _err(root)
    assert str(labels) in msg and "1 of" in msg and "have no report" in msg
    t = load(root, max_missing_reports_fraction=0.1)
    assert any("have no report" in r.getMessage() for r in radpriv_logs.records if r.levelno == logging.WARNING)
    n = len(t)
    write_ct_rate(root, volumes)
    rewrite_csv(labels, lambda rows: rows.pop(3))
    t = load(root)
    assert t.excluded["no_label"] == 1 and len(t) <= n + 1


def test_empty_texts_are_counted(tmp_path, ct_root):
    _, volumes = ct_root
    vols = [dict(v) for v in volumes]
    for v in vols:
        if v["scan"] == "train_2_a":
            v["findings"] = v["impression"] = "  "
    write_ct_rate(tmp_path / "c", vols)
    t = load(tmp_path / "c")
    assert t.excluded["empty_text"] == 1 and "train_2_a" not in t.ids


def test_dp_training_on_the_ct_rate_tree(ct_root, tracking_uri, capsys):
    from radpriv.cli import run

    root, _ = ct_root
    code = run(["train", "model=tiny_bert", "data=ct_rate", f"data.path={root}", "trainer.max_epochs=1",
                "trainer.progress_bar=false", "privacy.expected_batch_size=4",
                "privacy.max_physical_batch_size=4", "data.max_length=32", "privacy.epsilon=5",
                "privacy.delta=1e-3", "tracking.log_model=false", "data.val_fraction=0.2"])
    assert code == 0
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    m = mlflow.MlflowClient(tracking_uri).get_run(summary["run_id"]).data.metrics
    assert "test/f1_weighted" in m and 0 < m["privacy/epsilon"] <= 5
    assert "fabricated marker" not in out.out + out.err and "invented" not in out.out + out.err
