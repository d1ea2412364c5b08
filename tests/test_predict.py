"""`radpriv predict` and the model registry, on one tiny private model trained once per module.

The model is trained with `tracking.register=… tracking.register_alias=champion`, so the same
run checks train's registration hook, alias resolution, the privacy facts on the registered
version, and that predict's numbers are the in-process model's.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest
import torch

from radpriv.cli import main, run
from radpriv.data.schemas import CT_RATE18
from radpriv.model.bundle import load_bundle, predict_proba
from tests.helpers.cli import TINY, error_lines
from tests.helpers.store import module_store

MODEL_NAME = "ct-tiny"
EPSILON = 3.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A private tiny model (1 epoch), registered as ct-tiny@champion, in a module-own store.

    Trained and served in fp32: this module checks that every path (CSV, folder, registry,
    pyfunc) gives the in-process probabilities to 1e-6, which bf16 cannot promise across batch
    compositions (tests/test_precision.py checks bf16 serving against fp32)."""
    from radpriv.config import compose
    from radpriv.train import train

    with module_store(tmp_path_factory, "predict") as store:
        root, uri, csv_path, texts = store.root, store.uri, store.csv, store.texts
        store.mp.setenv("RADPRIV_PRECISION", "32-true")  # predict, label and pyfunc load in fp32
        summary = train(compose([*TINY, f"data.path={csv_path}", "trainer.max_epochs=1", "trainer.precision=32-true",
                                 f"privacy.epsilon={EPSILON}", f"tracking.register={MODEL_NAME}",
                                 "tracking.register_alias=champion"]))
        model_dir = Path(mlflow.artifacts.download_artifacts(
            f"runs:/{summary['run_id']}/model", dst_path=str(root / "dl"), tracking_uri=uri))
        bundle_dir = next(model_dir.rglob("radpriv_model.json")).parent
        privacy = json.loads(Path(mlflow.artifacts.download_artifacts(
            run_id=summary["run_id"], artifact_path="privacy.json", dst_path=str(root / "p"),
            tracking_uri=uri)).read_text())
        yield {"summary": summary, "run_id": summary["run_id"], "uri": uri, "csv": csv_path,
               "texts": texts, "bundle_dir": bundle_dir, "model": load_bundle(bundle_dir),
               "privacy": privacy}


@pytest.fixture
def store(trained, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    return trained


def predict_json(capsys, args) -> tuple[dict, str]:
    assert run(["predict", *args]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out.strip().splitlines()[-1]), captured.err


def read_output(path: Path, label_names) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ids = [r["id"] for r in rows]
    probs = torch.tensor([[float(r[f"prob_{n}"]) for n in label_names] for r in rows])
    labels = torch.tensor([[int(r[n]) for n in label_names] for r in rows])
    return ids, probs, labels


def test_predict_csv_matches_the_in_process_model(store, tmp_path, capsys):
    model = store["model"]
    out, err = predict_json(capsys, [f"model=runs:/{store['run_id']}/model", f"input={store['csv']}",
                                     f"output={tmp_path / 'out' / 'pred.csv'}", "batch_size=7",
                                     "labels=ct_rate18"])
    assert out["n_reports"] == len(store["texts"]) and out["labels"] == list(CT_RATE18)
    ids, probs, labels = read_output(tmp_path / "out" / "pred.csv", CT_RATE18)
    assert ids == [f"train_{i}_a_1" for i in range(len(store["texts"]))]  # the AccessionNo column
    expected = predict_proba(model, store["texts"])
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)
    thresholds = torch.tensor(model.thresholds)
    assert torch.equal(labels, (probs >= thresholds).long())
    assert not torch.allclose(thresholds, torch.full_like(thresholds, 0.5))  # fitted, stored, used
    # one stderr line with the model's privacy facts, as recorded by the run
    facts = [ln for ln in err.splitlines() if "-DP for each training report" in ln]
    assert len(facts) == 1 and f"ε={store['privacy']['epsilon']:.4g}" in facts[0], err
    assert "accountant=" in facts[0] and "σ=" in facts[0] and "ct_rate_text" in facts[0]
    assert out["privacy"]["epsilon"] == pytest.approx(store["privacy"]["epsilon"])
    # no report text on stdout or stderr
    for text in store["texts"]:
        assert text not in err and text not in json.dumps(out)


