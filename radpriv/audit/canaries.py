"""Canaries: synthetic reports with random labels, each canary kept for training by a fair coin.

The texts are sequences of whole words drawn from the tokenizer's own vocabulary (public), so
no real report text is ever a canary, and a canary's random label vector is one the model can
only fit by memorising that canary — which is what DP must prevent.

A canary is one *privacy unit* of the audited run. At the report unit it is one report. At the
patient unit it is a patient of `reports_per_canary` copies of one canary report (one text, one
label vector, distinct report ids) whose coin puts all of them in training or none: the audit
then tests what the run claims, a guarantee per patient. Identical reports are the worst case
for a DP-SGD that clips a patient's reports one by one where the accountant counts one clipped
gradient per patient: their k per-report gradients point the same way, so that bug gives the
canary up to k times the sensitivity, all of it on one text. A correct run clips the k
copies' summed gradient to C: the canary weighs what one report does.

Everything is drawn from one RNG seeded by `audit.seed` (independent of the training seed), so
an audit can be rerun exactly. Canary ids are opaque (random hex, not the canary's index): the
training run's `splits.json` lists every training id, and an opaque id tells a reader of it only
how many canaries were included, not which of the m.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from radpriv.data.table import ReportTable
from radpriv.errors import ConfigError

# whole, purely alphabetic words of at least 4 letters: no "##" word pieces, no [unused] tokens
_WORD = re.compile(r"^[a-z]{4,}$")


@dataclass(frozen=True)
class Canaries:
    """m canaries: `ids` (patient ids; also the report ids at one report per canary), `texts`
    and `labels` (m, n_labels) in {0, 1}, `member` (m,) bool: in training. `report_ids` (m, k):
    the ids of each canary's k reports, all of them copies of its text with its labels."""

    ids: tuple[str, ...]
    texts: tuple[str, ...]
    labels: np.ndarray
    member: np.ndarray
    report_ids: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def reports_per_canary(self) -> int:
        return len(self.report_ids[0]) if self.report_ids else 1


def public_words(tokenizer) -> list[str]:
    """The tokenizer vocabulary's whole lower-case words, sorted (deterministic across runs)."""
    words = sorted(w for w in tokenizer.get_vocab() if _WORD.match(w))
    if len(words) < 100:
        raise ConfigError(f"audit: the tokenizer has only {len(words)} whole words to build canaries from "
                          "(need ≥ 100)")
    return words


def _opaque_ids(rng: np.random.Generator, n: int) -> tuple[str, ...]:
    return tuple(f"canary-{rng.bytes(8).hex()}" for _ in range(n))


def make_canaries(m: int, label_names, tokenizer, seed: int, words_per_canary: int = 16,
                  positive_rate: float = 0.5, reports_per_canary: int = 1) -> Canaries:
    """m canaries: texts, label vectors (each label 1 with `positive_rate`), one membership coin
    each, and `reports_per_canary` report ids each.

    With one report per canary the draws are those of the report-level audit (same seed, same
    canaries) and the report id is the canary id; several reports draw their ids afterwards.
    """
    if m < 1:
        raise ConfigError(f"audit.canaries={m}: need at least 1 canary")
    if words_per_canary < 1:
        raise ConfigError(f"audit.words_per_canary={words_per_canary}: need at least 1 word")
    if reports_per_canary < 1:
        raise ConfigError(f"audit.reports_per_canary={reports_per_canary}: need at least 1 report")
    k = int(reports_per_canary)
    rng = np.random.default_rng([int(seed), 0xCA7A])
    vocab = public_words(tokenizer)
    texts = tuple(" ".join(rng.choice(vocab, size=words_per_canary)) for _ in range(m))
    labels = (rng.random((m, len(label_names))) < positive_rate).astype(np.float32)
    member = rng.random(m) < 0.5  # the fair coin of Steinke et al.: in training with probability ½
    ids = _opaque_ids(rng, m)
    if k == 1:
        report_ids = tuple((cid,) for cid in ids)
    else:  # each report its own opaque id: no report id names its patient
        flat = _opaque_ids(rng, m * k)
        report_ids = tuple(flat[j * k:(j + 1) * k] for j in range(m))
    every = set(ids) | {rid for reports in report_ids for rid in reports}
    if len(every) != m + (0 if k == 1 else m * k):
        # 64-bit ids: a clash is a 1-in-10^13 event, but never silently
        raise ConfigError("audit: two canary ids collide; choose another audit.seed")
    return Canaries(ids=ids, texts=texts, labels=labels, member=member, report_ids=report_ids)


def with_canaries(table: ReportTable, canaries: Canaries) -> ReportTable:
    """The table with the member canaries' reports appended to its training split (val/test
    untouched). Each canary is its own patient (patient id = canary id), never grouped with a
    real report; `patient_source` is kept, so the privacy unit resolves as without canaries."""
    keep = np.flatnonzero(canaries.member)
    k = canaries.reports_per_canary
    rows = [(j, rid) for j in keep for rid in canaries.report_ids[j]]
    if {rid for reports in canaries.report_ids for rid in reports} & set(table.ids):
        raise ConfigError("audit: canary ids collide with report ids; choose another audit.seed")
    if table.patient_ids is not None and set(canaries.ids) & set(table.patient_ids):
        raise ConfigError("audit: canary ids collide with patient ids; choose another audit.seed")
    if table.patient_ids is None and k > 1:
        raise ConfigError(f"audit: canaries of {k} reports are patients, but {table.name} has no patient ids")
    if table.labels.shape[1] != canaries.labels.shape[1]:
        raise ConfigError(f"audit: canaries have {canaries.labels.shape[1]} labels, the dataset "
                          f"{table.labels.shape[1]}")
    return replace(
        table,
        ids=table.ids + tuple(rid for _, rid in rows),
        texts=table.texts + tuple(canaries.texts[j] for j, _ in rows),
        labels=np.concatenate([table.labels, canaries.labels[keep].repeat(k, axis=0).astype(table.labels.dtype)]),
        split=table.split + ("train",) * len(rows),
        patient_ids=None if table.patient_ids is None
        else table.patient_ids + tuple(canaries.ids[j] for j, _ in rows),
    )
