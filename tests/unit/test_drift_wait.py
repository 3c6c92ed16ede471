"""The drift bench's polling outlives a transient stack failure but not a bug or its deadline."""

from __future__ import annotations

import psycopg2
import pytest

from harness.drift_env import wait_for


def test_transient_failures_count_as_not_yet() -> None:
    answers: list[BaseException | bool] = [psycopg2.OperationalError("timeout expired"), False, True]

    def predicate() -> bool:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    wait_for(predicate, timeout=30, what="a version", interval=0.01)
    assert answers == []


def test_other_errors_and_the_deadline_end_the_wait() -> None:
    def broken() -> bool:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        wait_for(broken, timeout=30, what="a version", interval=0.01)

    def down() -> bool:
        raise psycopg2.OperationalError("connection refused")

    with pytest.raises(TimeoutError, match=r"timed out after 0\.05s waiting for a version"):
        wait_for(down, timeout=0.05, what="a version", interval=0.01)
