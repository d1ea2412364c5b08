"""The one way from a model reference to a local bundle folder, for every command.

A reference is any of
    a local folder           the bundle itself, or any folder with exactly one radpriv_model.json below it
    <32-hex run id>          the run's logged model (`runs:/<id>/model`)
    runs:/<id>/<path>        normally runs:/<id>/model
    models:/<name>@<alias>   a registered version, by alias
    models:/<name>/<version> a registered version, by number (or `latest`)
MLflow references are resolved to their run by `registry.resolve_model_uri`, then the run's
model is downloaded under a folder the caller owns (usually a temporary one). Every failure is
one ModelError line naming the reference as the user wrote it (`what`: "model=<ref>",
"finetune.init_from=<ref>", "run_id=<id>").

`run_json` reads one small JSON file a run logged (privacy.json, label_schema.json): this module
is the only place that downloads from the artifact store, so every command fetches the same way.

`privacy_facts` says what a resolved model cost in privacy: the registered version's tags, else
its run's privacy.json, else the bundle's own radpriv_model.json.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from radpriv.errors import ModelError
from radpriv.model.bundle import META, load_meta


@dataclass(frozen=True)
class LocalBundle:
    """A model reference resolved to a bundle folder on this machine."""

    folder: Path
    ref: str                     # what the user wrote
    display: str                 # for log lines: "run …", "models:/x@champion (version 3, run …)", a folder
    run_id: str | None = None    # None: a local folder
    name: str | None = None      # registered model name (models:/ references)
    version: str | None = None   # registered version


def _one_bundle_below(root: Path, what: str, where: str) -> Path:
    """The folder of the only radpriv_model.json at or below `root`."""
    if (root / META).is_file():
        return root
    found = sorted(root.rglob(META))
    if not found:
        raise ModelError(f"{what}: no radpriv model ({META}) in {where}")
    if len(found) > 1:
        raise ModelError(f"{what}: {len(found)} radpriv models ({META}) below {where}; give the folder "
                         f"of one of them, e.g. {found[0].parent}")
    return found[0].parent


def local_bundle(ref: str, tracking_uri: str | None, dst: Path, what: str | None = None) -> LocalBundle:
    """A local bundle folder for any model reference (see the module docstring).

    A folder is used where it is; a logged model is downloaded under `dst`. `tracking_uri`: the
    store MLflow references are looked up in (None: MLFLOW_TRACKING_URI, else radpriv's default).
    `what` names the reference in errors (default "model=<ref>").
    """
    ref = str(ref).strip()
    what = what or f"model={ref}"
    path = Path(ref).expanduser()
    if ref and path.is_dir():
        folder = _one_bundle_below(path, what, "that folder")
        return LocalBundle(folder=folder, ref=ref, display=str(folder))

    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from radpriv.tracking import registry
    from radpriv.tracking.mlflow_run import tracking_uri as resolve_uri

    resolved = registry.resolve_model_uri(ref, tracking_uri, what=what)  # checks the form first
    uri = resolve_uri(tracking_uri)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = download_artifacts(artifact_uri=resolved.uri, dst_path=str(dst), tracking_uri=uri)
    except (MlflowException, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"{what}: run {resolved.run_id} has no logged model at {resolved.uri} in {uri}: "
                         f"{first}") from None
    folder = _one_bundle_below(Path(local), what, f"{resolved.uri} (not a radpriv model)")
    if resolved.version is not None:
        display = f"{ref} (version {resolved.version}, run {resolved.run_id})"
    elif ref == resolved.run_id:
        display = f"run {resolved.run_id}"
    else:
        display = f"{ref} (run {resolved.run_id})"
    return LocalBundle(folder=folder, ref=ref, display=display, run_id=resolved.run_id,
                       name=resolved.name, version=resolved.version)


def run_json(client, run_id: str, name: str) -> dict | list | None:
    """The JSON artifact `name` of run `run_id` (e.g. privacy.json), or None when the run has no
    such file (an older or foreign run): callers fall back to what else they know."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, name, tmp)
        except (MlflowException, OSError):
            return None
        return json.loads(Path(path).read_text())


def privacy_facts(bundle: LocalBundle, tracking_uri: str | None) -> dict:
    """The model's privacy facts and labels: the registered version's tags (models:/), else its
    run's privacy.json and label_schema.json, else the bundle's radpriv_model.json (a local
    folder, or an older run); what a richer source lacks is filled in from the next."""
    from radpriv.tracking import registry

    if bundle.run_id is None:
        return registry.facts_from_bundle_meta(load_meta(bundle.folder))
    client, _ = registry.registry_client(tracking_uri)
    facts: dict = {}
    if bundle.version is not None:
        facts = registry.facts_from_tags(client.get_model_version(bundle.name, bundle.version).tags)
    if "epsilon" not in facts and "private" not in facts:
        facts = registry.run_facts(client, bundle.run_id)
    if "private" not in facts:
        facts = {**registry.facts_from_bundle_meta(load_meta(bundle.folder)), **facts}
    return facts
