"""`load_table`: the one entry point from a `data` config to a `ReportTable`.

Readers register here by name (the `name` key of `conf/data/<name>.yaml`), so that the CLI,
the DataModule and the sweeps never import a reader directly and a new source is one entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from radpriv.data.ct_rate import load_ct_rate
from radpriv.data.ct_rate_text import load_ct_rate_text
from radpriv.data.generic_csv import load_generic_csv
from radpriv.data.mimic_cxr import load_mimic_cxr
from radpriv.data.openi import load_openi
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
    """Read the dataset a `data` config names: `data_cfg["name"]` picks the reader."""
    name = data_cfg.get("name") if isinstance(data_cfg, Mapping) else None
    if not isinstance(name, str) or name not in SOURCES:
        raise DataError(f"data.name={name!r} is not a known dataset; use one of {sorted(SOURCES)}")
    return SOURCES[name](data_cfg, seed)
