"""`data=csv`: any CSV with named text and label columns; optional id, patient and split columns.

Every report here is fabricated by tests/helpers/fabricate_csv.py (invented sentences); no real
report text.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from radpriv.data.generic_csv import load_generic_csv
from radpriv.errors import DataError
from tests.helpers.fabricate_csv import FULL, LABELS, fabricate_rows, write_csv


def load(path: Path, **cfg):
    return load_generic_csv({"path": str(path), **cfg}, seed=0)


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("csv") / "reports.csv")


def test_columns_split_and_text(csv_path, tmp_path):
    rows = fabricate_rows()
    t = load(csv_path, **FULL)
    assert t.name == "csv" and t.label_names == tuple(LABELS) and len(t) == 36
    assert t.ids == tuple(r[0] for r in rows) and t.patient_ids == tuple(r[1] for r in rows)
    assert t.split == tuple(["train"] * 24 + ["val"] * 6 + ["test"] * 6)
    assert t.texts[3] == f"{rows[3][4]} {rows[3][5]}" and "made up history" not in t.texts[3]
    gz = write_csv(tmp_path / "reports.csv.gz")
    assert load(gz, **FULL).fingerprint() == t.fingerprint()
    # one text column, label columns as one comma-separated string, no id column
    t = load(csv_path, text_column="body", label_columns="Device,Nodule", split_column="part")
    assert t.label_names == ("Device", "Nodule") and t.ids[0] == "line2" and t.texts[0] == rows[0][4]


@pytest.mark.parametrize("policy, value", [("ignore", -1.0), ("zeros", 0.0), ("ones", 1.0)])
def test_uncertainty_policies(csv_path, policy, value):
    rows = fabricate_rows()
    t = load(csv_path, **FULL, uncertain=policy)
    for k, row in enumerate(rows):
        for j, cell in enumerate(row[6:9]):
            expected = {"1": 1.0, "0": 0.0, "": 0.0, "-1": value}[cell]
            assert t.labels[k, j] == expected


def test_seeded_split_by_patient_and_drawn_validation(csv_path, tmp_path):
    t = load(csv_path, text_column="body", label_columns=LABELS, patient_column="mrn")
    per: dict[str, set] = {}
    for p, s in zip(t.patient_ids, t.split):
        per.setdefault(p, set()).add(s)
    assert all(len(v) == 1 for v in per.values()) and set(t.split) == {"train", "val", "test"}
    assert sum(1 for v in per.values() if v == {"test"}) == round(0.2 * 18)
    assert load(csv_path, text_column="body", label_columns=LABELS, patient_column="mrn").split == t.split
    # a split column without validation rows: validation is drawn from its train rows' patients
    rows = [r[:2] + ["train" if r[2] == "Validate" else r[2]] + r[3:] for r in fabricate_rows()]
    t = load(write_csv(tmp_path / "noval.csv", rows), **FULL)
    assert t.split.count("test") == 6 and t.split.count("val") > 0 and "no validation rows" in t.source


def _err(path: Path, **cfg) -> str:
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(DataError) as e:
        load(path, **cfg)
    msg = str(e.value)
    assert "\n" not in msg and "fabricated marker" not in msg and "invented" not in msg
    assert (path.read_bytes() if path.is_file() else None) == before
    return msg


def test_bad_input(tmp_path, csv_path):
    assert "data.label_columns is required" in _err(csv_path, text_column="body")
    msg = _err(csv_path, text_column="body", label_columns=["Nodule", "Mass"])
    assert str(csv_path) in msg and "line 1" in msg and "Mass" in msg
    assert "'text'" in _err(csv_path, label_columns=LABELS)  # the default text column is absent
    assert str(tmp_path / "absent.csv") in _err(tmp_path / "absent.csv", **FULL)
    rows = fabricate_rows()
    rows[4][7] = "yes"
    p = write_csv(tmp_path / "bad_value.csv", rows)
    msg = _err(p, **FULL)
    assert str(p) in msg and "line 6" in msg and "'Effusion'" in msg and "'yes'" in msg
    rows = fabricate_rows()
    rows[7][2] = "holdout"
    p = write_csv(tmp_path / "bad_split.csv", rows)
    msg = _err(p, **FULL)
    assert str(p) in msg and "line 9" in msg and "'part'" in msg
    rows = fabricate_rows()
    rows[9][0] = rows[2][0]
    p = write_csv(tmp_path / "dup.csv", rows)
    msg = _err(p, **FULL)
    assert "duplicate report_id" in msg and "line 4" in msg and "line 11" in msg
    rows = fabricate_rows()
    rows[5][1] = " "
    p = write_csv(tmp_path / "nopatient.csv", rows)
    assert "line 7" in _err(p, **FULL) and "'mrn'" in _err(p, **FULL)
    p = write_csv(tmp_path / "latin1.csv")
    p.write_bytes(p.read_bytes().replace(b"fabricated marker sentence 3", b"fabricated \xe9 sentence 3"))
    msg = _err(p, **FULL)
    assert str(p) in msg and "line 5" in msg and "UTF-8" in msg
    assert "data.uncertain" in _err(csv_path, **FULL, uncertain="half")


def test_empty_texts_are_counted(tmp_path):
    rows = fabricate_rows()
    for k in (1, 10):
        rows[k][4] = rows[k][5] = ""
    t = load(write_csv(tmp_path / "e.csv", rows), **FULL)
    assert t.excluded == {"empty_text": 2} and len(t) == 34 and "R001" not in t.ids


def test_dp_training_on_a_csv(csv_path, tracking_uri, capsys):
    from radpriv.cli import run

    code = run(["train", "model=tiny_bert", "data=csv", f"data.path={csv_path}", "data.text_columns=[body,conclusion]",
                "data.label_columns=[Nodule,Effusion,Device]", "data.patient_column=mrn", "data.split_column=part",
                "trainer.max_epochs=1", "trainer.progress_bar=false", "privacy.expected_batch_size=4",
                "privacy.max_physical_batch_size=4", "data.max_length=32", "privacy.epsilon=5",
                "privacy.delta=1e-3", "tracking.log_model=false"])
    assert code == 0
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    m = mlflow.MlflowClient(tracking_uri).get_run(summary["run_id"]).data.metrics
    assert "test/f1_weighted" in m and "test/f1/Device" in m and 0 < m["privacy/epsilon"] <= 5
    assert "fabricated marker" not in out.out + out.err and "invented" not in out.out + out.err
