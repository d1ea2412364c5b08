"""What a person sees of a run in the MLflow UI: its name, its Description (the guarantee first),
its dataset inputs (metadata only) and, for a registered version, the model card."""

from __future__ import annotations

import json

import mlflow
import pytest

from radpriv.tracking import naming
from radpriv.tracking.description import NOTE_TAG, run_note
from radpriv.tracking.model_card import CARD_ARTIFACT, model_card
from tests.helpers.cli import TINY, train_json


def _cfg(**privacy):
    return {"model": {"name": "minilm", "source": "minilm"}, "data": {"name": "openi"},
            "finetune": {"mode": "lora"}, "privacy": {"epsilon": 0.1, "unit": "report", **privacy},
            "trainer": {"max_epochs": 8, "precision": "bf16-mixed"}, "seed": 42}


def test_run_names_say_what_the_run_is():
    assert naming.run_name(_cfg()) == "minilm-openi-dp-eps0.1-seed42"
    assert naming.run_name(_cfg(epsilon=None)) == "minilm-openi-nonprivate-seed42"
    assert naming.run_name(_cfg(epsilon=10, unit="patient")) == "minilm-openi-dp-eps10-patient-seed42"
    full = _cfg()
    full["finetune"]["mode"] = "full"
    assert naming.run_name(full) == "minilm-openi-full-dp-eps0.1-seed42"


@pytest.mark.parametrize("name, generated", [("zealous-hound-44", True), ("bemused-owl-7", True), (None, True),
                                             ("minilm-openi-dp-eps0.1-seed42", False), ("baseline", False),
                                             ("my run 3", False)])
def test_mlflow_generated_names_are_recognised(name, generated):
    assert naming.is_generated(name) is generated


PRIVATE = {"private": True, "epsilon": 0.0998, "delta": 1.75e-4, "unit": "report", "adjacency": "replace_one",
           "guarantee": "(0.0998, 0.000175)-DP for each report of the training split under replace-one",
           "n_train": 2609,
           "record_sets": {"validation": {"use": "per-label decision thresholds", "guarantee": "none: used "
                                          "without DP", "dp": False},
                           "test": {"use": "the released test/* metrics", "guarantee": "none", "dp": False}}}


def test_the_description_states_the_guarantee_first_and_names_what_was_used_without_dp():
    note = run_note(PRIVATE, _cfg(), {"test/f1_weighted": 0.392, "test/auroc_macro": 0.672}, "openi-demo")
    first = note.split("### What was trained")[0]
    assert "(0.0998, 0.000175)-DP for each report" in first and "replace-one" in first
    assert "validation split" in first and "without DP" in first and "test split" in first
    assert "weighted F1: 0.392" in note and "`openi-demo`" in note
    public = run_note({"private": False, "n_train": 10, "record_sets": PRIVATE["record_sets"]},
                      _cfg(epsilon=None), {})
    assert public.startswith("### Privacy\n**No differential-privacy guarantee**")


def test_the_model_card_has_privacy_use_data_labels_metrics_with_cis_and_limitations():
    card = model_card("openi-demo", "3", "abc123", {"dataset": "openi", "labels": ["Edema", "Fracture"],
                                                    "epsilon": 1.0, "private": True},
                      {"test/f1_weighted": 0.55, "test/f1_weighted_ci_low": 0.52, "test/f1_weighted_ci_high": 0.58},
                      "(ε=1, δ=0.000175)-DP for each training report (replace-one)")
    for part in ("# openi-demo version 3", "## Privacy", "(ε=1, δ=0.000175)-DP", "## Intended use",
                 "Trained on `openi`", "Edema, Fracture", "weighted F1: 0.550 (95% CI 0.520–0.580)",
                 "## Limitations", "not validated on"):
        assert part in card, part


@pytest.mark.integration
def test_a_trained_and_registered_run_explains_itself(tracking_uri, capsys, reports_csv, monkeypatch):
    client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
    # as `mlflow run` does: the run exists, with one of MLflow's random names, before radpriv starts
    exp = client.create_experiment("radpriv-documents")
    opened = client.create_run(exp, run_name="zealous-hound-44").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", opened)
    summary, _ = train_json(capsys, [*TINY, f"data.path={reports_csv[0]}", "privacy.epsilon=2",
                                     "tracking.register=documents"])
    run_id = summary["run_id"]
    assert run_id == opened
    run = client.get_run(run_id)
    assert run.info.run_name == "tiny_bert-ct_rate_text-dp-eps2-seed42"
    note = run.data.tags[NOTE_TAG]
    assert note.startswith("### Privacy\n(") and "-DP for each report" in note
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "testing"}
    privacy = json.loads(open(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="privacy.json"))
                         .read())
    assert json.loads(inputs["training"].profile) == {"num_rows": privacy["n_train"]}
    assert inputs["validation"].profile in (None, "null") and inputs["testing"].profile in (None, "null")
    assert all(len(d.digest) == 16 for d in inputs.values())
    assert len({d.digest for d in inputs.values()}) == 3
    card = mlflow.artifacts.load_text(f"runs:/{run_id}/{CARD_ARTIFACT}")
    version = client.get_model_version("documents", "1")
    assert version.description == card and "## Privacy" in card and "## Limitations" in card


@pytest.mark.integration
def test_a_users_run_name_wins_and_a_chosen_name_is_kept(tracking_uri, capsys, reports_csv, monkeypatch):
    client = mlflow.MlflowClient(tracking_uri)
    summary, _ = train_json(capsys, [*TINY, "trainer.max_epochs=1", f"data.path={reports_csv[0]}",
                                     "privacy.epsilon=null", "run_name=my-baseline", "tracking.log_model=false"])
    assert client.get_run(summary["run_id"]).info.run_name == "my-baseline"
    opened = client.create_run(client.get_run(summary["run_id"]).info.experiment_id,
                               run_name="baseline for the review").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", opened)
    summary, _ = train_json(capsys, [*TINY, "trainer.max_epochs=1", f"data.path={reports_csv[0]}",
                                     "privacy.epsilon=null", "tracking.log_model=false"])
    assert summary["run_id"] == opened and client.get_run(opened).info.run_name == "baseline for the review"
