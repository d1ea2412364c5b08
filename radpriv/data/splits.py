"""Seeded, patient-level train/val/test splits.

Why this shape:
- By patient: reports of one patient are correlated, so a patient in two splits leaks test
  information into training (and, under DP, blurs what the guarantee covers).
- Deterministic and independent of row order: each patient gets a rank from
  sha256(seed, patient id); the lowest ranks go to test, the next to validation. Reordering
  the file, or reading the same reports from CSV or XML, gives the same split.
- Exact sizes: counts are round(fraction x number of patients), not a per-patient coin flip.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence

from radpriv.errors import DataError


def _rank_key(seed: int, patient: str) -> tuple[bytes, str]:
    return hashlib.sha256(f"{int(seed)}\x1f{patient}".encode()).digest(), patient


def _count(fraction: float, n: int) -> int:
    return int(fraction * n + 0.5)


def check_fraction(name: str, value: object) -> float:
    """A split fraction as a float in [0, 1), else a DataError naming the config key."""
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"data.{name}={value!r} is not a number; use a fraction such as 0.1") from None
    if not 0.0 <= f < 1.0:
        raise DataError(f"data.{name}={f} is outside [0, 1); use a fraction such as 0.1")
    return f


def split_by_patient(
    patient_ids: Sequence[str],
    seed: int,
    *,
    val_fraction: float,
    test_fraction: float = 0.0,
    test_patients: Collection[str] | None = None,
) -> tuple[str, ...]:
    """One split name ("train" | "val" | "test") per row, all rows of a patient together.

    Fractions are of the number of distinct patients. With `test_patients` (a fixed, e.g.
    published, test set) those patients are the test split and `test_fraction` is unused;
    otherwise round(test_fraction x patients) are drawn. Validation takes
    round(val_fraction x patients) of the patients not in test. Raises DataError when no
    patient is left for training.
    """
    patients = sorted(set(patient_ids), key=lambda p: _rank_key(seed, p))
    n = len(patients)
    if test_patients is not None:
        fixed = set(test_patients)
        test = {p for p in patients if p in fixed}
        rest = [p for p in patients if p not in fixed]
    else:
        n_test = _count(test_fraction, n)
        test = set(patients[:n_test])
        rest = patients[n_test:]
    n_val = _count(val_fraction, n)
    if n_val >= len(rest) and n > 0:
        raise DataError(
            f"split: {n} patients, {len(test)} in test and {n_val} for validation leave none for "
            "training; lower data.val_fraction / data.test_fraction or give more reports"
        )
    val = set(rest[:n_val])
    return tuple("test" if p in test else "val" if p in val else "train" for p in patient_ids)


def parse_shard(value: object) -> tuple[int, int]:
    """`"i/k"` → (i, k) with 0 ≤ i < k; else a DataError naming data.train_shard."""
    text = str(value).strip()
    i, sep, k = text.partition("/")
    try:
        shard, shards = int(i), int(k)
    except ValueError:
        shard, shards = -1, 0
    if not sep or shards < 2 or not 0 <= shard < shards:
        raise DataError(f"data.train_shard={value!r}: expected i/k with k ≥ 2 and 0 ≤ i < k, e.g. 0/2")
    return shard, shards


def train_shard_members(patient_ids: Sequence[str], split: Sequence[str], seed: int,
                        shard: int, shards: int) -> list[bool]:
    """Which rows stay when only shard `shard` of `shards` of the training patients is kept.

    Training patients are ranked by sha256(seed, patient) and dealt round-robin into equal
    shards, so shards are disjoint, of sizes that differ by at most one patient, and the same
    whatever the row order. Validation and test rows always stay. Used to simulate a public and
    a private half of one dataset (warm-start experiments).
    """
    train = sorted({p for p, s in zip(patient_ids, split) if s == "train"},
                   key=lambda p: _rank_key(seed, f"shard\x1f{p}"))
    keep = {p for r, p in enumerate(train) if r % shards == shard}
    return [s != "train" or p in keep for p, s in zip(patient_ids, split)]
