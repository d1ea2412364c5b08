"""Canary reports: synthetic texts with random labels, each kept for training by a fair coin.

The texts are sequences of whole words drawn from the tokenizer's own vocabulary (public), so
no real report text is ever a canary, and a canary's random label vector is one the model can
only fit by memorising that canary — which is what DP must prevent.

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
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    labels: np.ndarray  # (m, n_labels) in {0, 1}
    member: np.ndarray  # (m,) bool: included in training

    def __len__(self) -> int:
        return len(self.ids)


def public_words(tokenizer) -> list[str]:
    """The tokenizer vocabulary's whole lower-case words, sorted (deterministic across runs)."""
    words = sorted(w for w in tokenizer.get_vocab() if _WORD.match(w))
    if len(words) < 100:
        raise ConfigError(f"audit: the tokenizer has only {len(words)} whole words to build canaries from "
                          "(need ≥ 100)")
    return words


def make_canaries(m: int, label_names, tokenizer, seed: int, words_per_canary: int = 16,
                  positive_rate: float = 0.5) -> Canaries:
    """m canaries: texts, label vectors (each label 1 with `positive_rate`) and membership coins."""
    if m < 1:
        raise ConfigError(f"audit.canaries={m}: need at least 1 canary")
    if words_per_canary < 1:
        raise ConfigError(f"audit.words_per_canary={words_per_canary}: need at least 1 word")
    rng = np.random.default_rng([int(seed), 0xCA7A])
    vocab = public_words(tokenizer)
    texts = tuple(" ".join(rng.choice(vocab, size=words_per_canary)) for _ in range(m))
    labels = (rng.random((m, len(label_names))) < positive_rate).astype(np.float32)
    member = rng.random(m) < 0.5  # the fair coin of Steinke et al.: in training with probability ½
    ids = tuple(f"canary-{rng.bytes(8).hex()}" for _ in range(m))
    if len(set(ids)) != m:  # 64-bit ids: a clash is a 1-in-10^13 event, but never silently
        raise ConfigError("audit: two canary ids collide; choose another audit.seed")
    return Canaries(ids=ids, texts=texts, labels=labels, member=member)


def with_canaries(table: ReportTable, canaries: Canaries) -> ReportTable:
    """The table with the member canaries appended to its training split (val/test untouched).

    Each canary is its own patient, so patient-level splitting never groups it with a report.
    """
    keep = np.flatnonzero(canaries.member)
    clash = set(canaries.ids) & set(table.ids)
    if clash:
        raise ConfigError(f"audit: {len(clash)} canary ids collide with report ids; choose another audit.seed")
    if table.labels.shape[1] != canaries.labels.shape[1]:
        raise ConfigError(f"audit: canaries have {canaries.labels.shape[1]} labels, the dataset "
                          f"{table.labels.shape[1]}")
    return replace(
        table,
        ids=table.ids + tuple(canaries.ids[i] for i in keep),
        texts=table.texts + tuple(canaries.texts[i] for i in keep),
        labels=np.concatenate([table.labels, canaries.labels[keep].astype(table.labels.dtype)]),
        split=table.split + ("train",) * len(keep),
        patient_ids=None if table.patient_ids is None
        else table.patient_ids + tuple(canaries.ids[i] for i in keep),
    )
