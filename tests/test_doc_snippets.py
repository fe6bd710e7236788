"""Every ```python block of README.md and docs/*.md runs as written (in a scratch directory).

A block that needs a download or a GPU is marked by ``<!-- no-test: REASON -->`` on the line
before it; the test checks that each such block gives its reason and that few are marked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- no-test: (?P<reason>[^>]*?) -->\n)?```python\n(?P<code>.*?)```", re.S)
MAX_SKIPPED = 2


def snippets() -> list[tuple[str, str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("code"))
            found.append((f"{doc.relative_to(ROOT)}:{line}", match.group("code"), match.group("reason") or ""))
    return found


SNIPPETS = snippets()


def test_the_docs_have_snippets_and_few_are_skipped():
    assert len(SNIPPETS) >= 6
    skipped = [where for where, _, reason in SNIPPETS if reason]
    assert len(skipped) <= MAX_SKIPPED, skipped


@pytest.mark.parametrize("where, code, reason", SNIPPETS, ids=[s[0] for s in SNIPPETS])
def test_snippet_runs(where, code, reason, tmp_path, monkeypatch, capsys):
    if reason:
        pytest.skip(reason)
    monkeypatch.chdir(tmp_path)  # snippets write their run directories (runs/...) here
    exec(compile(code, where, "exec"), {"__name__": "__snippet__"})
