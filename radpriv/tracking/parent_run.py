"""The parent run of a command that opens runs of its own: tune, sweep and pate.

One context manager, `open_parent_run`, so that every such command joins, creates and ends its
parent MLflow run the same way; the run ids it hands on (trials, cells, teachers) are passed
explicitly, never through the environment; `mlflow_run_id` is the one reader of MLFLOW_RUN_ID.
`radpriv audit` opens no parent run (the audited
training run is the audit run: radpriv/audit/run.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from radpriv.tracking.naming import is_generated

ENV = "MLFLOW_RUN_ID"


@dataclass(frozen=True)
class ParentRun:
    run_id: str
    experiment_id: str
    experiment_name: str
    owned: bool  # we created it, so we end it
    joined_from_mlflow_run: bool  # the run `mlflow run` opened (MLFLOW_RUN_ID)


def experiment_id(client, name: str) -> str:
    """The experiment's id, created if missing (workers started together on a new store race to
    create it: the loser uses the winner's)."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def mlflow_run_id() -> str | None:
    """The run `mlflow run` opened for this process (MLFLOW_RUN_ID), or None.

    The only reader of that variable: every other module gets the run id from here, or from
    the ParentRun that `open_parent_run` yields, so a command never joins a run by accident."""
    return os.environ.get(ENV) or None


@contextmanager
def open_parent_run(client, experiment: str, run_name: str, tags: dict) -> Iterator[ParentRun]:
    """The invocation's parent run: the one `mlflow run` opened (MLFLOW_RUN_ID), else a new one.

    - MLFLOW_RUN_ID is hidden for the whole block and restored after it (also on error):
      `mlflow run` sets it for the whole process, and the runs this command opens itself (trials,
      sweep cells, PATE teachers, nested under the parent) go through radpriv.train, which would
      otherwise log into that run instead of opening their own. Code in the block that needs
      the joined run uses the yielded `ParentRun`, not the environment.
    - Joined (MLFLOW_RUN_ID set): that run, in its own experiment (`experiment` is ignored),
      tagged with `tags`, renamed `run_name` only if MLflow named it at random; it belongs to
      `mlflow run`, so it is never terminated here.
    - Otherwise a new run named `run_name` with `tags` in `experiment`, created if missing
      (race-safe: `experiment_id`). This owned run ends FINISHED when the block exits normally,
      KILLED on KeyboardInterrupt, FAILED on any other exception (which is re-raised).
    """
    joined = os.environ.pop(ENV, None)
    try:
        if joined:
            run = client.get_run(joined)
            exp = client.get_experiment(run.info.experiment_id)
            for k, v in tags.items():
                client.set_tag(joined, k, v)
            if is_generated(run.info.run_name):  # MLflow's random name; one a person gave is kept
                client.set_tag(joined, "mlflow.runName", run_name)
            parent = ParentRun(joined, exp.experiment_id, exp.name, owned=False, joined_from_mlflow_run=True)
        else:
            exp_id = experiment_id(client, experiment)
            run_id = client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
            parent = ParentRun(run_id, exp_id, experiment, owned=True, joined_from_mlflow_run=False)
        try:
            yield parent
        except BaseException as e:
            if parent.owned:
                client.set_terminated(parent.run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
        if parent.owned:
            client.set_terminated(parent.run_id, "FINISHED")
    finally:
        if joined is not None:
            os.environ[ENV] = joined
