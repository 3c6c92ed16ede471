"""The known-content list exchange format: CSV with a header ``pdq,label,note``, one hash per row.

``pdq`` is the 64-hex-digit PDQ hash in the form Meta's tools print (ThreatExchange, HMA), ``label`` is
``real`` or ``fake``. Operators export and import lists with ``python -m retrainer known``; ``scorer score
--known`` matches local files against one.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Literal

from ingest.signals import PDQ_HEX

CSV_FIELDS = ("pdq", "label", "note")
MAX_NOTE = 500


@dataclass(frozen=True)
class CsvRow:
    pdq: str
    label: Literal["real", "fake"]
    note: str


def parse_csv(stream: IO[str], max_rows: int = 10_000_000) -> list[CsvRow]:
    """Rows of a ``pdq,label,note`` CSV (header required). Any bad row raises ``ValueError`` naming its
    line, and nothing is imported: a shared list is either taken whole or not at all."""
    pattern = re.compile(PDQ_HEX)
    reader = csv.DictReader(stream)
    missing = {"pdq", "label"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"CSV header must name pdq,label[,note]; missing: {', '.join(sorted(missing))}")
    rows = []
    for n, rec in enumerate(reader, start=2):
        if n - 1 > max_rows:
            raise ValueError(f"more than {max_rows} rows")
        pdq = (rec.get("pdq") or "").strip().lower()
        label = (rec.get("label") or "").strip().lower()
        note = (rec.get("note") or "").replace("\x00", "")[:MAX_NOTE]
        if not pattern.match(pdq):
            raise ValueError(f"line {n}: pdq must be 64 hex digits, got {pdq[:70]!r}")
        if label not in ("real", "fake"):
            raise ValueError(f"line {n}: label must be real or fake, got {label[:20]!r}")
        rows.append(CsvRow(pdq, label, note))  # type: ignore[arg-type]  # checked just above
    return rows


def csv_text(rows: Iterable[CsvRow]) -> str:
    """The CSV an export writes, for rows built in memory (tests, the demo)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_FIELDS)
    for r in rows:
        w.writerow((r.pdq, r.label, r.note))
    return buf.getvalue()
