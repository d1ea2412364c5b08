"""`radpriv label` + a student trained on its labels: the round trip, the two guarantees, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest

from radpriv.cli import run
from radpriv.data.schemas import CT_RATE18
from radpriv.teacher import provenance
from tests.helpers.cli import TINY, error_lines
from tests.helpers.store import module_store

TINY1 = [o for o in TINY if not o.startswith("trainer.max_epochs")] + ["trainer.max_epochs=1"]


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def write_unlabelled(path: Path, texts: list[str], extra: dict[str, list[str]] | None = None) -> Path:
    extra = extra or {}
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["AccessionNo", "report_text", *extra])
        for i, t in enumerate(texts):
            w.writerow([f"u_{i}", t, *(v[i] for v in extra.values())])
    return path


@pytest.fixture(scope="module")
def teacher_store(tmp_path_factory) -> tuple[str, str, Path]:
    """One tiny non-private teacher for the module: (tracking URI, run id, its data folder)."""
    import io
    import sys

    with module_store(tmp_path_factory, "teacher") as store:
        out = io.StringIO()
        store.mp.setattr(sys, "stdout", out)
        assert run(["train", *TINY1, f"data.path={store.csv}", "privacy.epsilon=null"]) == 0
    return store.uri, json.loads(out.getvalue().strip().splitlines()[-1])["run_id"], store.root


@pytest.fixture
def teacher_run(teacher_store, tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", teacher_store[0])
    return teacher_store[1]


@pytest.mark.integration
def test_label_then_student_round_trip_says_not_protected(teacher_run, teacher_store, reports_csv, tmp_path,
                                                          capsys):
    tracking_uri = teacher_store[0]
    texts = reports_csv[1]
    split = ["train"] * 30 + ["val"] * 10 + ["test"] * 10
    unlabelled = write_unlabelled(tmp_path / "u.csv", texts[:50], {"split": split})
    out = tmp_path / "labelled.csv"
    assert run(["label", f"teacher={teacher_run}", f"input={unlabelled}", f"output={out}",
                "batch_size=8", "progress_bar=false"]) == 0
    summary = last_json(capsys)
    assert summary["n_labelled"] == 50 and summary["labels"] == list(CT_RATE18)

    # the output: id, text, passed-through split, 0/1 by the teacher's thresholds, probabilities
    with out.open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[:3] == ["id", "text", "split"]
    assert [r["id"] for r in rows] == [f"u_{i}" for i in range(50)]
    client = mlflow.MlflowClient(tracking_uri)
    thresholds = json.loads(Path(client.download_artifacts(teacher_run, "label_schema.json", str(tmp_path)))
                            .read_text())["thresholds"]
    for r in rows:
        for name in CT_RATE18:
            assert r[name] == str(int(float(r[f"prob_{name}"]) >= thresholds[name]))

    prov_file = tmp_path / "labelled.csv.provenance.json"
    prov = json.loads(prov_file.read_text())
    assert prov["teacher"] == teacher_run and prov["labels"] == list(CT_RATE18)
    assert prov["thresholds"] == pytest.approx(thresholds)
    assert prov["n_reports"] == 50 and prov["created"]
    assert prov["teacher_guarantee"]["protected"] is False
    assert prov["teacher_privacy"]["private"] is False
    assert not any(t in prov_file.read_text() for t in texts), "no report text in the provenance"

    # the student: an ordinary DP run on the labelled CSV; label columns come from the provenance
    assert run(["train", *TINY1, "data=csv", f"data.path={out}", "data.id_column=id", "data.split_column=split",
                "privacy.epsilon=3"]) == 0
    student = last_json(capsys)["run_id"]
    privacy = json.loads(Path(client.download_artifacts(student, "privacy.json", str(tmp_path / "s"))).read_text())
    assert privacy["private"] is True and privacy["epsilon"] <= 3.0
    assert privacy["teacher"]["protected"] is False and privacy["teacher"]["epsilon"] is None
    assert "NOT PROTECTED" in privacy["guarantees"]["teacher_training_reports"]
    assert privacy["guarantees"]["student_training_reports"].startswith("(")
    assert "output_matches" not in privacy["teacher"]  # a bit about the student's CSV: never published
    # the run publishes the public view only: no sha256 of the CSV, no counts of it
    logged = client.download_artifacts(student, provenance.ARTIFACT, str(tmp_path / "p"))
    assert json.loads(Path(logged).read_text()) == provenance.public_view(prov)
    assert client.get_run(student).data.tags["radpriv.teacher_protected"] == "false"


def test_dp_teacher_guarantee_is_carried_to_the_student():
    facts = {"private": True, "epsilon": 1.5, "delta": 1e-5, "accountant": "prv"}
    g = provenance.single_teacher_guarantee(facts)
    assert g["protected"] is True and g["epsilon"] == 1.5 and g["delta"] == 1e-5
    assert "post-processing" in g["statement"]
    unknown = provenance.single_teacher_guarantee({})
    assert unknown["protected"] is False and "NOT PROTECTED" in unknown["statement"]
    assert provenance.single_teacher_guarantee({"private": False})["protected"] is False


def test_student_privacy_json_with_a_dp_teacher(tmp_path):
    """add_teacher_guarantee on a DP-teacher provenance: the teacher's ε, protected."""
    data = tmp_path / "l.csv"
    data.write_text("id,text,a\n1,x,0\n")
    record = provenance.build(mode="teacher", teacher="runs:/abc/model", labels=["a"],
                              guarantee=provenance.single_teacher_guarantee({"private": True, "epsilon": 2.0,
                                                                             "delta": 1e-5}),
                              output=data, n_reports=1, n_labelled=1)
    provenance.write(record, data)
    privacy = {"private": True, "epsilon": 1.0, "guarantee": "(1, 1e-05)-DP for each report"}
    found = provenance.add_teacher_guarantee(privacy, {"name": "csv", "path": str(data), "provenance": None})
    assert found == tmp_path / "l.csv.provenance.json"
    assert privacy["teacher"]["protected"] is True and privacy["teacher"]["epsilon"] == 2.0
    assert privacy["guarantees"]["teacher_training_reports"].startswith("(2, 1e-05)-DP")
    assert provenance.add_teacher_guarantee({}, {"name": "openi", "path": str(data)}) is None


