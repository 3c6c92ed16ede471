"""ingest/memory.py: the malloc arena cap the scorer and explainer apply at start."""

from __future__ import annotations

import ctypes.util

import pytest

from ingest.memory import limit_malloc_arenas


def test_the_operators_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library to configure")
def test_glibc_takes_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas(8) is True  # this project's machines run glibc (Debian)
