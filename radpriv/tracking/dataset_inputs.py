"""MLflow dataset inputs for a run's train / validation / test splits, as metadata only.

What the MLflow UI's Datasets column shows: a name, the source the config named, the label
schema, and a digest keyed by the private folder's secret (release.PrivateFolder.digest), so
that equal digests say "same split" on this machine while nobody without the key can test a
candidate dataset against them. No text, no ids; a count only where the release boundary
declares it public: the training split's N (it sets q, the steps and δ). Validation and test
sizes are not published.
"""

from __future__ import annotations

import json

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.types import ColSpec, Schema

CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


class ConfiguredSource(DatasetSource):
    """Where the config said the data are (a corpus name and the paths the reader opened)."""

    def __init__(self, where: str):
        self.where = where

    @staticmethod
    def _get_source_type() -> str:
        return "radpriv"

    def load(self, **kwargs):
        raise NotImplementedError("metadata only: radpriv never publishes report text")

    @staticmethod
    def _can_resolve(raw_source) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source):
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"where": self.where}

    @classmethod
    def from_dict(cls, source_dict: dict) -> ConfiguredSource:
        return cls(source_dict["where"])


class SplitDataset(MetaDataset):
    """A MetaDataset whose profile holds only what the release boundary allows."""

    def __init__(self, *, source, name, digest, schema, public_count: int | None):
        super().__init__(source=source, name=name, digest=digest, schema=schema)
        self._public_count = public_count

    @property
    def profile(self):
        return None if self._public_count is None else {"num_rows": self._public_count}

    def to_dict(self) -> dict[str, str]:
        config = super().to_dict()
        if self.profile is not None:
            config["profile"] = json.dumps(self.profile)
        return config


def split_datasets(table, splits, folder, n_train_public: int | None) -> list[tuple[str, SplitDataset]]:
    """[(context, dataset)] for the three splits. `splits`: name → split with `.fingerprint()`.
    `n_train_public`: the published N (None at the patient unit, where N counts patients and the
    number of training reports is not published)."""
    schema = Schema([ColSpec("string", "text"), *[ColSpec("double", n) for n in table.label_names]])
    source = ConfiguredSource(f"{table.name}: {table.source}" if table.source else table.name)
    out = []
    for split, context in CONTEXTS.items():
        digest = folder.digest("mlflow-dataset-input", split, splits[split].fingerprint())[:16]
        out.append((context, SplitDataset(source=source, name=f"{table.name}/{split}", digest=digest,
                                          schema=schema,
                                          public_count=n_train_public if split == "train" else None)))
    return out


def log_split_inputs(client, run_id: str, table, splits, folder, n_train_public: int | None) -> None:
    inputs = [DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
              for context, ds in split_datasets(table, splits, folder, n_train_public)]
    client.log_inputs(run_id, datasets=inputs)
