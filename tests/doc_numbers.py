"""Numbers in the docs that come from a results file, checked against that file.

Two kinds of entry (the table itself is in ``tests/test_doc_numbers.py``):

``Claim``: a sentence of a doc with ``{}`` where a number stands, the results file it comes from,
a reader that takes the value out of it, and the format the doc rounds it to. The doc must
contain the sentence with the formatted value in place.

``Table``: a table of a doc (the first one after a line holding ``after``) whose cells are copied
from a table of a results file (``.md``: the first after ``source_after``; ``.csv``: the file). A
map of row labels and one of column headers (doc -> source) say which cells; a numeric doc cell
must equal the source cell rounded to the doc's decimals, any other cell must equal it as text.

``Lines``: every line of a doc's fenced block (the first after ``after``) is a line of the
results file, verbatim (the output of a command pasted whole).
"""

from __future__ import annotations

import csv
import json
import re
from decimal import ROUND_HALF_UP, Decimal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"^([-+]?\d[\d,]*(?:\.\d+)?)(.*)$")


def read_text(path: str) -> str:
    return (ROOT / path).read_text()


def after_line(text: str, marker: str, where: str) -> list[str]:
    """The lines of ``text`` after the first line holding ``marker``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if marker in line:
            return lines[i + 1:]
    raise AssertionError(f"{where}: no line holds {marker!r}")


def cells(line: str) -> list[str]:
    return [c.strip().strip("*").strip() for c in line.strip().strip("|").split("|")]


def markdown_table(text: str, marker: str, where: str) -> dict[str, dict[str, str]]:
    """The first markdown table after ``marker``: {first cell: {header: cell}}."""
    rows = [line for line in after_line(text, marker, where)]
    start = next((i for i, line in enumerate(rows) if line.strip().startswith("|")), None)
    if start is None:
        raise AssertionError(f"{where}: no table after {marker!r}")
    block = []
    for line in rows[start:]:
        if not line.strip().startswith("|"):
            break
        block.append(cells(line))
    header, body = block[0], block[2:]
    return {row[0]: dict(zip(header, row)) for row in body}


def csv_table(path: str, key: str) -> dict[str, dict[str, str]]:
    with open(ROOT / path, newline="") as f:
        return {row[key]: row for row in csv.DictReader(f)}


def same_number(doc: str, source: str) -> bool:
    """``doc`` is ``source`` as the doc writes it: rounded to the doc's decimals, same unit."""
    d, s = NUMBER.match(doc), NUMBER.match(source.strip())
    if not d or not s:
        return doc == source.strip()
    if d.group(2).strip() != s.group(2).strip():
        return False
    decimals = len(d.group(1).partition(".")[2])
    value = Decimal(s.group(1).replace(",", ""))  # the printed decimal, rounded half up as by hand
    return str(value.quantize(Decimal(1).scaleb(-decimals), ROUND_HALF_UP)) == d.group(1).replace(",", "")


def json_at(*keys) -> Callable[[Path], object]:
    """A reader: walk a JSON file by keys, indices, or ``where(...)`` selectors of list items."""

    def read(path: Path):
        value = json.loads(path.read_text())
        for key in keys:
            value = key(value) if callable(key) else value[key]
        return value

    return read


def where(**fields) -> Callable[[list], dict]:
    """Select the one item of a JSON list whose fields equal ``fields``."""

    def pick(items: list) -> dict:
        found = [item for item in items if all(item.get(k) == v for k, v in fields.items())]
        if len(found) != 1:
            raise AssertionError(f"{len(found)} items match {fields}")
        return found[0]

    return pick


def md_cell(after: str, row: str, column: str) -> Callable[[Path], str]:
    """A reader: one cell of the first table after ``after`` in a markdown results file."""

    def read(path: Path) -> str:
        table = markdown_table(path.read_text(), after, str(path))
        return number_of(table[row][column])

    return read


def csv_cell(key: str, row: str, column: str) -> Callable[[Path], str]:
    def read(path: Path) -> str:
        return number_of(csv_table(str(path.relative_to(ROOT)), key)[row][column])

    return read


def number_of(cell: str) -> float:
    match = NUMBER.match(cell.strip())
    if not match:
        raise AssertionError(f"not a number: {cell!r}")
    return float(match.group(1).replace(",", ""))


def ratio(top: Callable, bottom: Callable) -> Callable[[Path], float]:
    """A reader: the quotient of two readers of the same file."""
    return lambda path: float(top(path)) / float(bottom(path))


@dataclass(frozen=True)
class Claim:
    doc: str
    text: str
    source: str
    read: Callable[[Path], object]
    fmt: str = "{}"

    def problem(self) -> Optional[str]:
        expected = self.text.format(self.fmt.format(self.read(ROOT / self.source)))
        doc = " ".join(read_text(self.doc).split())
        if expected in doc:
            return None
        return f"{self.doc} should say {expected!r} ({self.source}); the doc and the results file disagree"


@dataclass(frozen=True)
class Table:
    doc: str
    after: str
    source: str
    source_after: Optional[str] = None
    key: str = "estimator"  # the row label's column of a csv source
    rows: dict = field(default_factory=dict)
    columns: dict = field(default_factory=dict)

    def source_table(self) -> dict:
        if self.source.endswith(".csv"):
            return csv_table(self.source, self.key)
        return markdown_table(read_text(self.source), self.source_after, self.source)

    def problems(self) -> list[str]:
        doc = markdown_table(read_text(self.doc), self.after, self.doc)
        source = self.source_table()
        out = []
        rows = self.rows or {row: row for row in doc}
        columns = self.columns or {col: col for col in next(iter(doc.values()))}
        for doc_row, source_row in rows.items():
            for doc_col, source_col in columns.items():
                have, want = doc[doc_row][doc_col], source[source_row][source_col]
                if not same_number(have, want):
                    out.append(f"{self.doc} [{doc_row}][{doc_col}] = {have!r}, {self.source} has {want!r}")
        return out


@dataclass(frozen=True)
class Lines:
    doc: str
    after: str
    source: str

    def problems(self) -> list[str]:
        lines = after_line(read_text(self.doc), self.after, self.doc)
        start = next(i for i, line in enumerate(lines) if line.startswith("```"))
        end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
        source = set(read_text(self.source).splitlines())
        return [f"{self.doc}: {line!r} is not in {self.source}" for line in lines[start + 1:end] if line not in source]
