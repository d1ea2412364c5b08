"""The release boundary: what a training run publishes, what stays local, and why each is safe.

The adversary of the DP definition knows every training report but one, the code, the config
and everything radpriv publishes: MLflow params, tags, metrics, artifacts, the logged model and
registered-model versions. So everything published must be a DP output, a post-processing of
one, or a fact declared public and accounted for. This module decides it; docs/PRIVACY.md,
"The release boundary", is the same table for users.

Published, and why it is safe
- params and `config.yaml`: the resolved config, chosen before the data are read. `seed` is
  among them and harmless: no private mechanism draws from it (radpriv/privacy/randomness.py).
- the weights (adapter/, the head, the pyfunc model and its bundle), per-label F1 plot,
  `test/*` metrics: post-processing of the DP-SGD output (test metrics also read the test
  reports, which the guarantee does not cover: named in privacy.json).
- `privacy/*` metrics and `privacy.json`: functions of (σ, q, steps, δ), which are functions of
  the config and N.
- N_train (`privacy.json` n_train, q = b/N, steps, δ = 1/N^1.1): declared public. That is why
  the guarantee is stated under replace-one adjacency (radpriv/privacy/replace_one.py).
- `val/*` metrics per epoch and the thresholds in `label_schema.json`: computed on the
  validation reports without DP unless `trainer.thresholds=dp`; privacy.json says which.
- `radpriv.run_key` and the bundle's `train_data.train_digest`: HMAC-SHA256 of the config and
  the data's content under a secret key kept in the private folder. Without the key they are
  pseudorandom: the adversary cannot test "was my target in the data" by hashing candidate
  datasets (which an unkeyed hash allows). Equal digests only say "same data", which is the
  same statement in both neighbouring worlds.
- `time/*` and `memory/*`: operational measurements. They depend on the machine's load and,
  weakly, on N and report lengths — a timing side channel; docs/PRIVACY.md lists it as out of
  scope, as every DP-SGD implementation does.
- `teacher_provenance.json`: `radpriv.teacher.provenance.public_view` of the labelled CSV's
  provenance (teacher, its guarantee, labels; no counts, no hash of the CSV).

Kept local (the private folder, `tracking.private_dir`, default `.radpriv/`; never logged)
- `runs/<run id>/splits.json`: every report id per split (ids are exact functions of the
  reports: publishing the training ids reveals membership outright).
- `runs/<run id>/data_summary.json`: per-split, per-label counts (adding or replacing one
  report changes them by its labels).
- `secret.key`: the HMAC key above (32 bytes from the OS, mode 0600, created once).
- checkpoints and the step journal (`tracking.checkpoint_dir`): weights that are not final
  releases, and the count of noisy steps.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

DEFAULT_PRIVATE_DIR = ".radpriv"
KEY_FILE = "secret.key"
RUN_RECORDS = "runs"

#: privacy.json keys copied into the bundle (radpriv_model.json), the pyfunc metadata and so
#: the registry: the facts a model carries wherever it goes
BUNDLE_PRIVACY_KEYS = ("private", "epsilon", "delta", "adjacency", "unit", "epsilon_add_remove",
                       "accountant", "dataset")


class PrivateFolder:
    """The local folder of what must not be published (see the module docstring)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    def key(self) -> bytes:
        """The secret HMAC key, created on first use (atomically: concurrent workers agree)."""
        path = self.root / KEY_FILE
        if not path.is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process created it first: use theirs
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(secrets.token_bytes(32))
                    f.flush()
                    os.fsync(f.fileno())
        key = path.read_bytes()
        if len(key) != 32:  # a worker read it while another was writing: read again once
            key = path.read_bytes()
        return key

    def digest(self, purpose: str, *parts: str) -> str:
        """HMAC-SHA256(key, purpose ‖ parts), hex: what may be published about private content."""
        message = "\x1f".join([purpose, *parts]).encode("utf-8")
        return hmac.new(self.key(), message, hashlib.sha256).hexdigest()

    def keep(self, run_id: str, records: Mapping[str, object]) -> Path:
        """Write a run's local records (`name.json` → JSON object) under runs/<run id>/."""
        folder = self.root / RUN_RECORDS / str(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        for name, obj in records.items():
            (folder / name).write_text(json.dumps(obj, indent=2))
        return folder


def private_folder(cfg: Mapping) -> PrivateFolder:
    """`tracking.private_dir` (default `.radpriv`, relative to the working directory)."""
    return PrivateFolder(cfg["tracking"]["private_dir"] or DEFAULT_PRIVATE_DIR)


def local_records(dm, table) -> dict[str, object]:
    """What a run keeps locally instead of logging: report ids per split and the counts."""
    return {"splits.json": {s: list(dm.splits[s].ids) for s in ("train", "val", "test")},
            "data_summary.json": table.summary()}


def train_digest(folder: PrivateFolder, train_split) -> str:
    """The keyed digest of a training split's content (ids, texts, labels), for the bundle: a
    later warm start on this machine refuses to start from a model trained on its own reports."""
    return folder.digest("train-split", train_split.fingerprint())


def bundle_facts(privacy: Mapping, dataset: str, digest: str) -> dict:
    """The `extra` a bundle's radpriv_model.json carries: privacy facts and the keyed digest."""
    facts = {k: privacy.get(k) for k in BUNDLE_PRIVACY_KEYS if k in privacy}
    facts["dataset"] = dataset
    return {"privacy": facts, "train_data": {"dataset": dataset, "train_digest": digest}}


def published_provenance(record: Mapping) -> dict:
    """The part of a teacher-labelled CSV's provenance a student run may publish."""
    from radpriv.teacher import provenance

    return provenance.public_view(dict(record))
