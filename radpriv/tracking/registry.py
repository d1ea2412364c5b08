"""The MLflow model registry: register a run's model, set aliases, resolve a model reference.

A registered version carries its **privacy facts** as model-version tags (`radpriv.*`) and in
its description, so that "models:/chexpert@champion" says what it cost in privacy without
opening its run: ε, δ, the accountant, the noise multiplier, the dataset and the label
schema. They are copied from the run's own `privacy.json` and `label_schema.json` (the files
the training wrote beside the model), never recomputed here; the bundle's
`radpriv_model.json` inside the model artifact carries ε, δ, the accountant and the labels too.

Used by `radpriv train tracking.register=<name> [tracking.register_alias=<alias>]`, by sweeps
and searches that promote their best run (`register_model` + `set_alias(..., "champion")`),
and by radpriv/tracking/model_ref.py, which turns every reference `resolve_model_uri`
understands (and a local folder) into a local bundle for every command that loads a model.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from radpriv.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"  # the name training logs the pyfunc model under (tracking/pyfunc.py)
TAG_PREFIX = "radpriv."
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
# the privacy facts, in the order they are shown: key in privacy.json -> tag suffix
_PRIVACY_KEYS = ("private", "epsilon", "delta", "adjacency", "unit", "epsilon_add_remove", "epsilon_total",
                 "accountant", "noise_multiplier", "sample_rate", "steps", "max_grad_norm", "dataset", "n_train",
                 "n_train_patients")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference points: always a run (radpriv models are logged by runs)."""

    ref: str                 # what the user wrote
    run_id: str
    artifact_path: str = MODEL_ARTIFACT
    name: str | None = None     # registered model name, for models:/ references
    version: str | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        return f"runs:/{self.run_id}/{self.artifact_path}"


def registry_client(tracking_uri: str | None):
    """An MlflowClient on the tracking store (whose registry radpriv uses), and its URI."""
    from mlflow import MlflowClient

    from radpriv.tracking.mlflow_run import tracking_uri as resolve

    uri = resolve(tracking_uri)
    # the registry lives in the tracking store (sqlite / server), never a separate one
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# --------------------------------------------------------------------------- privacy facts

def run_facts(client, run_id: str) -> dict:
    """The privacy facts and label schema a training run wrote (privacy.json, label_schema.json)."""
    from radpriv.tracking.model_ref import run_json

    # None for an older or foreign run: the caller falls back to the bundle's facts
    privacy = run_json(client, run_id, "privacy.json")
    schema = run_json(client, run_id, "label_schema.json")
    if privacy is None and schema is None:
        return {}
    out = {k: privacy[k] for k in _PRIVACY_KEYS if privacy and privacy.get(k) is not None}
    check = (privacy or {}).get("independent_check") or {}
    if check.get("privacy/epsilon_pld") is not None:  # runs whose guarantee was add/remove
        out["epsilon_pld"] = check["privacy/epsilon_pld"]
    validation = ((privacy or {}).get("record_sets") or {}).get("validation")
    if validation:  # how the validation reports were used: with or without DP
        out["validation_dp"] = bool(validation.get("dp"))
    teacher = (privacy or {}).get("teacher")
    if teacher:  # trained on teacher labels: the teacher's reports have their own guarantee
        out["teacher_protected"] = bool(teacher.get("protected"))
        if teacher.get("epsilon") is not None:
            out["teacher_epsilon"] = teacher["epsilon"]
    if schema:
        out["dataset"] = out.get("dataset") or schema.get("dataset")
        out["labels"] = list(schema.get("labels") or [])
    return out


def facts_from_bundle_meta(meta: Mapping) -> dict:
    """The facts a bundle's radpriv_model.json holds (no noise multiplier: see run_facts)."""
    privacy = dict(meta.get("privacy") or {})
    out = {k: privacy[k] for k in _PRIVACY_KEYS if privacy.get(k) is not None}
    out["labels"] = list(meta.get("label_names") or [])
    return out


def facts_to_tags(facts: Mapping) -> dict[str, str]:
    """Model-version tags: `radpriv.epsilon`, `radpriv.labels` (JSON list), …; strings only.

    A non-private model gets `radpriv.private=false` and `radpriv.epsilon=inf`: an infinite ε is
    the true value, and no filter on ε can mistake it for a small one.
    """
    tags = {}
    for key, value in facts.items():
        if key == "labels":
            tags[TAG_PREFIX + "labels"] = json.dumps(list(value))
            tags[TAG_PREFIX + "n_labels"] = str(len(value))
        elif isinstance(value, bool):
            tags[TAG_PREFIX + key] = "true" if value else "false"
        else:
            tags[TAG_PREFIX + key] = str(value)
    if facts.get("private") is False:
        tags[TAG_PREFIX + "epsilon"] = "inf"
    return tags


