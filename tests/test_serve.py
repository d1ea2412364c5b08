"""The pyfunc model a training run logs, served by a real `mlflow models serve` process.

The server runs on 127.0.0.1 at a free port in its own process group (it starts uvicorn as a
child), is waited for at most SERVE_TIMEOUT_S, and the whole group is killed in `finally`.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from radpriv.data.schemas import CT_RATE18
from radpriv.model.bundle import load_bundle, predict_proba
from tests.helpers.cli import TINY, train_json
from tests.helpers.serve import free_port, post, server_env, start, stop, wait_until_ready

pytestmark = pytest.mark.integration  # make test-all (the integration tier)


def as_tensor(predictions: list[dict]) -> torch.Tensor:
    return torch.tensor([[row[n] for n in CT_RATE18] for row in predictions])


def test_mlflow_models_serve_answers_with_label_probabilities(tmp_path, tracking_uri, capsys, reports_csv):
    csv_path, texts = reports_csv
    out, _ = train_json(capsys, [*TINY, f"data.path={csv_path}", "privacy.epsilon=null",
                                 "trainer.max_epochs=1"])
    model_uri = f"runs:/{out['run_id']}/model"

    # the signature, its batch_size parameter, the input example and the privacy facts are logged
    info = mlflow.models.get_model_info(model_uri)
    assert info.signature.inputs.input_names() == ["text"]
    assert info.signature.outputs.input_names() == list(CT_RATE18)
    assert [p.name for p in info.signature.params.params] == ["batch_size"]
    assert info.saved_input_example_info["type"] == "dataframe"
    assert info.metadata["radpriv"]["label_names"] == list(CT_RATE18)
    assert info.metadata["radpriv"]["privacy"]["private"] is False
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "m")))
    serving_example = json.loads((local / "serving_input_example.json").read_text())
    bundle = load_bundle(next(local.rglob("radpriv_model.json")).parent)

    port = free_port()
    mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    log = tmp_path / "serve.log"
    proc = start([mlflow_cli, "models", "serve", "-m", model_uri, "--env-manager", "local",
                  "-h", "127.0.0.1", "-p", str(port), "-w", "1"], log, server_env(tracking_uri))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(proc, f"{base}/ping", log)
        sample = texts[:4]
        expected = predict_proba(bundle, sample)
        split = post(f"{base}/invocations",
                     {"dataframe_split": {"columns": ["text"], "data": [[t] for t in sample]}})
        torch.testing.assert_close(as_tensor(split["predictions"]), expected, atol=1e-5, rtol=0)
        inputs = post(f"{base}/invocations", {"inputs": sample, "params": {"batch_size": 1}})
        torch.testing.assert_close(as_tensor(inputs["predictions"]), expected, atol=1e-5, rtol=0)
        example = post(f"{base}/invocations", serving_example)  # the logged example serves as is
        assert len(example["predictions"]) == 1 and set(example["predictions"][0]) == set(CT_RATE18)
    finally:
        stop(proc)
    assert proc.poll() is not None
    server_log = log.read_text()
    assert not any(t in server_log for t in sample), "the server logged report text"
