"""Graceful shutdown for the consumer loop: SIGTERM/SIGINT only set a flag; a second signal exits at once."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

logger = logging.getLogger(__name__)


class Shutdown:
    """The loop's stop flag (an ``Event``, so waits end early) and the signals that set it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signals = 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals > 1:
            logger.warning("second signal %d: exiting now, the uncommitted batch will be redelivered", signum)
            raise SystemExit(128 + signum)
        logger.info("signal %d: finishing the current batch, then stopping", signum)
        self.event.set()

    @contextlib.contextmanager
    def handlers(self) -> Iterator[None]:
        """Install the handlers for the duration (main thread only; elsewhere the flag still works)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
