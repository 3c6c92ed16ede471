"""Memory bounded by bytes, not by counts: the fetched-but-not-decoded image bytes of one process.

A micro-batch is counted in records (``max_batch``), and a record can be a 32×32 thumbnail or a 7 MB phone
photo. Fetching a whole batch of photos before decoding any held 256 × 7 MB. Instead, a fetch worker that
has read an image takes its size from a ``ByteBudget`` before handing it over, and the consumer gives it
back right after decoding (the decoded model input is a few kilobytes). When the budget is spent, fetch
workers wait, so the bytes held are at most the budget plus one image per fetch worker in download.

The consumer takes images in the order they arrive (``as_fetched``), not in submission order: a worker
blocked on the budget holds no budget, and every image that does hold some has already been handed to the
consumer, so the budget always comes back and nothing can wait on itself.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Sequence
from concurrent.futures import Future

MiB = 1024 * 1024


class ByteBudget:
    """A counting semaphore over bytes. One request larger than the whole budget is granted once nothing
    else is held, so a single large image never waits forever."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a byte budget needs a capacity of at least 1 byte")
        self.capacity = capacity
        self._held = 0
        self._peak = 0
        self._cond = threading.Condition()

    @property
    def held(self) -> int:
        return self._held

    @property
    def peak(self) -> int:
        """The most bytes held at once since this budget was made."""
        return self._peak

    def acquire(self, n: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._held == 0 or self._held + n <= self.capacity)
            self._held += n
            self._peak = max(self._peak, self._held)

    def release(self, n: int) -> None:
        with self._cond:
            self._held = max(0, self._held - n)
            self._cond.notify_all()


class Held:
    """Fetched bytes that hold their size of a budget. A finished ``Future`` keeps its result for as long
    as the future lives (the caller's list of a whole batch's futures), so the bytes travel in this box
    and ``take`` empties it: once decoded, nothing keeps them."""

    def __init__(self, data: bytes) -> None:
        self.size = len(data)
        self._data: bytes | None = data

    def take(self) -> bytes:
        data, self._data = self._data, None
        if data is None:
            raise RuntimeError("these bytes were already taken")
        return data


def as_fetched(
    futures: Sequence[Future[Held]], budget: ByteBudget
) -> Generator[tuple[int, bytes | BaseException], None, None]:
    """``(index, bytes or the exception)`` for each fetch as it completes. Each ``bytes`` received holds its
    length of ``budget`` until the caller releases it (``budget.release(len(data))``). Closing the iterator
    early (an exception in the caller's loop) cancels the fetches not started and returns the budget of
    every image the caller has not received, now or when its fetch ends."""
    index = {f: i for i, f in enumerate(futures)}
    # Each future reports itself on a queue when it ends: one callback per fetch. Waiting with
    # ``concurrent.futures.wait(FIRST_COMPLETED)`` on what is left instead set up a waiter on every
    # unfinished future each time one finished, quadratic in the batch (256 fetches: ~33,000 waiters).
    finished: queue.SimpleQueue[Future[Held]] = queue.SimpleQueue()
    for f in futures:
        f.add_done_callback(finished.put)
    received: set[Future[Held]] = set()
    try:
        while len(received) < len(futures):
            f = finished.get()
            try:
                result: bytes | BaseException = f.result().take()
            except Exception as e:  # a per-image outcome (a cancelled fetch too): the caller classifies it
                result = e
            received.add(f)
            yield index[f], result
    finally:
        for f in futures:
            if f not in received:
                f.cancel()
                f.add_done_callback(lambda g: _give_back(g, budget))


def _give_back(future: Future[Held], budget: ByteBudget) -> None:
    if not future.cancelled() and future.exception() is None:
        budget.release(future.result().size)
