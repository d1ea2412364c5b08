"""The user docs stay short, linked and reproducible.

README.md is the pitch and the commands, so it stays short. Every relative link in README.md and
docs/*.md must lead somewhere: to an existing file and, for `file.md#anchor`, to a heading of
that file under GitHub's anchor rule. docs/RESULTS.md holds current results only, so no heading
names an issue and no line carries a date, and each table is followed by the command that
produced it.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINKED_DOCS = [ROOT / "README.md", *DOCS]
RESULTS = ROOT / "docs" / "RESULTS.md"

README_MAX_LINES = 150
# what a command in RESULTS.md looks like: the CLI, a benchmark script, a make target, the
# MLproject, a test run or a one-line Python computation
COMMAND = re.compile(r"radpriv |python benchmarks/|make |mlflow run|pytest|python -c")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
DATE = re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b")


def _prose_lines(text: str) -> list[tuple[int, str, bool]]:
    """(line number, line, inside a code fence) for each line."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            out.append((number, line, True))
            fenced = not fenced
            continue
        out.append((number, line, fenced))
    return out


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, every character but letters,
    digits, '_', '-' and spaces removed, spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
    text = text.replace("`", "").replace("*", "").lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in "_- ")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, with GitHub's -1, -2 … for repeated headings."""
    seen: Counter[str] = Counter()
    out = set()
    for _, line, fenced in _prose_lines(path.read_text(encoding="utf-8")):
        match = None if fenced else HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        out.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return out


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of each link that is not a URL, outside code fences and spans."""
    links = []
    for number, line, fenced in _prose_lines(path.read_text(encoding="utf-8")):
        if fenced:
            continue
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                continue  # http:, https:, mailto:
            links.append((number, target))
    return links


def test_github_slug_follows_githubs_rule():
    assert github_slug("The default job: `mlflow run . -P epsilon=0.1`") == "the-default-job-mlflow-run---p-epsilon01"
    assert github_slug("The privacy–utility sweep") == "the-privacyutility-sweep"
    assert github_slug("Why ε = 1 ≥ 0.60") == "why-ε--1--060"
    assert github_slug("Unit: patients or reports (`privacy.unit`)") == "unit-patients-or-reports-privacyunit"


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; keep it ≤ {README_MAX_LINES}"


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc: Path):
    broken = []
    for number, target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{doc.name}:{number}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and dest.is_relative_to(ROOT) and anchor not in anchors(dest):
            broken.append(f"{doc.name}:{number}: {target} (no heading with that anchor)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_results_headings_name_no_issue_and_no_line_carries_a_date():
    text = RESULTS.read_text(encoding="utf-8")
    issue_headings = [line for _, line, fenced in _prose_lines(text)
                      if not fenced and HEADING.match(line) and "(issue " in line.lower()]
    dated = [f"{number}: {line.strip()}" for number, line, _ in _prose_lines(text) if DATE.search(line)]
    assert not issue_headings, f"headings that name an issue: {issue_headings}"
    assert not dated, "dated lines in RESULTS.md (git keeps the history):\n" + "\n".join(dated)


def _tables_without_command(text: str) -> list[int]:
    """Line numbers of tables not followed, before the next heading, by a command: a code block
    holding one, or a line whose inline code holds one."""
    lines = _prose_lines(text)
    missing, i = [], 0
    while i < len(lines):
        number, line, fenced = lines[i]
        is_table = (not fenced and line.lstrip().startswith("|") and i + 1 < len(lines)
                    and re.match(r"^\s*\|[\s:|-]*-[\s:|-]*\|?\s*$", lines[i + 1][1]))
        if not is_table:
            i += 1
            continue
        start = number
        while i < len(lines) and lines[i][1].lstrip().startswith("|"):
            i += 1
        found = False
        j = i
        while j < len(lines):
            _, after, in_code = lines[j]
            if not in_code and HEADING.match(after):
                break
            if in_code and COMMAND.search(after):
                found = True
                break
            if not in_code and any(COMMAND.search(span) for span in re.findall(r"`([^`]*)`", after)):
                found = True
                break
            j += 1
        if not found:
            missing.append(start)
    return missing


def test_the_command_check_finds_a_table_without_a_command():
    table = "| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert _tables_without_command("## x\n\n" + table + "\nJust prose.\n\n## y\n") == [3]
    assert _tables_without_command("## x\n\n" + table + "\nCommand: `radpriv train seed=1`.\n") == []
    assert _tables_without_command("## x\n\n" + table + "\n```bash\nmake demo\n```\n") == []


def test_every_results_table_is_followed_by_its_command():
    missing = _tables_without_command(RESULTS.read_text(encoding="utf-8"))
    assert not missing, f"tables in docs/RESULTS.md with no command after them (lines): {missing}"
