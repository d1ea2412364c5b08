"""Tokenise a split once and keep the token ids on disk.

The cache key is the table's content hash, the tokenizer's identity and the truncation
length, so a changed file, tokenizer or `max_length` never reuses stale ids. Token ids are
as sensitive as the text they encode: the cache lives under the user's cache folder
(`$RADPRIV_CACHE_DIR`, default `~/.cache/radpriv`), never inside the MLflow store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from radpriv.data.table import ReportTable

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("RADPRIV_CACHE_DIR", Path.home() / ".cache" / "radpriv"))


def tokenizer_identity(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    h = hashlib.sha256("\n".join(sorted(vocab, key=vocab.get)).encode()).hexdigest()[:16]
    return f"{type(tokenizer).__name__}:{getattr(tokenizer, 'do_lower_case', '')}:{h}"


def tokenize_texts(texts, tokenizer, max_length: int, batch_size: int = 1024) -> list[np.ndarray]:
    """Token ids per text (special tokens included, truncated, unpadded), as int32 arrays."""
    out: list[np.ndarray] = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start:start + batch_size]), truncation=True,
                        max_length=max_length, padding=False, return_attention_mask=False)
        out.extend(np.asarray(ids, dtype=np.int32) for ids in enc["input_ids"])
    return out


def tokenize_cached(table: ReportTable, tokenizer, max_length: int,
                    cache_dir: Path | None = None) -> list[np.ndarray]:
    """Token ids of every report of `table`, read from the cache when it holds them."""
    key = hashlib.sha256(
        f"{table.fingerprint()}|{tokenizer_identity(tokenizer)}|{max_length}".encode()
    ).hexdigest()[:32]
    root = (cache_dir or cache_root()) / "tokens"
    path = root / f"{key}.pt"
    if path.is_file():
        try:
            ids = torch.load(path, weights_only=False)
            if len(ids) == len(table):
                return ids
        except Exception:  # a torn or foreign file: rebuild it
            log.warning("token cache %s unreadable; tokenising again", path)
    ids = tokenize_texts(table.texts, tokenizer, max_length)
    root.mkdir(parents=True, exist_ok=True)
    # write then rename, so a killed run never leaves a half-written cache entry
    fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp")
    os.close(fd)
    torch.save(ids, tmp)
    os.replace(tmp, path)
    return ids
