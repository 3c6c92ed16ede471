"""The README and docs/ point only at files that exist, and every result file they quote records the machine
it was measured on (every benchmark writes it with ``harness.machine.machine_info``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
README_LIMIT = 20_000  # bytes: the README is for a first read; the rest lives in docs/


def _links(page: Path) -> list[Path]:
    targets = [m.group(1) for m in LINK.finditer(page.read_text(encoding="utf-8"))]
    return [
        (page.parent / t).resolve() for t in targets if not t.startswith(("http://", "https://", "mailto:"))
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    assert [str(t) for t in _links(page) if not t.exists()] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_quoted_result_file_records_its_machine(page: Path) -> None:
    results = [t for t in _links(page) if t.suffix == ".json" and (ROOT / "benchmarks") in t.parents]
    assert [str(t) for t in results if "machine" not in json.loads(t.read_text())] == []


def test_the_readme_stays_short() -> None:
    assert (ROOT / "README.md").stat().st_size <= README_LIMIT
