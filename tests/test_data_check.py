"""`radpriv data check`: a summary of counts (never text), exit 1 when the data cannot be trained on.

The fixtures are the fabricated native trees of the reader tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radpriv.cli import run
from radpriv.config import compose
from radpriv.data.check import DataCheckFailed, check_data
from radpriv.errors import ModelError
from tests.test_data_csv import FULL, fabricate_rows, write_csv
from tests.test_data_ct_rate import write_ct_rate
from tests.test_data_mimic_cxr import write_mimic

TEXT_MARKERS = ("fabricated", "invented", "made up", "pretend", "perhaps")



def error_lines(stderr: str) -> list[str]:
    """stderr less radpriv's progress lines (`radpriv: <count line>`); no traceback allowed."""
    assert "Traceback" not in stderr
    return [ln for ln in stderr.strip().splitlines()
            if ln.strip() and not (ln.startswith("radpriv: ") and not ln.startswith("radpriv: error"))]


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
    assert s["patients"] == {"train": 10, "val": 2, "test": 2}
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
