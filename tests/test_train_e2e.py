"""End to end: `radpriv train` on fabricated reports into a temporary sqlite MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch

from radpriv.data.schemas import CT_RATE18
from tests.helpers.cli import TINY, all_files_text, error_lines, train_json


def printed_job_is_logged(capsys, overrides, params) -> None:
    """`radpriv train --cfg job` printed exactly the config the run logged as its params."""
    import yaml

    from radpriv.cli import run
    from radpriv.tracking.mlflow_run import flatten

    assert run(["train", "--cfg", "job", *overrides]) == 0
    printed = flatten(yaml.safe_load(capsys.readouterr().out))
    assert printed and {k: params.get(k) for k in printed} == printed


def test_private_run_logs_the_contract_and_no_text(tmp_path, tracking_uri, capsys, reports_csv):
    csv_path, texts = reports_csv
    overrides = [*TINY, f"data.path={csv_path}", "privacy.epsilon=2"]
    out, printed = train_json(capsys, overrides)
    run_id = out["run_id"]
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    printed_job_is_logged(capsys, overrides, run.data.params)
    m = run.data.metrics
    for key in ("val/f1_weighted", "test/f1_weighted", "test/f1_micro", "test/f1_macro",
                "test/auroc_macro", "test/f1/Cardiomegaly", "privacy/epsilon", "privacy/delta",
                "privacy/noise_multiplier", "privacy/sample_rate", "privacy/steps", "privacy/epsilon_add_remove",
                "privacy/epsilon_add_remove_pld", "privacy/epsilon_replace_one_rdp"):
        assert key in m, key
    assert 0.99 * 2 <= m["privacy/epsilon"] <= 2.0
    assert float(run.data.params["privacy.epsilon"]) == 2.0
    assert run.data.params["privacy.adjacency"] == "replace_one" and run.data.tags["radpriv.adjacency"] == "replace_one"
    assert m["privacy/epsilon_add_remove"] < m["privacy/epsilon"]  # the literature's figure, labelled apart
    assert run.info.experiment_id == client.get_experiment_by_name("radpriv-ct_rate_text").experiment_id
    assert not any(k.startswith("train/loss") for k in m), "training loss must not be logged under DP"
    history = client.get_metric_history(run_id, "privacy/epsilon")
    assert len(history) >= 2  # per epoch and final
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"adapter", "label_schema.json", "privacy.json", "config.yaml", "plots"} <= arts
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path / "dl")))
    privacy = json.loads((local / "privacy.json").read_text())
    assert privacy["private"] and privacy["steps"] == privacy["planned_steps"]
    assert privacy["adjacency"] == "replace_one" and privacy["unit"] == "report"
    assert set(privacy["record_sets"]) == {"training", "validation", "test"}
    assert "without DP" in privacy["record_sets"]["validation"]["guarantee"]
    assert (local / "plots" / "per_label_f1.png").stat().st_size > 1000

    # the adapter reloads with PeftModel.from_pretrained and predicts as the logged model does
    from peft import PeftModel
    from safetensors.torch import load_file

    from radpriv.model.bundle import load_bundle, predict_proba
    from radpriv.model.classifier import ReportClassifier
    from radpriv.model.encoder import load_encoder, resolve_spec

    model_dir = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "m")))
    bundle = load_bundle(next(model_dir.rglob("radpriv_model.json")).parent)
    base, _ = load_encoder(resolve_spec("tiny_bert"), seed=42)
    encoder = PeftModel.from_pretrained(base, local / "adapter")
    net = ReportClassifier(encoder, len(CT_RATE18), dropout=0.0)
    net.head.load_state_dict(load_file(str(local / "adapter" / "classifier_head.safetensors")))
    net.eval()
    sample = texts[:5]
    expected = predict_proba(bundle, sample)
    from radpriv.model.bundle import LoadedModel

    got = predict_proba(LoadedModel(net=net, tokenizer=bundle.tokenizer, meta=bundle.meta,
                                    precision=bundle.precision), sample)
    torch.testing.assert_close(got, expected)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    import pandas as pd

    df = pyfunc.predict(pd.DataFrame({"text": sample}))
    assert list(df.columns) == list(CT_RATE18)
    torch.testing.assert_close(torch.tensor(df.values, dtype=torch.float32), expected)

    # no report sentence anywhere: the store, artifacts, checkpoints (cwd = tmp_path), stdout/stderr
    captured = capsys.readouterr()
    haystack = all_files_text(tmp_path) + printed + captured.out + captured.err
    assert (tmp_path / "checkpoints").is_dir() and (tmp_path / "mlruns").is_dir()
    for t in texts:
        for sentence in t.rstrip(".").split(". "):
            assert sentence not in haystack, sentence


def test_non_private_run_through_the_same_code(tmp_path, tracking_uri, capsys, reports_csv):
    overrides = [*TINY, f"data.path={reports_csv[0]}", "privacy.epsilon=null"]
    out, _ = train_json(capsys, overrides)
    m = mlflow.MlflowClient(tracking_uri).get_run(out["run_id"]).data.metrics
    printed_job_is_logged(capsys, overrides, mlflow.MlflowClient(tracking_uri).get_run(out["run_id"]).data.params)
    assert "test/f1_weighted" in m and "privacy/epsilon" not in m
    assert "train/loss" in m


@pytest.mark.parametrize("override, message", [
    ("privacy.epsilon=0", "epsilon"),
    ("privacy.epsilon=-1", "epsilon"),
    ("privacy.delta=0.5", "delta"),
    ("model=nonexistent", "unknown model"),
    ("data=nonexistent", "unknown data"),
    ("model=custom", "model.source"),
])
def test_bad_input_is_one_line_and_leaves_no_run(tmp_path, tracking_uri, capsys, reports_csv,
                                                 override, message):
    from radpriv.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY, f"data.path={reports_csv[0]}", override])
    assert exit_info.value.code == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("radpriv: error:") and message in err[0].lower(), err
    client = mlflow.MlflowClient(tracking_uri)
    assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_missing_file_is_one_line(tmp_path, tracking_uri, capsys):
    from radpriv.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY, f"data.path={tmp_path / 'absent.csv'}"])
    assert exit_info.value.code == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "absent.csv" in err[0]


def test_nested_run_carries_parent_tags_and_run_key(tracking_uri, reports_csv, capsys):
    """Tune, sweep and audit nest their runs through tracking.parent_run_id; sweeps find a
    finished cell again through the run-key tag."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.create_experiment("parent-exp")
    parent = client.create_run(exp).info.run_id
    out, _ = train_json(capsys, [*TINY, f"data.path={reports_csv[0]}", "privacy.epsilon=null",
                                 f"tracking.parent_run_id={parent}", "+tracking.tags.cell=a1"])
    tags = client.get_run(out["run_id"]).data.tags
    assert tags["mlflow.parentRunId"] == parent
    assert tags["cell"] == "a1"
    assert len(tags["radpriv.run_key"]) == 20 and tags["radpriv.complete"] == "true"