def facts_from_tags(tags: Mapping[str, str]) -> dict:
    """Inverse of facts_to_tags (numbers back to numbers)."""
    out: dict = {}
    for key, value in tags.items():
        if not key.startswith(TAG_PREFIX):
            continue
        name = key[len(TAG_PREFIX):]
        if name == "labels":
            out[name] = json.loads(value)
        elif name in ("private", "teacher_protected", "validation_dp"):
            out[name] = value == "true"
        elif name in ("steps", "n_train", "n_train_patients", "n_labels"):
            out[name] = int(value)
        elif name in ("epsilon", "delta", "noise_multiplier", "sample_rate", "max_grad_norm",
                      "epsilon_pld", "teacher_epsilon", "epsilon_add_remove", "epsilon_total"):
            out[name] = float(value)
        else:
            out[name] = value
    return out


def describe_facts(facts: Mapping) -> str:
    """One line, for the model-version description and `radpriv predict`'s stderr."""
    labels = facts.get("labels") or []
    where = f"trained on {facts['dataset']}" if facts.get("dataset") else "training data unknown"
    if facts.get("private") is False:
        head = "NOT differentially private (trained without DP)"
    elif facts.get("epsilon") is None:
        head = "privacy unknown (no privacy facts recorded with this model)"
    else:
        parts = [f"ε={facts['epsilon']:.4g}"]
        if facts.get("delta") is not None:
            parts.append(f"δ={facts['delta']:.3g}")
        if facts.get("accountant"):
            parts.append(f"accountant={facts['accountant']}")
        if facts.get("noise_multiplier") is not None:
            parts.append(f"σ={facts['noise_multiplier']:.4g}")
        if facts.get("steps") is not None:
            parts.append(f"steps={facts['steps']}")
        relation = str(facts.get("adjacency") or "add_remove").replace("_", "-")
        unit = "patient" if facts.get("unit") == "patient" else "report"
        head = f"({', '.join(parts)})-DP for each training {unit} ({relation})"
        if facts.get("epsilon_add_remove") is not None and relation != "add-remove":
            head += f"; add/remove figure for comparison ε={facts['epsilon_add_remove']:.4g}"
        if facts.get("epsilon_total") is not None:
            head += f"; with the DP thresholds' validation release ε_total={facts['epsilon_total']:.4g}"
        if facts.get("validation_dp") is False:
            head += "; validation reports used without DP (thresholds, val metrics)"
    if facts.get("teacher_protected") is not None:
        where += ("; labels from a DP teacher (teacher ε=" + f"{facts['teacher_epsilon']:.4g})"
                  if facts["teacher_protected"] and facts.get("teacher_epsilon") is not None
                  else "; labels from a teacher whose training reports are NOT protected")
    # a search or sweep that selected this model on the private data adds its total
    # (e.g. radpriv.tune.epsilon_total): shown beside the run's own ε, never instead of it
    for key, value in sorted(facts.items()):
        if key.endswith("epsilon_total"):
            where += f"; chosen by a search on the private data ({key.split('.')[0]}): total ε={value}"
    return f"{head}; {where}; {len(labels)} labels"


# --------------------------------------------------------------------------- registration

