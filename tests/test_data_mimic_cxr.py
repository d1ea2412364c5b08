"""`data=mimic_cxr`: the native MIMIC-CXR layout (report tree or zip, chexpert/negbio CSV, split CSV).

Every report here is fabricated by tests/helpers/fabricate_mimic.py (invented sentences); no
real report text.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from radpriv.data.mimic_cxr import extract_sections, last_paragraph, load_mimic_cxr, split_sections
from radpriv.data.schemas import CHEXPERT14
from radpriv.errors import DataError
from tests.helpers.fabricate_mimic import report_member, rewrite_csv, write_mimic


def load(root: Path, **cfg):
    return load_mimic_cxr({"path": str(root), **cfg}, seed=0)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}



@pytest.fixture
def radpriv_logs(caplog):
    caplog.set_level(logging.INFO, logger="radpriv")
    return caplog


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("mimic")
    return root, write_mimic(root)


# ----------------------------------------------------------------------------- sections

def test_section_parsing_and_fallbacks():
    raw = ("   FINAL REPORT\n EXAMINATION:  CHEST\n\n INDICATION:  ___F, fake cough: eval at 8:14\n\n"
           " FINDINGS:\n  Invented lungs\n  look clear.\n\n IMPRESSIONS:  Nothing made up.\n\n"
           " NOTIFICATION:  Pretend call.\n")
    _, sections = split_sections(raw)
    assert [n for n, _ in sections] == ["examination", "indication", "findings", "impression", "notification"]
    assert extract_sections(raw, ("findings", "impression"), "last_paragraph") == (
        "Invented lungs look clear. Nothing made up.", False)
    assert extract_sections(raw, ("impression", "findings"), "exclude")[0] == (
        "Nothing made up. Invented lungs look clear.")
    assert extract_sections(raw, ("indication",), "exclude")[0] == "___F, fake cough: eval at 8:14"
    # no headers: last paragraph / whole / exclude
    plain = "Made up first part.\nstill first.\n \nInvented last part.\n"
    assert extract_sections(plain, ("findings", "impression"), "last_paragraph") == ("Invented last part.", True)
    assert extract_sections(plain, ("findings",), "whole") == (
        "Made up first part. still first. Invented last part.", True)
    assert extract_sections(plain, ("findings",), "exclude") == ("", True)
    # headers, but none requested: the last paragraph less its header
    assert last_paragraph(" INDICATION: fake.\n\n NOTIFICATION:  Pretend call.\n") == "Pretend call."
    # an empty requested section falls back too
    assert extract_sections(" FINDINGS:\n\n IMPRESSION:\n", ("findings", "impression"), "whole")[1] is True


# ----------------------------------------------------------------------------- reading

def test_tree_reads_sections_labels_and_official_split(mimic_root):
    root, studies = mimic_root
    t = load(root)
    by_id = {st["study"]: st for st in studies}
    assert t.name == "mimic_cxr" and t.label_names == CHEXPERT14 and len(t) == len(studies)
    for i, text, s, p in zip(t.ids, t.texts, t.split, t.patient_ids):
        st = by_id[i]
        assert text == st["expected"] and "fabricated reason" not in text  # indication is not read
        assert s == {"train": "train", "validate": "val", "test": "test"}[st["split"]]
        assert p == st["subject"]
    row = t.ids.index(studies[1]["study"])  # k=1: uncertain Edema
    assert t.labels[row, CHEXPERT14.index("Edema")] == -1.0
    for j, lab in enumerate(CHEXPERT14):
        cell = studies[1]["cells"][lab]
        assert t.labels[row, j] == {"1.0": 1.0, "0.0": 0.0, "-1.0": -1.0, "": 0.0}[cell]
    assert t.excluded == {"empty_text": 0, "no_label": 0, "not_in_split": 0}
    assert "fallback last_paragraph: 4 reports" in t.source  # k = 3, 10, 17, 24


def test_zip_and_gz_and_negbio_give_the_same_table(tmp_path, mimic_root):
    root, studies = mimic_root
    ref = load(root)
    write_mimic(tmp_path / "z", studies, reports="zip", gz=True, labeler="negbio")
    t = load(tmp_path / "z", labeler="negbio")
    assert (t.ids, t.texts, t.split) == (ref.ids, ref.texts, ref.split)
    np.testing.assert_array_equal(t.labels, ref.labels)
    # each file given on its own
    t2 = load_mimic_cxr({"reports_path": str(tmp_path / "z" / "mimic-cxr-reports.zip"),
                         "labels_path": str(tmp_path / "z" / "mimic-cxr-2.0.0-negbio.csv.gz"),
                         "split_path": str(root / "mimic-cxr-2.0.0-split.csv")}, seed=0)
    assert t2.fingerprint() == ref.fingerprint()


@pytest.mark.parametrize("policy, value", [("ignore", -1.0), ("zeros", 0.0), ("ones", 1.0)])
def test_uncertainty_policies(mimic_root, policy, value):
    root, studies = mimic_root
    t = load(root, uncertain=policy)
    j = CHEXPERT14.index("Edema")
    uncertain_rows = [t.ids.index(st["study"]) for st in studies if st["cells"]["Edema"] == "-1.0"]
    assert uncertain_rows and all(t.labels[r, j] == value for r in uncertain_rows)
    blank_rows = [t.ids.index(st["study"]) for st in studies if st["cells"]["Edema"] == ""]
    assert all(t.labels[r, j] == 0.0 for r in blank_rows)  # blank = not mentioned = 0
    assert (t.labels == -1).any() == (policy == "ignore")


def test_label_order_sections_and_seeded_split_are_configurable(tmp_path, mimic_root):
    root, studies = mimic_root
    t = load(root, labels=["Edema", "Cardiomegaly"], sections=["impression"], section_fallback="exclude")
    assert t.label_names == ("Edema", "Cardiomegaly") and t.labels.shape[1] == 2
    assert t.excluded["no_section"] == 4 and len(t) == len(studies) - 4
    write_mimic(tmp_path / "nosplit", studies, split=False)
    t = load(tmp_path / "nosplit")
    assert "seeded" in t.source and set(t.split) == {"train", "val", "test"}
    by_patient: dict[str, set] = {}
    for p, s in zip(t.patient_ids, t.split):
        by_patient.setdefault(p, set()).add(s)
    assert all(len(v) == 1 for v in by_patient.values())  # split by patient (subject_id)


# ----------------------------------------------------------------------------- bad input

def _err(root: Path, **cfg) -> str:
    before = snapshot(root) if root.is_dir() else {}
    with pytest.raises(DataError) as e:
        load(root, **cfg)
    msg = str(e.value)
    assert "\n" not in msg
    assert snapshot(root) == before  # nothing written
    for sentence in ("fabricated marker sentence", "invented fluid", "made up hazy"):
        assert sentence not in msg
    return msg


def test_missing_folder_and_files(tmp_path, mimic_root):
    root, studies = mimic_root
    assert str(tmp_path / "absent") in _err(tmp_path / "absent")
    write_mimic(tmp_path / "a", studies)
    (tmp_path / "a" / "mimic-cxr-2.0.0-chexpert.csv").unlink()
    msg = _err(tmp_path / "a")
    assert "mimic-cxr-2.0.0-chexpert.csv" in msg and str(tmp_path / "a") in msg
    assert "mimic-cxr-2.0.0-negbio.csv" in _err(tmp_path / "a", labeler="negbio")
    (tmp_path / "b").mkdir()
    assert "mimic-cxr-reports.zip" in _err(tmp_path / "b")
    msg = _err(root, split_path=str(tmp_path / "nosplit.csv"))
    assert "nosplit.csv" in msg


def test_missing_columns_and_bad_label_values(tmp_path, mimic_root):
    _, studies = mimic_root
    root = tmp_path / "m"
    write_mimic(root, studies)
    labels = root / "mimic-cxr-2.0.0-chexpert.csv"
    def drop_edema(rows):
        j = rows[0].index("Edema")
        for r in rows:
            r.pop(j)

    rewrite_csv(labels, drop_edema)
    msg = _err(root)
    assert str(labels) in msg and "line 1" in msg and "Edema" in msg
    write_mimic(tmp_path / "v", studies)
    labels = tmp_path / "v" / "mimic-cxr-2.0.0-chexpert.csv"
    rewrite_csv(labels, lambda rows: rows[5].__setitem__(rows[0].index("Fracture"), "2.0"))
    msg = _err(tmp_path / "v")
    assert str(labels) in msg and "line 6" in msg and "'Fracture'" in msg and "'2.0'" in msg


def test_label_rows_without_reports(tmp_path, mimic_root, radpriv_logs):
    _, studies = mimic_root
    root = tmp_path / "m"
    write_mimic(root, studies)
    (root / report_member(studies[4])).unlink()
    msg = _err(root)  # 1 of 28 label rows = 3.6% > 1%
    assert "mimic-cxr-2.0.0-chexpert.csv" in msg and "1 of 28" in msg and f"{studies[4]['study']}" in msg
    t = load(root, max_missing_reports_fraction=0.05)  # below the threshold: a warning
    assert len(t) == 27
    assert any("have no report" in r.getMessage() and r.levelno == logging.WARNING for r in radpriv_logs.records)


def test_duplicate_ids(tmp_path, mimic_root):
    _, studies = mimic_root
    root = tmp_path / "m"
    write_mimic(root, studies)
    labels = root / "mimic-cxr-2.0.0-chexpert.csv"
    rewrite_csv(labels, lambda rows: rows.append(list(rows[3])))
    msg = _err(root)
    assert str(labels) in msg and "duplicate study_id" in msg and "line 4" in msg and "line 30" in msg
    # one study filed under two subjects in the report tree
    write_mimic(tmp_path / "d", studies)
    st = studies[0]
    other = tmp_path / "d" / f"files/p10/p10000099/s{st['study']}.txt"
    other.parent.mkdir(parents=True)
    other.write_text("fabricated duplicate.\n")
    msg = _err(tmp_path / "d")
    assert "duplicate study_id" in msg and str(other) in msg


def test_empty_texts_are_counted(tmp_path, mimic_root):
    _, studies = mimic_root
    root = tmp_path / "m"
    write_mimic(root, studies)
    (root / report_member(studies[2])).write_text("   \n\n")
    (root / report_member(studies[5])).write_text(" FINAL REPORT\n FINDINGS:\n\n IMPRESSION:\n")
    t = load(root)
    assert t.excluded["empty_text"] == 2 and len(t) == len(studies) - 2


def test_non_utf8_bytes(tmp_path, mimic_root):
    _, studies = mimic_root
    root = tmp_path / "m"
    write_mimic(root, studies)
    bad = root / report_member(studies[6])
    bad.write_bytes(b" FINDINGS:\n fabricated caf\xe9 line.\n")
    msg = _err(root)
    assert str(bad) in msg and "line 2, column 16" in msg and "UTF-8" in msg
    write_mimic(tmp_path / "z", studies, reports="zip")
    zpath = tmp_path / "z" / "mimic-cxr-reports.zip"
    with zipfile.ZipFile(zpath, "a") as zf:
        zf.writestr("files/p19/p19000001/s59000001.txt", b"fabricated \xff byte.\n")
    msg = _err(tmp_path / "z")
    assert f"{zpath}:files/p19/p19000001/s59000001.txt" in msg and "line 1, column 12" in msg
    labels = root / "mimic-cxr-2.0.0-chexpert.csv"
    bad.write_text("fine again.\n")
    labels.write_bytes(labels.read_bytes().replace(b"subject_id", b"subject_\xffid", 1))
    assert f"{labels}: line 1, column 9" in _err(root)


def test_split_file_problems(tmp_path, mimic_root):
    _, studies = mimic_root
    root = tmp_path / "m"
    write_mimic(root, studies)
    split = root / "mimic-cxr-2.0.0-split.csv"
    rewrite_csv(split, lambda rows: rows.append(["ffff-0000", "59999999", "10000002", "train"]))
    msg = _err(root)
    assert str(split) in msg and "studies named in the split file" in msg and "59999999" in msg
    write_mimic(tmp_path / "v", studies)
    split = tmp_path / "v" / "mimic-cxr-2.0.0-split.csv"
    rewrite_csv(split, lambda rows: rows[2].__setitem__(3, "holdout"))
    msg = _err(tmp_path / "v")
    assert str(split) in msg and "line 3" in msg and "'split'" in msg
    write_mimic(tmp_path / "c", studies)
    split = tmp_path / "c" / "mimic-cxr-2.0.0-split.csv"
    rewrite_csv(split, lambda rows: rows[3].__setitem__(3, "test"))  # image 2 of study 1 in another split
    assert "one study belongs to one split" in _err(tmp_path / "c")


def test_label_never_positive_in_training_is_a_warning(mimic_root, radpriv_logs):
    root, _ = mimic_root
    t = load(root)
    assert (t.labels[:, CHEXPERT14.index("Fracture")] != 1).all()
    warnings = [r.getMessage() for r in radpriv_logs.records if r.levelno == logging.WARNING]
    assert any("never positive in the training split" in m and "Fracture" in m for m in warnings)


def test_bad_config_values(mimic_root):
    root, _ = mimic_root
    assert "data.uncertain" in _err(root, uncertain="maybe")
    assert "data.labeler" in _err(root, labeler="chexbert")
    assert "data.section_fallback" in _err(root, section_fallback="guess")


# ----------------------------------------------------------------------------- masked labels

def test_masked_labels_leave_metrics_and_loss():
    from radpriv.model.metrics import classification_metrics
    from radpriv.model.module import per_sample_loss

    names = ["a", "b"]
    probs = torch.tensor([[0.9, 0.2], [0.8, 0.7], [0.1, 0.9], [0.3, 0.1]])
    labels = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0], [1.0, 0.0]])
    got = classification_metrics(probs, labels, 0.5, names)
    # the same metrics computed by hand on the known entries only
    a = dict(tp=1, fp=0, fn=1)  # rows 0, 2, 3 of label a: preds 1, 0, 0 vs 1, 0, 1
    b = dict(tp=1, fp=0, fn=0)  # rows 0, 1, 3 of label b: preds 0, 1, 0 vs 0, 1, 0
    f1 = {k: 2 * v["tp"] / (2 * v["tp"] + v["fp"] + v["fn"]) for k, v in (("a", a), ("b", b))}
    assert got["f1/a"] == pytest.approx(f1["a"]) and got["f1/b"] == pytest.approx(f1["b"])
    assert got["f1_weighted"] == pytest.approx((2 * f1["a"] + 1 * f1["b"]) / 3)
    # flipping what sits under a mask changes nothing
    flipped = classification_metrics(torch.tensor([[0.9, 0.2], [0.1, 0.7], [0.1, 0.1], [0.3, 0.1]]),
                                      labels, 0.5, names)
    assert flipped == got
    # the loss: masked entries carry no loss and no gradient; each report averages its known labels
    logits = torch.randn(4, 2, requires_grad=True)
    loss = per_sample_loss(logits, labels)
    known = torch.nn.functional.binary_cross_entropy_with_logits(logits[0], labels[0], reduction="mean")
    assert loss[0].item() == pytest.approx(known.item(), rel=1e-6)
    assert loss[1].item() == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(
        logits[1, 1], labels[1, 1]).item(), rel=1e-6)
    loss.sum().backward()
    assert logits.grad[1, 0] == 0 and logits.grad[2, 1] == 0 and logits.grad[0, 0] != 0
    all_masked = per_sample_loss(torch.zeros(1, 2), torch.tensor([[-1.0, -1.0]]))
    assert all_masked.item() == 0.0


def test_dp_training_on_the_mimic_tree_with_masked_labels(mimic_root, tracking_uri, capsys):
    from radpriv.cli import run

    root, studies = mimic_root
    t = load(root)
    assert all((t.subset(s).labels == -1).any() for s in ("train", "val", "test"))
    code = run(["train", "model=tiny_bert", "data=mimic_cxr", f"data.path={root}", "trainer.max_epochs=1",
                "trainer.progress_bar=false", "privacy.expected_batch_size=4",
                "privacy.max_physical_batch_size=4", "data.max_length=32", "privacy.epsilon=5",
                "privacy.delta=1e-3", "tracking.log_model=false"])
    assert code == 0
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    run_data = mlflow.MlflowClient(tracking_uri).get_run(summary["run_id"]).data
    assert "test/f1_weighted" in run_data.metrics and 0 < run_data.metrics["privacy/epsilon"] <= 5
    assert run_data.params["data.uncertain"] == "ignore"
    assert "fabricated marker sentence" not in out.out + out.err and "invented" not in out.out + out.err


def test_rejected_input_writes_nothing(tmp_path, mimic_root, tracking_uri, capsys):
    from radpriv.cli import main

    _, studies = mimic_root
    data = tmp_path / "data"
    write_mimic(data, studies)
    rewrite_csv(data / "mimic-cxr-2.0.0-chexpert.csv",
                lambda rows: rows[2].__setitem__(rows[0].index("Edema"), "uncertain"))
    before = {p for p in tmp_path.rglob("*")}
    with pytest.raises(SystemExit) as e:
        main(["train", "model=tiny_bert", "data=mimic_cxr", f"data.path={data}", "trainer.progress_bar=false"])
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("radpriv: error")]
    assert len(err) == 1 and "line 3" in err[0] and "'Edema'" in err[0]
    assert {p for p in tmp_path.rglob("*")} == before  # no MLflow store, run, checkpoint or cache
