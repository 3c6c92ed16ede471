"""Helpers shared by the provenance tests: settings that trust the fixtures' CA, finding lookups, and guards
that fail a test when the C2PA library is reached or the reader's last-resort handler fires."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import pytest

import ingest.provenance as provenance_module
from ingest.provenance import ProvenanceSettings
from ingest.signals import Provenance
from tests import provenance_fixtures as fx


@cache
def trusting() -> ProvenanceSettings:
    return ProvenanceSettings(trust_anchors_pem=fx.signing_ca().ca_pem)


def summary(p: Provenance) -> list[tuple[str, str, str]]:
    return [(f.kind, f.status, f.detail) for f in p.findings]


def has(p: Provenance, kind: str, status: str, part: str) -> bool:
    return any(f.kind == kind and f.status == status and part in f.detail for f in p.findings)


@contextmanager
def no_c2pa_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fails the test if the C2PA library is reached (counted, since read_provenance swallows errors)."""
    calls: list[object] = []

    def record(*args: object, **_: object) -> Any:
        calls.append(args)
        return [], None

    with monkeypatch.context() as m:
        m.setattr(provenance_module, "read_c2pa", record)
        yield
    assert not calls, "the C2PA library was called"


@contextmanager
def internal_errors() -> Iterator[list[logging.LogRecord]]:
    """Records of the last-resort guard in ``read_provenance``: each one is a bug, not an outcome."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.ERROR)
    provenance_module.logger.addHandler(handler)
    try:
        yield records
    finally:
        provenance_module.logger.removeHandler(handler)
