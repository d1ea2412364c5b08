"""`ReportTable`: the one shape every data source is turned into.

Every reader (Open-i, CT-RATE, MIMIC-CXR, generic CSV) returns a ReportTable; everything
downstream (the DataModule, `radpriv data check`, the sweep baselines) reads only this.
Label values: 1.0 positive, 0.0 negative, -1.0 unknown (masked out of the loss and the
metrics, e.g. MIMIC-CXR's uncertain labels under the `ignore` policy).

A ReportTable holds report text in memory only. `summary()` is the one way to describe it
for logs and MLflow, and it never contains text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

SPLITS = ("train", "val", "test")
MASKED = -1.0


@dataclass(frozen=True)
class ReportTable:
    name: str
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    labels: np.ndarray  # float32, shape (n_reports, n_labels), values in {1, 0, -1}
    label_names: tuple[str, ...]
    split: tuple[str, ...]  # "train" | "val" | "test" per report
    patient_ids: tuple[str, ...] | None = None
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> number of rows dropped
    source: str = ""  # where it was read from (paths only, never text)
    # where patient_ids come from when the source format names patients (e.g. MIMIC-CXR's
    # subject_id); None when each report is its own patient. Decided by the format and the
    # config, never by the data, since it picks the privacy unit (radpriv/data/patients.py).
    patient_source: str | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.texts) != n or len(self.split) != n or self.labels.shape[0] != n:
            raise ValueError("ReportTable columns have different lengths")
        if self.labels.ndim != 2 or self.labels.shape[1] != len(self.label_names):
            raise ValueError("labels must be (n_reports, n_labels) matching label_names")
        if self.patient_ids is not None and len(self.patient_ids) != n:
            raise ValueError("patient_ids must have one entry per report")
        bad = set(self.split) - set(SPLITS)
        if bad:
            raise ValueError(f"unknown split names {sorted(bad)}; expected {SPLITS}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def subset(self, split: str) -> ReportTable:
        """The rows of one split, as a table of their own."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        idx = [i for i, s in enumerate(self.split) if s == split]
        return ReportTable(
            name=self.name,
            ids=tuple(self.ids[i] for i in idx),
            texts=tuple(self.texts[i] for i in idx),
            labels=self.labels[idx],
            label_names=self.label_names,
            split=tuple(self.split[i] for i in idx),
            patient_ids=None if self.patient_ids is None else tuple(self.patient_ids[i] for i in idx),
            excluded=dict(self.excluded),
            source=self.source,
            patient_source=self.patient_source,
        )

    def fingerprint(self) -> str:
        """A content hash (ids, texts, labels, split): keys the tokenisation cache."""
        h = hashlib.sha256()
        h.update(self.name.encode())
        h.update("\x1f".join(self.label_names).encode())
        for i, t, s in zip(self.ids, self.texts, self.split):
            h.update(f"{i}\x1f{s}\x1f".encode())
            h.update(t.encode("utf-8"))
            h.update(b"\x1e")
        h.update(np.ascontiguousarray(self.labels, dtype=np.float32).tobytes())
        return h.hexdigest()

    def summary(self) -> dict:
        """Counts only, safe to log: reports per split, positives per label and split, exclusions."""
        out: dict = {"dataset": self.name, "source": self.source, "n_reports": len(self),
                     "excluded": dict(self.excluded), "splits": {}}
        for s in SPLITS:
            mask = np.array([x == s for x in self.split], dtype=bool)
            lab = self.labels[mask]
            out["splits"][s] = {
                "n_reports": int(mask.sum()),
                "positives": {n: int((lab[:, j] == 1).sum()) for j, n in enumerate(self.label_names)},
                "masked": int((lab == MASKED).sum()),
            }
        return out
