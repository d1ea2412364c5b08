"""Canary reports: synthetic texts with random labels, each kept for training by a fair coin.

The texts are sequences of whole words drawn from the tokenizer's own vocabulary (public), so
no real report text is ever a canary, and a canary's random label vector is one the model can
only fit by memorising that canary — which is what DP must prevent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from radpriv.data.table import ReportTable
from radpriv.errors import ConfigError

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
    words = sorted(w for w in tokenizer.get_vocab() if _WORD.match(w))
    if len(words) < 100:
        raise ConfigError(f"audit: the tokenizer has only {len(words)} whole words to build canaries from")
    return words


def make_canaries(m: int, label_names, tokenizer, seed: int, words_per_canary: int = 16,
                  positive_rate: float = 0.5) -> Canaries:
    if m < 1:
        raise ConfigError(f"audit.canaries={m}: need at least 1 canary")
    rng = np.random.default_rng([int(seed), 0xCA7A])
    vocab = public_words(tokenizer)
    texts = tuple(" ".join(rng.choice(vocab, size=words_per_canary)) for _ in range(m))
    labels = (rng.random((m, len(label_names))) < positive_rate).astype(np.float32)
    member = rng.random(m) < 0.5
    ids = tuple(f"canary-{i:05d}" for i in range(m))
    return Canaries(ids=ids, texts=texts, labels=labels, member=member)


def with_canaries(table: ReportTable, canaries: Canaries) -> ReportTable:
    """The table with the member canaries appended to its training split."""
    keep = np.flatnonzero(canaries.member)
    clash = set(canaries.ids) & set(table.ids)
    if clash:
        raise ConfigError(f"audit: canary ids collide with report ids ({sorted(clash)[:3]})")
    return replace(
        table,
        ids=table.ids + tuple(canaries.ids[i] for i in keep),
        texts=table.texts + tuple(canaries.texts[i] for i in keep),
        labels=np.concatenate([table.labels, canaries.labels[keep]]),
        split=table.split + ("train",) * len(keep),
        patient_ids=None if table.patient_ids is None
        else table.patient_ids + tuple(canaries.ids[i] for i in keep),
    )