def test_predict_a_folder_of_txt_reports_from_a_local_bundle(store, tmp_path, capsys):
    reports = tmp_path / "reports"
    (reports / "sub").mkdir(parents=True)
    texts = {"s101": "heart is enlarged. lungs are clear.", "s102": "fluid in the pleural space.",
             "s103": "metal clip seen. no acute process."}
    for i, (stem, text) in enumerate(texts.items()):
        (reports / ("sub" if i == 2 else "") / f"{stem}.txt").write_text(text + "\n")
    (reports / "s104.txt").write_text("  \n")  # no text: blank output cells, not a guess
    (reports / "notes.md").write_text("ignored")
    out, err = predict_json(capsys, [f"model={store['bundle_dir']}", f"input={reports}",
                                     f"output={tmp_path / 'pred.csv'}", "progress_bar=false"])
    assert out["n_reports"] == 4 and out["n_empty"] == 1 and "no text" in err
    with (tmp_path / "pred.csv").open(newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["s101", "s102", "s103", "s104"]
    assert all(v == "" for k, v in rows["s104"].items() if k != "id")
    expected = predict_proba(store["model"], list(texts.values()))
    got = torch.tensor([[float(rows[s][f"prob_{n}"]) for n in CT_RATE18] for s in texts])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_train_registers_and_the_alias_resolves(store, tmp_path, capsys):
    from radpriv.tracking.registry import model_version_facts, resolve_model_uri, set_alias

    registered = store["summary"]["registered"]
    assert registered == {"name": MODEL_NAME, "version": "1", "alias": "champion"}
    resolved = resolve_model_uri(f"models:/{MODEL_NAME}@champion", store["uri"])
    assert resolved.run_id == store["run_id"] and resolved.version == "1"
    out, _ = predict_json(capsys, [f"model=models:/{MODEL_NAME}@champion", f"input={store['csv']}",
                                   f"output={tmp_path / 'pred.csv'}", "progress_bar=false"])
    _, probs, _ = read_output(tmp_path / "pred.csv", CT_RATE18)
    torch.testing.assert_close(probs, predict_proba(store["model"], store["texts"]), atol=1e-6, rtol=0)

    # the privacy facts travel with the registered version (tags + description)
    privacy = store["privacy"]
    facts = model_version_facts(MODEL_NAME, "champion", store["uri"])
    assert facts["private"] is True
    assert facts["epsilon"] == pytest.approx(privacy["epsilon"]) and facts["epsilon"] <= EPSILON
    assert facts["delta"] == pytest.approx(privacy["delta"])
    assert facts["accountant"] == privacy["accountant"]
    assert facts["noise_multiplier"] == pytest.approx(privacy["noise_multiplier"])
    assert facts["dataset"] == "ct_rate_text" and facts["labels"] == list(CT_RATE18)
    version = mlflow.MlflowClient(store["uri"]).get_model_version(MODEL_NAME, "1")
    assert f"ε={privacy['epsilon']:.4g}" in version.description and version.run_id == store["run_id"]
    # and inside the model artifact itself
    info = mlflow.models.get_model_info(f"models:/{MODEL_NAME}@champion")
    assert info.metadata["radpriv"]["privacy"]["epsilon"] == pytest.approx(privacy["epsilon"])

    set_alias(MODEL_NAME, 1, "staging", store["uri"])
    assert resolve_model_uri(f"models:/{MODEL_NAME}@staging", store["uri"]).version == "1"
    assert resolve_model_uri(f"models:/{MODEL_NAME}/latest", store["uri"]).version == "1"


def _bad(tmp_path: Path, store) -> dict:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header_only = tmp_path / "header.csv"
    header_only.write_text("id,text\n")
    no_text = tmp_path / "no_text.csv"
    no_text.write_text("uid,body\n1,heart is enlarged\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    ok = [f"input={store['csv']}", f"output={tmp_path / 'o.csv'}"]
    model = f"model={store['run_id']}"
    return {
        "empty input file": ([model, f"input={empty}", f"output={tmp_path / 'o.csv'}"], "empty"),
        "header only": ([model, f"input={header_only}", f"output={tmp_path / 'o.csv'}"], "no report rows"),
        "text column missing": ([model, *ok, "text_column=impression"], "text column"),
        "no text column found": ([model, f"input={no_text}", f"output={tmp_path / 'o.csv'}"], "no text column"),
        "id column missing": ([model, *ok, "id_column=uid"], "id column"),
        "input path missing": ([model, f"input={tmp_path / 'absent.csv'}", f"output={tmp_path / 'o.csv'}"],
                               "absent.csv"),
        "unknown alias": ([f"model=models:/{MODEL_NAME}@nope", *ok], "does not resolve"),
        "unknown registered model": (["model=models:/no-such-model/1", *ok], "does not resolve"),
        "unknown run": (["model=0123456789abcdef0123456789abcdef", *ok], "no run"),
        "not a model reference": (["model=no/such/folder", *ok], "not a folder"),
        "label schema mismatch": ([model, *ok, "labels=chexpert14"], "label schema"),
        "label list mismatch": ([model, *ok, "labels=Cardiomegaly,Edema"], "lacks edema;"),
        "output is a folder": ([model, f"input={store['csv']}", f"output={tmp_path}"], "is a folder"),
        "output folder not writable": ([model, f"input={store['csv']}", f"output={a_file / 'o.csv'}"],
                                       "not a folder"),
        "missing output": ([model, f"input={store['csv']}"], "output="),
        "bad batch size": ([model, *ok, "batch_size=0"], "batch_size"),
        "unknown key": ([model, *ok, "colour=red"], "colour"),
    }


BAD = ["empty input file", "header only", "text column missing", "no text column found",
       "id column missing", "input path missing", "unknown alias", "unknown registered model",
       "unknown run", "not a model reference", "label schema mismatch", "label list mismatch",
       "output is a folder", "output folder not writable", "missing output", "bad batch size",
       "unknown key"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2(store, tmp_path, capsys, case):
    args, message = _bad(tmp_path, store)[case]
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", *args])
    assert exit_info.value.code == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("radpriv: error:") and message in err[0].lower(), err
    assert not (tmp_path / "o.csv").exists()