def test_dp_thresholds_protect_the_validation_reports_and_compose_into_the_total(tracking_uri, capsys, reports_csv):
    """trainer.thresholds=dp: no val/* metric is published, the thresholds come from the DP
    mechanism, and privacy.json states the validation guarantee and the composed total."""
    from radpriv.privacy import dp_thresholds

    out, _ = train_json(capsys, [*TINY, f"data.path={reports_csv[0]}", "privacy.epsilon=2", "trainer.thresholds=dp",
                                 "trainer.threshold_epsilon=1"])
    client = mlflow.MlflowClient(tracking_uri)
    m = client.get_run(out["run_id"]).data.metrics
    assert not [k for k in m if k.startswith("val/")]
    local = Path(client.download_artifacts(out["run_id"], "privacy.json"))
    privacy = json.loads(local.read_text())
    validation = privacy["record_sets"]["validation"]
    assert validation["dp"] and validation["guarantee"].endswith("-DP for each validation report (replace-one)")
    assert 0.99 <= float(validation["guarantee"][1:].split(",")[0]) <= 1.0
    assert max(privacy["epsilon"], 1.0) < privacy["epsilon_total"] <= privacy["epsilon"] + 1.0
    assert m["privacy/epsilon_total"] == privacy["epsilon_total"]
    schema = json.loads(Path(client.download_artifacts(out["run_id"], "label_schema.json")).read_text())
    grid = [float(g) for g in dp_thresholds.threshold_grid()]
    assert all(min(abs(t - g) for g in grid) < 1e-6 for t in schema["thresholds"].values())


def test_dp_thresholds_need_a_private_run(tracking_uri, capsys, reports_csv):
    from radpriv.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY, f"data.path={reports_csv[0]}", "privacy.epsilon=null", "trainer.thresholds=dp"])
    assert exit_info.value.code == 2
    assert "trainer.thresholds=dp" in capsys.readouterr().err


def test_secure_mode_trains_with_the_csprng_and_says_so(tracking_uri, capsys, reports_csv):
    out, _ = train_json(capsys, [*TINY, f"data.path={reports_csv[0]}", "privacy.epsilon=2", "trainer.max_epochs=1",
                                 "privacy.secure_mode=true", "tracking.log_model=false"])
    client = mlflow.MlflowClient(tracking_uri)
    privacy = json.loads(Path(client.download_artifacts(out["run_id"], "privacy.json")).read_text())
    assert privacy["randomness"].startswith("ChaCha20") and privacy["steps"] == privacy["planned_steps"]
    assert 0.99 * 2 <= privacy["epsilon"] <= 2
