"""radpriv.tracking.parent_run: the parent run of tune, sweep and pate."""

import os

import mlflow
import pytest

from radpriv.tracking.parent_run import ParentRun, experiment_id, open_parent_run

TAGS = {"radpriv.sweep": "true", "radpriv.dataset": "demo"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """One store for the module (a fresh sqlite store costs seconds); each test its own names."""
    return mlflow.MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('parent_run') / 'm.db'}")


def test_a_new_run_in_the_experiment_ends_finished(client):
    with open_parent_run(client, "exp-a", "sweep demo", TAGS) as parent:
        assert isinstance(parent, ParentRun) and parent.owned and not parent.joined_from_mlflow_run
        assert parent.experiment_name == "exp-a"
        assert parent.experiment_id == client.get_experiment_by_name("exp-a").experiment_id
        assert client.get_run(parent.run_id).info.status == "RUNNING"
    run = client.get_run(parent.run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == parent.experiment_id
    assert run.info.run_name == "sweep demo" and {k: run.data.tags[k] for k in TAGS} == TAGS


def test_an_exception_ends_it_failed_and_is_reraised(client):
    with pytest.raises(ValueError, match="boom"), open_parent_run(client, "exp-a", "r", TAGS) as parent:
        raise ValueError("boom")
    assert client.get_run(parent.run_id).info.status == "FAILED"


def test_keyboard_interrupt_ends_it_killed(client):
    with pytest.raises(KeyboardInterrupt), open_parent_run(client, "exp-a", "r", TAGS) as parent:
        raise KeyboardInterrupt
    assert client.get_run(parent.run_id).info.status == "KILLED"


@pytest.mark.parametrize("error", [None, ValueError])
def test_the_mlflow_run_is_joined_tagged_hidden_and_left_alone(client, monkeypatch, error):
    exp = client.create_experiment(f"outer-exp-{error}")
    outer = client.create_run(exp, run_name="mlflow run").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", outer)
    try:
        with open_parent_run(client, "ignored", "ignored", TAGS) as parent:
            assert "MLFLOW_RUN_ID" not in os.environ
            assert parent == ParentRun(outer, exp, f"outer-exp-{error}", owned=False, joined_from_mlflow_run=True)
            if error:
                raise error("boom")
    except ValueError:
        assert error is ValueError
    assert os.environ["MLFLOW_RUN_ID"] == outer
    run = client.get_run(outer)
    assert run.info.status == "RUNNING" and {k: run.data.tags[k] for k in TAGS} == TAGS
    assert client.get_experiment_by_name("ignored") is None


def test_the_experiment_is_created_once_when_missing(client):
    assert client.get_experiment_by_name("exp-b") is None
    first = experiment_id(client, "exp-b")
    assert experiment_id(client, "exp-b") == first
    with open_parent_run(client, "exp-b", "r1", {}) as p1, open_parent_run(client, "exp-b", "r2", {}) as p2:
        assert p1.experiment_id == p2.experiment_id == first
    assert [e.name for e in client.search_experiments() if e.name == "exp-b"] == ["exp-b"]


def test_a_lost_creation_race_uses_the_winners_experiment(client, monkeypatch):
    winner = client.create_experiment("exp-c")
    real = client.get_experiment_by_name
    calls = []

    def stale_then_real(name):  # the first look misses: another worker creates it meanwhile
        calls.append(name)
        return None if len(calls) == 1 else real(name)

    monkeypatch.setattr(client, "get_experiment_by_name", stale_then_real)
    assert experiment_id(client, "exp-c") == winner


@pytest.mark.parametrize("given, expected", [("zealous-hound-44", "sweep openi"), ("my sweep", "my sweep")])
def test_a_joined_run_loses_mlflows_random_name_and_keeps_a_chosen_one(client, monkeypatch, given, expected):
    exp = client.create_experiment(f"named-{given}")
    outer = client.create_run(exp, run_name=given).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", outer)
    with open_parent_run(client, "ignored", "sweep openi", TAGS):
        pass
    assert client.get_run(outer).info.run_name == expected