def test_public_view_is_a_whitelist(tmp_path):
    """What may be published: no unkeyed hash of the CSV (it holds the student's texts), no
    counts, no thresholds, no PATE partition sizes or expert counts, no field unknown today."""
    data = tmp_path / "l.csv"
    data.write_text("id,text,a\n1,x,0\n2,y,1\n")
    single = provenance.build(mode="teacher", teacher="runs:/abc/model", labels=["a"],
                              guarantee=provenance.single_teacher_guarantee({"private": False}), output=data,
                              n_reports=2, n_labelled=2, thresholds={"a": 0.4}, teacher_privacy={"private": False},
                              teacher_resolved="run abc", some_future_field=7)
    view = provenance.public_view(single)
    assert set(view) == {"format", "version", "mode", "label_source", "labels", "teacher", "teacher_resolved",
                         "teacher_guarantee", "created"}
    assert view["teacher"] == "runs:/abc/model" and view["teacher_guarantee"] == single["teacher_guarantee"]
    assert provenance.file_sha256(data) not in json.dumps(view)

    pate_record = {**single, "mode": "pate", "label_source": "pate",
                   "teacher": {"kind": "pate", "k": 3, "teacher_runs": ["r1", "r2", "r3"], "parent_run_id": "p",
                               "teacher_model": "tiny_bert", "expert_data": "ct_rate_text",
                               "n_expert_train_reports": 280, "partition_sizes": [90, 95, 95]},
                   "pate": {"k": 3, "sigma": 100.0, "n_labels": 18, "n_queries": 280, "delta": 2e-3,
                            "epsilon": 4.5, "n_expert": 280, "noise_seeded": False}}
    view = provenance.public_view(pate_record)
    assert view["teacher"] == {"kind": "pate", "k": 3, "teacher_runs": ["r1", "r2", "r3"], "parent_run_id": "p",
                               "teacher_model": "tiny_bert", "expert_data": "ct_rate_text"}
    assert view["pate"] == {k: v for k, v in pate_record["pate"].items() if k != "n_expert"}
    # a published view is still a provenance file a reader accepts
    (tmp_path / "v.json").write_text(json.dumps(view))
    assert provenance.load(tmp_path / "v.json")["teacher_guarantee"]["protected"] is False


