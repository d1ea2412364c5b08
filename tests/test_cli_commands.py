"""CLI behaviours beyond training itself: evaluate, offline models, full fine-tuning under DP,
and the privacy state a checkpoint carries."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch

from radpriv.cli import main, run
from tests.helpers.cli import TINY, error_lines, train_json


@pytest.mark.integration
def test_evaluate_scores_a_logged_model_on_every_row(tmp_path, tracking_uri, capsys, reports_csv):
    csv_path, texts = reports_csv
    trained, _ = train_json(capsys, [*TINY, f"data.path={csv_path}", "privacy.epsilon=4"])
    assert run(["evaluate", f"run_id={trained['run_id']}", "data=ct_rate_text",
                f"data.path={csv_path}", "model=tiny_bert"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["run_id"] == trained["run_id"] and out["n_reports"] == len(texts)
    assert 0.0 <= out["metrics"]["eval/f1_weighted"] <= 1.0


def test_evaluate_with_an_unknown_run_is_one_line(tmp_path, tracking_uri, capsys, reports_csv):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "run_id=0123456789abcdef", "data=ct_rate_text", f"data.path={reports_csv[0]}"])
    assert exit_info.value.code == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "0123456789abcdef" in err[0]


def test_a_hub_model_offline_fails_at_once_with_what_to_do(tmp_path, tracking_uri, capsys,
                                                           reports_csv, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY, f"data.path={reports_csv[0]}", "model=bert_small"])
    assert exit_info.value.code == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "prajjwal1/bert-small" in err[0] and "model.source" in err[0]


@pytest.mark.integration
def test_full_fine_tuning_runs_under_dp(tmp_path, tracking_uri, capsys, reports_csv):
    out, _ = train_json(capsys, [*TINY, f"data.path={reports_csv[0]}", "finetune=full",
                                 "privacy.epsilon=8", "trainer.max_epochs=1"])
    run_data = mlflow.MlflowClient(tracking_uri).get_run(out["run_id"]).data
    assert run_data.metrics["privacy/epsilon"] <= 8.0
    assert "adapter" not in {a.path for a in mlflow.MlflowClient(tracking_uri).list_artifacts(out["run_id"])}


@pytest.mark.integration
def test_checkpoints_carry_the_accountant_and_only_trainable_weights(tmp_path, tracking_uri, capsys,
                                                                     reports_csv):
    out, _ = train_json(capsys, [*TINY, f"data.path={reports_csv[0]}", "privacy.epsilon=3"])
    (path,) = (tmp_path / "checkpoints").glob("*/last.ckpt")
    assert json.loads((path.parent / "run.json").read_text())["run_id"] == out["run_id"]
    ckpt = torch.load(path, weights_only=False)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("DPCallback")]
    history = state["accountant"]["history"]
    assert sum(n for _, _, n in history) == state["plan"]["planned_steps"]
    weights = ckpt["state_dict"]
    assert any("lora_A" in k for k in weights) and any(k.startswith("net.head") for k in weights)
    assert not any(k.endswith("word_embeddings.weight") for k in weights)
