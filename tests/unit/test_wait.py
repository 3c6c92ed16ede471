"""harness.wait.wait_until, the one polling helper of the harness and the tests (no stack needed).

No assertion here bounds the real wall clock: a loaded machine may deschedule the test anywhere. The
timing cases run the helper on a fake clock, where every pause and every second is exact."""

from __future__ import annotations

import pytest

import harness.wait
from harness.wait import wait_until


class FakeClock:
    """Stands in for the ``time`` and ``threading`` modules of harness.wait: ``monotonic()`` reads it, and
    a pause (``Event().wait(s)``) moves it on by exactly ``s`` at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.pauses: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def Event(self) -> FakeClock:  # the name threading.Event has
        return self

    def wait(self, seconds: float) -> bool:
        assert seconds > 0, "a pause of 0 s would spin"
        self.pauses.append(seconds)
        self.now += seconds
        return False


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(harness.wait, "time", fake)
    monkeypatch.setattr(harness.wait, "threading", fake)
    return fake


def test_polls_every_interval_until_the_predicate_holds_and_returns_the_seconds_waited(
    clock: FakeClock,
) -> None:
    answers = iter([False, False, False, True])
    waited = wait_until(lambda: next(answers), timeout=60, what="the fourth answer", interval=0.5)
    assert next(answers, None) is None  # asked exactly four times
    assert clock.pauses == [0.5, 0.5, 0.5]
    assert waited == 1.5


def test_times_out_naming_what_and_the_timeout_after_asking_at_the_deadline(clock: FakeClock) -> None:
    asked_at: list[float] = []

    def never() -> bool:
        asked_at.append(clock.now - 1000.0)
        return False

    with pytest.raises(TimeoutError, match=r"^timed out after 1\.25s waiting for the breaker to open$"):
        wait_until(never, timeout=1.25, what="the breaker to open", interval=0.5)
    # The last pause is cut short to end at the deadline, where the predicate gets one more chance.
    assert clock.pauses == [0.5, 0.5, 0.25]
    assert asked_at == [0.0, 0.5, 1.0, 1.25]


def test_a_predicate_that_holds_at_the_deadline_is_not_a_timeout(clock: FakeClock) -> None:
    assert wait_until(lambda: clock.now >= 1001.25, timeout=1.25, what="the deadline", interval=0.5) == 1.25


def test_a_zero_timeout_asks_once(clock: FakeClock) -> None:
    calls: list[None] = []

    def never() -> bool:
        calls.append(None)
        return False

    with pytest.raises(TimeoutError, match="timed out after 0s waiting for a version"):
        wait_until(never, timeout=0, what="a version")
    assert calls == [None] and clock.pauses == []


def test_returns_at_once_when_the_predicate_already_holds(clock: FakeClock) -> None:
    assert wait_until(lambda: True, timeout=60, what="nothing", interval=0.5) == 0
    assert clock.pauses == []


def test_times_out_on_the_real_clock() -> None:
    with pytest.raises(TimeoutError, match=r"^timed out after 0\.05s waiting for Godot$"):
        wait_until(lambda: False, timeout=0.05, what="Godot", interval=0.01)


def test_an_error_in_the_predicate_ends_the_wait_at_once(clock: FakeClock) -> None:
    def broken() -> bool:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        wait_until(broken, timeout=60, what="anything", interval=0.5)
    assert clock.pauses == []


@pytest.mark.parametrize(("timeout", "interval"), [(-1, 0.1), (1, 0), (1, -0.1)])
def test_a_nonsense_timeout_or_interval_is_refused(timeout: float, interval: float) -> None:
    with pytest.raises(ValueError, match="wait_until"):
        wait_until(lambda: True, timeout=timeout, what="anything", interval=interval)
