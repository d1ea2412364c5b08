"""`load_table`: the one entry point from a `data` config to a `ReportTable`.

Readers register here by name (the `name` key of `conf/data/<name>.yaml`), so that the CLI,
the DataModule and the sweeps never import a reader directly and a new source is one entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from radpriv.data.ct_rate import load_ct_rate
from radpriv.data.ct_rate_text import load_ct_rate_text
from radpriv.data.generic_csv import load_generic_csv
from radpriv.data.mimic_cxr import load_mimic_cxr
from radpriv.data.openi import load_openi
from radpriv.data.splits import parse_shard, train_shard_members
from radpriv.data.table import ReportTable
from radpriv.errors import DataError

Reader = Callable[[Mapping, int], ReportTable]

SOURCES: dict[str, Reader] = {
    "openi": load_openi,
    "ct_rate_text": load_ct_rate_text,
    "ct_rate": load_ct_rate,
    "mimic_cxr": load_mimic_cxr,
    "csv": load_generic_csv,
}


def register_source(name: str, reader: Reader) -> None:
    """Add (or replace) the reader for `data.name == name`."""
    SOURCES[name] = reader


def load_table(data_cfg: Mapping, seed: int) -> ReportTable:
    """Read the dataset a `data` config names: `data_cfg["name"]` picks the reader.

    `data.train_shard=i/k` then keeps only shard i of k of the training patients (see
    radpriv.data.splits.train_shard_members); validation and test are unchanged. `seed` draws
    the seeded splits unless `data.split_seed` is set.
    """
    name = data_cfg.get("name") if isinstance(data_cfg, Mapping) else None
    if not isinstance(name, str) or name not in SOURCES:
        raise DataError(f"data.name={name!r} is not a known dataset; use one of {sorted(SOURCES)}")
    if data_cfg.get("split_seed") is not None:  # splits fixed while `seed` varies the training
        seed = int(data_cfg["split_seed"])
    table = SOURCES[name](data_cfg, seed)
    if data_cfg.get("train_shard"):
        table = keep_train_shard(table, str(data_cfg["train_shard"]), seed)
    return table


def keep_train_shard(table: ReportTable, spec: str, seed: int) -> ReportTable:
    """`i/k`: shard i of k of the training patients; `~i/k`: every shard but i (the public half
    of a simulation whose private half is `i/k`)."""
    complement = spec.startswith("~")
    shard, shards = parse_shard(spec[1:] if complement else spec)
    patients = table.patient_ids or table.ids
    keep = train_shard_members(patients, table.split, seed, shard, shards)
    if complement:
        keep = [s != "train" or not k for k, s in zip(keep, table.split)]
    idx = [i for i, k in enumerate(keep) if k]
    dropped = len(table) - len(idx)
    return replace(
        table,
        ids=tuple(table.ids[i] for i in idx), texts=tuple(table.texts[i] for i in idx),
        labels=table.labels[idx], split=tuple(table.split[i] for i in idx),
        patient_ids=None if table.patient_ids is None else tuple(table.patient_ids[i] for i in idx),
        excluded={**table.excluded, f"training reports outside train_shard {spec}": dropped},
    )
