"""The one "poll until it holds" helper of the harness and the tests (services never import it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll ``predicate`` every ``interval`` seconds until it returns true; return the seconds waited.

    ``what`` completes "waiting for ...": after ``timeout`` seconds (the predicate is always asked once
    more at the deadline) it raises ``TimeoutError`` naming it and the timeout. An exception from the
    predicate propagates at once; a caller that tolerates some wraps its predicate. A caller that wants
    a bool catches ``TimeoutError``."""
    if timeout < 0 or interval <= 0:
        raise ValueError(f"wait_until: timeout {timeout} must be >= 0 and interval {interval} > 0")
    started = time.monotonic()
    deadline = started + timeout
    pause = threading.Event()
    while not predicate():
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        pause.wait(min(interval, deadline - now))
    return time.monotonic() - started