def _logged_model_id(client, run_id: str, artifact_path: str = MODEL_ARTIFACT) -> str:
    """The MLflow 3 LoggedModel id of the run's pyfunc model (the last one logged)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise ModelError(f"run {run_id}: {_first_line(e)}") from None
    outputs = sorted(getattr(run.outputs, "model_outputs", None) or [], key=lambda o: o.step)
    for output in reversed(outputs):
        if client.get_logged_model(output.model_id).name == artifact_path:
            return output.model_id
    raise ModelError(f"run {run_id} logged no {artifact_path!r} model (tracking.log_model=false?): "
                     "nothing to register")


def register_model(run_id: str, name: str, tracking_uri: str | None = None,
                   alias: str | None = None) -> dict:
    """Register the run's pyfunc model as a new version of `name`, with its privacy facts.

    Returns {"name", "version", "alias"} (alias None when not set).
    """
    from mlflow.exceptions import MlflowException

    client, uri = registry_client(tracking_uri)
    model_id = _logged_model_id(client, run_id)
    facts = run_facts(client, run_id)
    try:
        try:
            client.create_registered_model(name)
        except MlflowException as e:
            if "already exists" not in str(e).lower() and "ALREADY_EXISTS" not in str(e.error_code):
                raise
        version = client.create_model_version(
            name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id,
            tags={**facts_to_tags(facts), TAG_PREFIX + "run_id": run_id},
            description=f"radpriv model of run {run_id}: {describe_facts(facts)}",
        )
    except MlflowException as e:
        raise ModelError(f"registering run {run_id}'s model as {name!r} in {uri}: {_first_line(e)}") from None
    from radpriv.tracking.model_card import attach_card

    attach_card(client, name, str(version.version), run_id, facts, describe_facts(facts))
    log.info("registered %s version %s: %s", name, version.version, describe_facts(facts))
    if alias:
        set_alias(name, version.version, alias, uri)
    return {"name": name, "version": str(version.version), "alias": alias or None}


def register_run_model(cfg: Mapping, run_id: str) -> dict:
    """`radpriv train tracking.register=<name> [tracking.register_alias=<alias>]`.

    No alias by default: a fresh training run is not automatically better than the version
    already serving; promotion (`champion`) is a decision a sweep, a search or a person makes.
    """
    tracking = cfg["tracking"]
    return register_model(run_id, str(tracking["register"]), tracking["uri"],
                          alias=tracking["register_alias"] or None)


def set_alias(name: str, version: str | int, alias: str, tracking_uri: str | None = None) -> None:
    """Point `models:/<name>@<alias>` at `version` (moving it from any earlier version)."""
    from mlflow.exceptions import MlflowException

    client, uri = registry_client(tracking_uri)
    try:
        client.set_registered_model_alias(name, str(alias), str(version))
    except MlflowException as e:
        raise ConfigError(f"alias {alias!r} on {name} version {version}: {_first_line(e)}") from None
    log.info("models:/%s@%s -> version %s", name, alias, version)


def model_version_facts(name: str, version_or_alias: str, tracking_uri: str | None = None) -> dict:
    """The privacy facts of a registered version (a number, or an alias), from its tags."""
    resolved = resolve_model_uri(f"models:/{name}/{version_or_alias}" if str(version_or_alias).isdigit()
                                 else f"models:/{name}@{version_or_alias}", tracking_uri)
    client, _ = registry_client(tracking_uri)
    return facts_from_tags(client.get_model_version(name, resolved.version).tags)


# --------------------------------------------------------------------------- resolution

def resolve_model_uri(ref: str, tracking_uri: str | None = None, what: str | None = None) -> ResolvedModel:
    """A run id, `runs:/<id>/<path>`, `models:/<name>@<alias>`, `models:/<name>/<version>` or
    `models:/<name>/latest` → the run that logged the model. Anything that does not resolve is
    a ModelError naming the reference (`what`, e.g. "model=<ref>"; default "model '<ref>'") and
    the store. The form is checked before the store is opened."""
    from mlflow.exceptions import MlflowException

    ref = str(ref).strip()
    what = what or f"model {ref!r}"
    is_run = bool(_RUN_ID.match(ref)) or ref.startswith("runs:/")
    if not is_run and not ref.startswith("models:/"):
        raise ModelError(f"{what} is not a folder, a run id, runs:/<id>/model or "
                         "models:/<name>@<alias> | models:/<name>/<version>")
    client, uri = registry_client(tracking_uri)
    if is_run:
        run_id, _, path = ref.removeprefix("runs:/").strip("/").partition("/")
        try:
            client.get_run(run_id)
        except MlflowException:
            raise ModelError(f"{what}: no run {run_id} in {uri}; check the run id and "
                             "MLFLOW_TRACKING_URI") from None
        return ResolvedModel(ref=ref, run_id=run_id, artifact_path=path or MODEL_ARTIFACT)
    body = ref.removeprefix("models:/").strip("/")
    if body.startswith("m-") and "/" not in body and "@" not in body:  # an MLflow 3 LoggedModel id
        try:
            run_id = client.get_logged_model(body).source_run_id
        except MlflowException as e:
            raise ModelError(f"{what} does not resolve in {uri}: {_first_line(e)}") from None
        if not run_id:
            raise ModelError(f"{what} was not logged by a run; use a radpriv training run's model")
        return ResolvedModel(ref=ref, run_id=run_id)
    try:
        if "@" in body:
            name, alias = body.rsplit("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = body.rpartition("/")
            if not name or not version:
                raise ModelError(f"{what}: write models:/<name>@<alias> or models:/<name>/<version>")
            alias = None
            if version == "latest":
                versions = client.search_model_versions(f"name='{name}'")
                if not versions:
                    raise ModelError(f"{what}: no registered model {name!r} in {uri}")
                mv = max(versions, key=lambda v: int(v.version))
            else:
                mv = client.get_model_version(name, version)
    except MlflowException as e:
        raise ModelError(f"{what} does not resolve in {uri}: {_first_line(e)}") from None
    if not mv.run_id:
        raise ModelError(f"{what}: version {mv.version} was not logged by a run; "
                         "register a radpriv training run's model")
    return ResolvedModel(ref=ref, run_id=mv.run_id, name=name, version=str(mv.version), alias=alias)
