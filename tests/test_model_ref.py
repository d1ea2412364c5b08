"""radpriv/tracking/model_ref.py: every model reference form resolves to the same bundle, every bad
one is a single ModelError line naming the reference; and radpriv/model/ never talks to MLflow.

One tiny private model is trained per module and registered as ref-tiny@champion.
"""

from __future__ import annotations

import ast
import hashlib
import shutil
from pathlib import Path

import mlflow
import pytest

from radpriv.errors import ModelError
from radpriv.model.bundle import META
from radpriv.tracking.model_ref import local_bundle, privacy_facts
from tests.helpers.cli import TINY
from tests.helpers.store import module_store

MODEL_NAME = "ref-tiny"
EPSILON = 3.0
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A private tiny model (1 epoch) registered as ref-tiny version 1 @champion, and its
    bundle downloaded once by MLflow itself (the folder forms' reference copy)."""
    from radpriv.config import compose
    from radpriv.train import train

    with module_store(tmp_path_factory, "model_ref") as store:
        root, uri = store.root, store.uri
        summary = train(compose([*TINY, f"data.path={store.csv}", "trainer.max_epochs=1",
                                 f"privacy.epsilon={EPSILON}", f"tracking.register={MODEL_NAME}",
                                 "tracking.register_alias=champion"]))
        downloaded = Path(mlflow.artifacts.download_artifacts(
            f"runs:/{summary['run_id']}/model", dst_path=str(root / "dl"), tracking_uri=uri))
        yield {"run_id": summary["run_id"], "uri": uri, "downloaded": downloaded,
               "bundle_dir": next(downloaded.rglob(META)).parent}


@pytest.fixture
def store(trained, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    return trained


def _contents(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file of a bundle folder."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _forms(store) -> dict[str, tuple[str, str | None]]:
    """reference -> (expected run id or None for a folder, expected registered version or None)."""
    run_id = store["run_id"]
    return {
        str(store["bundle_dir"]): (None, None),          # the bundle itself
        str(store["downloaded"]): (None, None),          # a folder with exactly one bundle below it
        run_id: (run_id, None),
        f"runs:/{run_id}/model": (run_id, None),
        f"models:/{MODEL_NAME}@champion": (run_id, "1"),
        f"models:/{MODEL_NAME}/1": (run_id, "1"),
    }


def test_every_reference_form_resolves_to_the_same_bundle(store, tmp_path):
    expected = _contents(store["bundle_dir"])
    assert META in expected and len(expected) > 2
    for i, (ref, (run_id, version)) in enumerate(_forms(store).items()):
        got = local_bundle(ref, store["uri"], tmp_path / str(i), what=f"model={ref}")
        assert (got.folder / META).is_file(), ref
        assert _contents(got.folder) == expected, ref
        assert (got.ref, got.run_id, got.version) == (ref, run_id, version), ref
        assert got.name == (MODEL_NAME if version else None), ref
        assert run_id is None or run_id in got.display, (ref, got.display)
        if version:
            assert f"version {version}" in got.display


def test_tracking_uri_defaults_to_the_environment(store, tmp_path):
    got = local_bundle(store["run_id"], None, tmp_path)
    assert got.run_id == store["run_id"] and got.display == f"run {store['run_id']}"


def test_privacy_facts_from_tags_run_and_bundle(store, tmp_path):
    registered = privacy_facts(local_bundle(f"models:/{MODEL_NAME}@champion", None, tmp_path / "m"), None)
    from_run = privacy_facts(local_bundle(store["run_id"], None, tmp_path / "r"), None)
    from_folder = privacy_facts(local_bundle(str(store["bundle_dir"]), None, tmp_path / "f"), None)
    for facts in (registered, from_run, from_folder):
        assert facts["private"] is True and facts["epsilon"] <= EPSILON + 1e-9, facts
        assert len(facts["labels"]) == 18
    # the run's privacy.json and the version's tags carry σ; a bare bundle does not
    assert "noise_multiplier" in registered and "noise_multiplier" in from_run
    assert "noise_multiplier" not in from_folder


def _one_line_error(ref: str, what: str, tracking_uri: str | None, dst: Path) -> str:
    with pytest.raises(ModelError) as info:
        local_bundle(ref, tracking_uri, dst, what=what)
    message = str(info.value)
    assert len(message.strip().splitlines()) == 1, message
    assert message.startswith(what), message
    return message


def test_bad_references_are_one_model_error_line_naming_what(store, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    two = tmp_path / "two"
    for sub in ("a", "b"):
        shutil.copytree(store["bundle_dir"], two / sub)
    cases = {
        "0123456789abcdef0123456789abcdef": "no run",                   # unknown run id
        f"runs:/{'f' * 32}/model": "no run",
        f"models:/{MODEL_NAME}@nope": "does not resolve",               # unknown alias
        f"models:/{MODEL_NAME}/99": "does not resolve",                 # unknown version
        "models:/no-such-model@champion": "does not resolve",
        str(empty): "no radpriv model",                                 # a folder with no bundle
        str(two): "2 radpriv models",                                   # a folder with two
        "not a model at all": "is not a folder",                        # garbage
        "": "is not a folder",
    }
    for i, (ref, expected) in enumerate(cases.items()):
        for what in (f"model={ref}", f"finetune.init_from={ref}", f"run_id={ref}"):
            message = _one_line_error(ref, what, store["uri"], tmp_path / f"dst{i}")
            assert expected in message, (ref, message)


def test_a_garbage_reference_fails_before_the_store_is_opened(tmp_path, monkeypatch):
    """The form is checked first: a bad reference creates no sqlite store."""
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "never.db"
    _one_line_error("nothing-like-a-model", "model=nothing-like-a-model", f"sqlite:///{db}", tmp_path / "dst")
    assert not db.exists()


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_model_package_resolves_no_reference_through_mlflow():
    """radpriv/model/ reads bundle folders; resolving a reference is tracking/model_ref.py's job,
    and finding the public model run by run key is radpriv.train's."""
    offences = []
    for path in sorted((ROOT / "radpriv" / "model").glob("*.py")):
        for name in _imports(path):
            if name == "mlflow" or name.startswith("mlflow."):
                offences.append(f"{path.name}: imports {name}")
            if name.startswith("radpriv.tracking"):
                offences.append(f"{path.name}: imports {name}")
    assert not offences, offences
