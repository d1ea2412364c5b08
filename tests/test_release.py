"""The release boundary: what a private run publishes holds no exact function of its training reports.

The adversary reads everything radpriv publishes: the run's params, tags and metrics, every
artifact, the logged model (pyfunc and bundle) and the registered model version's tags and
description. None of it may contain a training report id, an exact per-label count of the
training split, or an unkeyed hash of the training content; those stay in the local private
folder (tracking.private_dir).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest

from radpriv.cli import run

TINY = ["model=tiny_bert", "data=ct_rate_text", "data.max_length=48", "trainer.max_epochs=1",
        "trainer.progress_bar=false", "privacy.expected_batch_size=8", "privacy.max_physical_batch_size=8",
        "trainer.eval_batch_size=32"]


def _published_text(client, run_id: str, model_name: str, dst: Path) -> str:
    """Everything the run published, as one text: params, tags, metric names and values, every
    artifact file, the logged model's files, the dataset inputs, and the registered version's tags
    and description (the model card)."""
    run = client.get_run(run_id)
    parts = [json.dumps(run.data.params), json.dumps(run.data.tags), json.dumps(run.data.metrics)]
    parts += [json.dumps(i.dataset.to_dictionary()) for i in run.inputs.dataset_inputs]  # the UI's Datasets
    for root in (mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(dst / "artifacts")),
                 mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(dst / "model"))):
        for path in sorted(Path(root).rglob("*")):
            if path.is_file():
                parts.append(path.read_bytes().decode("utf-8", errors="ignore"))
    for version in client.search_model_versions(f"name = '{model_name}'"):
        parts += [json.dumps(version.tags), version.description or ""]
    return "\n".join(parts)


def _unkeyed_hashes(table, csv_path: Path, cfg) -> set[str]:
    """Hashes an adversary could compute from a guessed training set (they know the code)."""
    train = table.subset("train")
    out = {table.fingerprint(), train.fingerprint(),
           hashlib.sha256(csv_path.read_bytes()).hexdigest(),
           hashlib.sha256("\x1f".join(train.ids).encode()).hexdigest(),
           hashlib.sha256("\x1e".join(train.texts).encode()).hexdigest()}
    # the run key as it was computed before it was keyed: sha256(config + data fingerprint)
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(cfg, resolve=True)
    for key in ("tracking", "run_name", "run_id"):
        resolved.pop(key, None)
    for key in ("progress_bar", "num_threads", "log_every_n_steps"):
        resolved["trainer"].pop(key, None)
    out.add(hashlib.sha256((json.dumps(resolved, sort_keys=True, default=str) + table.fingerprint())
                           .encode()).hexdigest())
    return out | {h[:20] for h in out}


def test_a_private_run_publishes_no_id_no_training_count_and_no_unkeyed_hash(
        tmp_path, tracking_uri, capsys, reports_csv):
    from radpriv.config import compose
    from radpriv.data.sources import load_table

    csv_path, _ = reports_csv
    overrides = [*TINY, f"data.path={csv_path}", "privacy.epsilon=2", "tracking.register=leakcheck"]
    assert run(["train", *overrides]) == 0
    run_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"]
    client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
    published = _published_text(client, run_id, "leakcheck", tmp_path / "dl")

    cfg = compose(overrides)
    table = load_table(cfg.data, int(cfg.seed))
    train = table.subset("train")
    assert len(train) > 20
    leaked_ids = [i for i in train.ids if re.search(rf"(?<![\w]){re.escape(i)}(?![\w])", published)]
    assert not leaked_ids, leaked_ids[:5]
    counts = {name: int((train.labels[:, j] == 1).sum()) for j, name in enumerate(table.label_names)}
    assert any(counts.values())
    leaked_counts = [name for name, n in counts.items()
                     if re.search(rf'"{re.escape(name)}"\s*:\s*{n}(?![\d.])', published)]
    assert not leaked_counts, leaked_counts
    hexes = set(re.findall(r"[0-9a-f]{20,64}", published))
    assert not hexes & _unkeyed_hashes(table, csv_path, cfg)

    # what was published instead: keyed digests, and the ids and counts in the private folder
    folder = Path(".radpriv") / "runs" / run_id
    assert json.loads((folder / "splits.json").read_text())["train"] == list(train.ids)
    assert json.loads((folder / "data_summary.json").read_text())["splits"]["train"]["positives"] == counts
    assert (Path(".radpriv") / "secret.key").stat().st_mode & 0o777 == 0o600
    tags = client.get_run(run_id).data.tags
    from radpriv.tracking.release import PrivateFolder
    from radpriv.tracking.resume import run_key

    assert tags["radpriv.run_key"] == run_key(cfg, table.fingerprint(), PrivateFolder(".radpriv"))
    assert run_key(cfg, table.fingerprint(), PrivateFolder(tmp_path / "another-machine")) != tags["radpriv.run_key"]


def test_keyed_digests_need_the_key(tmp_path):
    from radpriv.tracking.release import PrivateFolder

    a, b = PrivateFolder(tmp_path / "a"), PrivateFolder(tmp_path / "b")
    assert a.digest("x", "data") == a.digest("x", "data")  # stable on one machine
    assert a.digest("x", "data") != b.digest("x", "data")  # meaningless without the key
    assert a.digest("x", "data") != a.digest("y", "data")  # one purpose cannot stand for another
    assert len(a.key()) == 32 and a.key() == (tmp_path / "a" / "secret.key").read_bytes()
    assert len(set(np.frombuffer(a.key(), dtype=np.uint8))) > 8


def test_training_loss_is_never_published_under_dp(tmp_path, tracking_uri, capsys, reports_csv):
    """A per-batch training loss is an exact function of a private batch: not a metric of a DP run."""
    from radpriv.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY, f"data.path={reports_csv[0]}", "privacy.epsilon=2", "privacy.log_train_loss=true"])
    assert exit_info.value.code == 2