def test_privacy_json_names_the_teacher_as_the_public_view_does(tmp_path):
    data = tmp_path / "l.csv"
    data.write_text("id,text,a\n1,x,0\n")
    record = provenance.build(mode="pate", teacher={"kind": "pate", "k": 2, "partition_sizes": [3, 4]},
                              labels=["a"], guarantee=provenance.single_teacher_guarantee({}), output=data,
                              n_reports=1, n_labelled=1)
    section = provenance.teacher_section(record, tmp_path / "l.csv.provenance.json")
    assert section["teacher"] == {"kind": "pate", "k": 2}


def _label_error(capsys, args) -> str:
    from radpriv.cli import main

    with pytest.raises(SystemExit) as e:
        main(["label", *args])
    assert e.value.code == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_input_is_one_line(teacher_run, reports_csv, tmp_path, capsys):
    out = f"output={tmp_path / 'o.csv'}"
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "empty" in _label_error(capsys, [f"teacher={teacher_run}", f"input={empty}", out])
    header_only = tmp_path / "h.csv"
    header_only.write_text("id,report_text\n")
    assert "no report rows" in _label_error(capsys, [f"teacher={teacher_run}", f"input={header_only}", out])
    blank = write_unlabelled(tmp_path / "b.csv", ["", "  "])
    assert "every report is empty" in _label_error(capsys, [f"teacher={teacher_run}", f"input={blank}", out])
    # an input that already holds label columns of another schema/source clashes with the teacher's
    assert "clash" in _label_error(capsys, [f"teacher={teacher_run}", f"input={reports_csv[0]}", out])
    # the output's requested label schema differs from the teacher's
    ok = write_unlabelled(tmp_path / "ok.csv", reports_csv[1][:3])
    assert "label schema" in _label_error(capsys, [f"teacher={teacher_run}", f"input={ok}", out,
                                                   "labels=chexpert14"])
    assert "teacher=" in _label_error(capsys, [f"input={ok}", out])
    assert "no run" in _label_error(capsys, ["teacher=" + "0" * 32, f"input={ok}", out])
    assert not (tmp_path / "o.csv").exists()


def test_student_refuses_a_label_schema_other_than_the_teachers(tmp_path):
    from radpriv.data.generic_csv import load_generic_csv
    from radpriv.errors import DataError

    data = tmp_path / "l.csv"
    data.write_text("id,text,a,b\n" + "".join(f"{i},text {i},{i % 2},0\n" for i in range(10)))
    provenance.write(provenance.build(mode="teacher", teacher="x", labels=["a", "b"],
                                      guarantee=provenance.single_teacher_guarantee({}), output=data,
                                      n_reports=10, n_labelled=10), data)
    cfg = {"name": "csv", "path": str(data), "text_column": "text", "label_columns": None}
    assert load_generic_csv(cfg, 0).label_names == ("a", "b")  # taken from the provenance
    with pytest.raises(DataError, match="differ"):
        load_generic_csv({**cfg, "label_columns": ["b", "a"]}, 0)
    with pytest.raises(DataError, match="not a radpriv teacher provenance"):
        (tmp_path / "bad.json").write_text("{}")
        load_generic_csv({**cfg, "provenance": str(tmp_path / "bad.json")}, 0)
