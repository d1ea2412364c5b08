"""`radpriv data check`: a summary of counts (never text), exit 1 when the data cannot be trained on.

The fixtures are the fabricated native trees of the reader tests (tests/helpers/fabricate_*.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from radpriv.cli import main, run
from radpriv.config import compose
from radpriv.data.check import DataCheckFailed, check_data, summarize
from radpriv.data.sources import load_table
from radpriv.errors import ConfigError, ModelError
from tests.helpers.cli import error_lines
from tests.helpers.fabricate_csv import FULL, fabricate_rows, write_csv
from tests.helpers.fabricate_ct_rate import write_ct_rate
from tests.helpers.fabricate_mimic import write_mimic
from tests.synthetic import PATIENT_CSV, synthetic_table, write_patient_csv

TEXT_MARKERS = ("fabricated", "invented", "made up", "pretend", "perhaps")



def assert_no_text(s: str) -> None:
    low = s.lower()
    for marker in TEXT_MARKERS:
        assert marker not in low, marker


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("trees")
    write_mimic(base / "mimic")
    write_ct_rate(base / "ct")
    write_csv(base / "reports.csv")
    return {"mimic": base / "mimic", "ct": base / "ct", "csv": base / "reports.csv"}


def test_summary_of_a_mimic_tree(trees):
    cfg = compose(["data=mimic_cxr", f"data.path={trees['mimic']}", "model=tiny_bert", "data.max_length=24"])
    s = check_data(cfg)
    assert s["ok"] and s["dataset"] == "mimic_cxr" and s["n_reports"] == 28
    assert s["reports"] == {"train": 20, "val": 4, "test": 4}
    assert s["patients"] == {"train": 10, "val": 2, "test": 2, "all": 14}
    assert s["reports_per_patient"]["train"] == {"min": 2, "median": 2.0, "max": 2}
    assert s["unit"]["name"] == "patient" and "subject_id" in s["unit"]["why"]
    assert s["excluded"] == {"empty_text": 0, "no_label": 0, "not_in_split": 0}
    edema = s["prevalence"]["train"]["Edema"]
    assert edema["masked"] > 0 and edema["positives"] == 0 and edema["prevalence"] == 0.0
    assert sum(s["masked"].values()) == 9  # studies k % 3 == 1 of 28: Edema -1.0
    tok = s["tokens"]["all"]
    assert tok["n"] == 28 and tok["p50"] <= tok["p90"] <= tok["p95"] <= tok["p99"] <= tok["max"]
    assert tok["max_length"] == 24 and tok["truncated"] == round(tok["truncated_share"] * 28)
    assert 0 < tok["truncated_share"] <= 1 and any("data.max_length=24" in p["message"] for p in s["problems"])
    never = [p for p in s["problems"] if "never positive" in p["message"]]
    assert never and never[0]["level"] == "warning" and "Fracture" in never[0]["message"]
    assert_no_text(json.dumps(s))


def test_cli_data_check_prints_a_table_then_json(trees, capsys):
    assert run(["data", "check", "data=ct_rate", f"data.path={trees['ct']}", "model=tiny_bert"]) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["ok"] and summary["dataset"] == "ct_rate" and summary["reports"]["test"] > 0
    table = "\n".join(lines[:-1])
    assert "split" in table and "pos/known" in table and "Cardiomegaly" in table and "p95" in table
    assert "duplicate_reconstruction=" in table and "status: OK" in table
    assert_no_text(out.out + out.err)


def test_cli_data_check_on_csv_and_bad_input_exit_1(trees, tmp_path, capsys):
    args = ["data", "check", "data=csv", f"data.path={trees['csv']}", "model=tiny_bert",
            "data.text_columns=[body,conclusion]", "data.label_columns=[Nodule,Effusion,Device]",
            "data.patient_column=mrn", "data.split_column=part"]
    assert run(args) == 0
    assert_no_text(capsys.readouterr().out)
    # a reader's error: one line on stderr, exit 1, nothing on stdout
    assert run(["data", "check", "data=csv", f"data.path={tmp_path / 'absent.csv'}", "data.label_columns=[a]"]) == 1
    out = capsys.readouterr()
    err = error_lines(out.err)
    assert out.out == "" and len(err) == 1 and "absent.csv" in err[0]
    # no usable row at all
    rows = fabricate_rows()
    for r in rows:
        r[4] = r[5] = ""
    p = write_csv(tmp_path / "empty.csv", rows)
    assert run([*args[:3], f"data.path={p}", *args[4:]]) == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("radpriv: error:") and "empty" in err[0]
    # a bad sub-command
    assert run(["data", "inspect"]) == 2


def test_unusable_splits_fail_with_a_one_line_reason(tmp_path, capsys):
    rows = fabricate_rows()
    for r in rows:
        r[2] = "test"
    p = write_csv(tmp_path / "alltest.csv", rows)
    overrides = ["data=csv", f"data.path={p}", "model=tiny_bert", "data.text_column=body",
                 "data.label_columns=[Nodule,Effusion,Device]", "data.split_column=part"]
    with pytest.raises(DataCheckFailed) as e:
        check_data(compose(overrides))
    assert "training split is empty" in str(e.value) and not e.value.summary["ok"]
    assert run(["data", "check", *overrides]) == 1
    out = capsys.readouterr()
    err = error_lines(out.err)
    assert len(err) == 1 and "training split is empty" in err[0]
    assert json.loads(out.out.strip().splitlines()[-1])["ok"] is False and "FAILED" in out.out
    assert_no_text(out.out + out.err)
    # no validation split while thresholds are chosen on it: an error; with fixed thresholds a warning
    rows = fabricate_rows()
    for r in rows:
        r[2] = "train" if r[2] != "TEST" else "test"
    p = write_csv(tmp_path / "noval.csv", rows)
    no_val = ["data=csv", f"data.path={p}", "model=tiny_bert", "data.text_column=body",
              "data.label_columns=[Nodule,Effusion,Device]", "data.split_column=part", "data.val_fraction=0"]
    with pytest.raises(DataCheckFailed, match="validation split is empty"):
        check_data(compose(no_val))
    s = check_data(compose([*no_val, "trainer.thresholds=fixed"]))
    assert s["ok"] and any("validation split is empty" in p["message"] for p in s["problems"])


def test_tokenizer_unavailable_is_a_warning(trees):
    cfg = compose(["data=csv", f"data.path={trees['csv']}", *(f"data.{k}={v}" for k, v in FULL.items()
                                                              if isinstance(v, str)),
                   "data.label_columns=[Nodule,Effusion,Device]", "data.text_columns=[body]"])

    def offline(_cfg):
        raise ModelError("model bert_small is not cached and the hub is unreachable")

    s = check_data(cfg, load_tokenizer=offline)
    assert s["ok"] and s["tokens"] is None
    assert any("token lengths not computed" in p["message"] for p in s["problems"])


# --------------------------------------------------------------------------- patients and the unit

def _direct_spread(sizes) -> dict:
    return {"min": int(min(sizes)), "median": float(np.median(sizes)), "max": int(max(sizes))}


def test_reports_per_patient_and_the_unit_of_a_patient_csv(tmp_path, capsys):
    path = tmp_path / "patients.csv"
    reports = write_patient_csv(path, n_patients=40, seed=3)
    overrides = [*PATIENT_CSV, f"data.path={path}", "model=tiny_bert", "privacy.max_reports_per_patient=4"]
    s = check_data(compose(overrides))
    table = load_table(compose(overrides).data, 42)
    # counted here from the reader's table, independently of the check
    by_split: dict[str, dict[str, int]] = {}
    for p, split in zip(table.patient_ids, table.split):
        by_split.setdefault(split, {}).setdefault(p, 0)
        by_split[split][p] += 1
    assert s["patients"] == {**{k: len(v) for k, v in by_split.items()}, "all": 40}
    for split, sizes in by_split.items():
        assert s["reports_per_patient"][split] == _direct_spread(list(sizes.values()))
    assert s["reports_per_patient"]["all"] == _direct_spread([len(r) for r in reports.values()])
    assert s["reports_per_patient"]["all"]["max"] > 1  # several reports per patient: the point of the unit
    unit = s["unit"]
    assert (unit["setting"], unit["name"]) == ("auto", "patient") and "data.patient_column" in unit["why"]
    assert unit["train_patients_over_cap"] == sum(n > 4 for n in by_split["train"].values()) > 0

    assert run(["data", "check", *overrides]) == 0
    out = capsys.readouterr().out
    printed = json.loads(out.strip().splitlines()[-1])
    assert printed["reports_per_patient"] == s["reports_per_patient"] and printed["unit"] == unit
    lines = out.splitlines()
    assert any("reports/patient min/med/max" in ln for ln in lines)
    spread = s["reports_per_patient"]["all"]
    row = next(ln for ln in lines if ln.startswith("all "))
    assert row.split() == ["all", str(s["n_reports"]), "40", f"{spread['min']}/{spread['median']:g}/{spread['max']}",
                           str(sum(s["masked"].values()))]
    assert any(ln.startswith("unit      patient (privacy.unit=auto)") for ln in lines)
    assert any("privacy.max_reports_per_patient=4" in ln for ln in lines)
    assert_no_text(out)

    # the report unit asked for on the same data: said so, with the group-privacy caveat
    as_report = check_data(compose([*overrides, "privacy.unit=report"]))
    assert as_report["unit"]["name"] == "report" and "group privacy" in as_report["unit"]["why"]
    assert "train_patients_over_cap" not in as_report["unit"]


def test_a_format_that_names_no_patient_resolves_to_the_report_unit(reports_csv):
    cfg = compose(["data=ct_rate_text", f"data.path={reports_csv[0]}", "model=tiny_bert"])
    s = check_data(cfg, load_tokenizer=lambda _cfg: None)
    assert s["unit"]["name"] == "report" and "names no patient" in s["unit"]["why"]
    assert s["patients"]["all"] == len(set(load_table(cfg.data, 42).patient_ids))


def test_a_unit_the_data_cannot_have_is_an_error_and_a_bad_value_a_bad_command(reports_csv, capsys):
    no_ids = dataclasses.replace(synthetic_table(30), patient_ids=None)
    s = summarize(no_ids, compose(["privacy.unit=patient"]))
    assert not s["ok"] and s["unit"]["name"] is None and s["patients"] is None
    assert any(p["level"] == "error" and "privacy.unit=patient" in p["message"] for p in s["problems"])
    assert summarize(no_ids, compose([]))["unit"]["name"] == "report"
    with pytest.raises(ConfigError, match="privacy.unit"):
        summarize(no_ids, compose(["privacy.unit=family"]))
    with pytest.raises(ConfigError, match="max_reports_per_patient=64"):  # a bad setting, whatever the data
        summarize(synthetic_table(30), compose(["privacy.unit=patient", "privacy.max_reports_per_patient=64"]))
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", "data=ct_rate_text", f"data.path={reports_csv[0]}", "privacy.unit=family"])
    err = error_lines(capsys.readouterr().err)
    assert exit_info.value.code == 2 and len(err) == 1 and "privacy.unit='family'" in err[0]


def test_patients_in_several_splits_are_a_warning():
    # rows cycle test, val, train ×4; patients of 3 rows: every other one has rows 6m, 6m+1, 6m+2 in 3 splits
    shared = dataclasses.replace(synthetic_table(36), patient_ids=tuple(f"P{i // 3}" for i in range(36)))
    s = summarize(shared, compose([]))
    mixed = [p for p in s["problems"] if "more than one split" in p["message"]]
    assert s["ok"] and len(mixed) == 1 and mixed[0]["level"] == "warning" and mixed[0]["message"].startswith("6 ")
    assert s["patients"]["all"] == 12 and s["reports_per_patient"]["all"] == {"min": 3, "median": 3.0, "max": 3}
