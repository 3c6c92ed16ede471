"""The byte budget for fetched-but-not-decoded images (ingest/budget.py)."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from ingest.budget import ByteBudget, Held, as_fetched


def test_acquire_waits_for_room_and_one_oversized_request_passes_alone() -> None:
    budget = ByteBudget(10)
    budget.acquire(6)
    got = threading.Event()

    def take() -> None:
        budget.acquire(6)
        got.set()

    t = threading.Thread(target=take)
    t.start()
    assert not got.wait(0.2)  # 6 + 6 > 10: it waits
    budget.release(6)
    assert got.wait(5)
    t.join()
    budget.release(6)
    budget.acquire(50)  # larger than the budget, and nothing else is held: granted
    assert budget.held == 50 and budget.peak == 50
    with pytest.raises(ValueError):
        ByteBudget(0)


def _fetches(pool: ThreadPoolExecutor, budget: ByteBudget, sizes: list[int]) -> list[Future[Held]]:
    def fetch(n: int) -> Held:
        data = b"x" * n
        budget.acquire(n)
        return Held(data)

    return [pool.submit(fetch, n) for n in sizes]


def test_the_consumer_that_releases_as_it_goes_never_holds_more_than_the_budget() -> None:
    budget = ByteBudget(100)
    sizes = [40, 70, 30, 90, 10, 60] * 5
    received = []
    with ThreadPoolExecutor(4) as pool:
        for i, data in as_fetched(_fetches(pool, budget, sizes), budget):
            assert isinstance(data, bytes)
            received.append(i)
            budget.release(len(data))
    assert sorted(received) == list(range(len(sizes)))
    assert budget.peak <= 100 and budget.held == 0


def test_stopping_early_gives_back_what_the_consumer_never_received() -> None:
    budget = ByteBudget(1000)
    with ThreadPoolExecutor(2) as pool:
        arrivals = as_fetched(_fetches(pool, budget, [100] * 20), budget)
        _i, first = next(arrivals)
        assert isinstance(first, bytes)
        arrivals.close()  # what an exception in the consumer's loop does
    budget.release(len(first))
    assert budget.held == 0


def test_a_failed_fetch_is_an_outcome_not_an_exception() -> None:
    budget = ByteBudget(10)
    failed: Future[Held] = Future()
    failed.set_exception(FileNotFoundError("gone"))
    [(i, res)] = list(as_fetched([failed], budget))
    assert i == 0 and isinstance(res, FileNotFoundError)


def test_received_bytes_are_not_kept_by_their_future() -> None:
    """A batch's futures live until the batch ends; the bytes must not (that held whole batches of photos)."""
    budget = ByteBudget(1000)
    with ThreadPoolExecutor(2) as pool:
        futures = _fetches(pool, budget, [100] * 5)
        for _i, data in as_fetched(futures, budget):
            assert isinstance(data, bytes)
            budget.release(len(data))
    for f in futures:
        with pytest.raises(RuntimeError, match="already taken"):
            f.result().take()
