"""CLI helpers for the end-to-end tests: the tiny training overrides, the final JSON line of
`radpriv train` and `radpriv sweep`, stderr less progress lines, and every file's text under a
folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radpriv.cli import main, run


def train_json(capsys, overrides) -> tuple[dict, str]:
    """The final JSON line of `radpriv train`, and everything it printed."""
    assert run(["train", *overrides]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out.strip().splitlines()[-1]), captured.out + captured.err


def sweep_json(capsys, overrides) -> tuple[dict, str]:
    """The final JSON line of `radpriv sweep`, and its stderr (radpriv's log lines)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *overrides])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err[-3000:]
    return json.loads(captured.out.strip().splitlines()[-1]), captured.err


def error_lines(stderr: str) -> list[str]:
    """stderr less radpriv's progress lines; a traceback anywhere fails the test."""
    assert "Traceback" not in stderr
    return [ln for ln in stderr.strip().splitlines()
            if ln.strip() and not (ln.startswith("radpriv: ") and not ln.startswith("radpriv: error"))]


TINY = ["model=tiny_bert", "data=ct_rate_text", "data.max_length=48", "trainer.max_epochs=2",
        "trainer.progress_bar=false", "privacy.expected_batch_size=8", "privacy.max_physical_batch_size=4",
        "trainer.eval_batch_size=16"]


def all_files_text(root: Path) -> str:
    chunks = []
    for p in root.rglob("*"):
        if p.is_file():
            chunks.append(p.read_bytes().decode("utf-8", errors="ignore"))
    return "\n".join(chunks)
