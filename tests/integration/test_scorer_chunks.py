"""The scorer infers a micro-batch chunk by chunk while later chunks are still being fetched: the
outcome (which records get verdicts, in which order, with which p_fake) must not depend on the chunk
size, and an unavailable store must still fail the whole batch with nothing written."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np
import pytest

from harness.wait import wait_until
from ingest.budget import ByteBudget
from ingest.contracts import ImageSubmitted, encode, utcnow
from ingest.errors import TransientError
from ingest.loop import Batch, Record
from scorer.engine import ServingModel
from scorer.handler import ScoreHandler
from tests.fetch_helpers import MemoryStore, msg
from tests.scorer_helpers import jpeg, make_weights, memory_handler

_offsets = itertools.count()


def _store(n: int) -> MemoryStore:
    store = MemoryStore()
    for i in range(n):
        store.put("images", f"chunks/{i}.jpg", jpeg(i))
    store.put("images", "chunks/text.jpg", b"not an image at all")
    return store


def _batch(keys: list[str]) -> Batch:
    records = []
    for i, key in enumerate(keys):
        msg = ImageSubmitted(
            image_id=f"chunk-{i}", ref=f"s3://images/{key}", submitted_at=utcnow(), source="t"
        )
        records.append(Record("images.submitted", 0, next(_offsets), msg.image_id.encode(), encode(msg)))
    return Batch(records)


def _handler(store: MemoryStore, model: ServingModel, chunk: int) -> ScoreHandler:
    return memory_handler(model, store, chunk=chunk)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ServingModel:
    path: Path = tmp_path_factory.mktemp("chunks") / "m.safetensors"
    return ServingModel.load(make_weights(path, "v-chunks", seed=3), "cpu")


def test_chunk_size_does_not_change_the_outcome(model: ServingModel) -> None:
    store = _store(20)
    # Bad records inside the first, a middle and the last chunk: a missing object and a non-image.
    keys = [f"chunks/{i}.jpg" for i in range(20)]
    keys[1], keys[9], keys[19] = "chunks/missing.jpg", "chunks/text.jpg", "chunks/missing2.jpg"
    outcomes = {}
    for chunk in (3, 7, 256):
        batch = _batch(keys)
        handler = _handler(store, model, chunk)
        try:
            handler(batch)
        finally:
            handler.close()
            handler.fetcher.close()
        verdicts = handler.sink.verdicts  # type: ignore[attr-defined]
        failed = sorted((f.record.offset - batch.records[0].offset, f.code) for f in batch.failures.values())
        outcomes[chunk] = (
            [v.image_id for v in verdicts],
            np.array([v.p_fake for v in verdicts]),
            failed,
        )
        assert len(verdicts) + len(failed) == len(keys)
    ids, p, failed = outcomes[256]
    assert ids == [f"chunk-{i}" for i in range(20) if i not in (1, 9, 19)]
    assert [pos for pos, _ in failed] == [1, 9, 19]
    for chunk in (3, 7):
        assert outcomes[chunk][0] == ids
        assert outcomes[chunk][2] == failed
        np.testing.assert_allclose(outcomes[chunk][1], p, atol=1e-5)


def test_store_outage_in_a_later_chunk_fails_the_batch_and_stops_fetching(model: ServingModel) -> None:
    store = _store(40)
    store.fail["chunks/5.jpg"] = TransientError("object store unavailable")
    gate = threading.Event()

    def hold(key: str) -> None:
        # Hold back the fetches after the failing one until the handler has given up: the pool's 8
        # workers take items 13-20 and wait here; items 21-39 stay queued and must be cancelled.
        if int(key.split("/")[1].split(".")[0]) > 12:
            gate.wait(30)

    store.before_get = hold
    handler = _handler(store, model, chunk=2)
    batch = _batch([f"chunks/{i}.jpg" for i in range(40)])
    try:
        with pytest.raises(TransientError):
            handler(batch)
        gate.set()
        # A fetch queued now runs after everything queued before it: once it is back, the pool is idle.
        handler.fetcher.fetch_many([msg("s3://images/chunks/0.jpg")])
    finally:
        gate.set()
        handler.close()
        handler.fetcher.close()
    assert handler.sink.verdicts == []  # type: ignore[attr-defined]
    assert batch.failures == {}  # nothing dead-lettered: the batch is retried whole
    assert len(store.calls) == 21 + 1  # items 0-20 and the probe; 21-39 were never fetched
    # The images fetched for the abandoned batch give their budget back (a decode still running: shortly).
    wait_until(lambda: handler.fetcher.budget.held == 0, 10, "the abandoned batch's bytes to be given back")


def test_a_batch_larger_than_the_byte_budget_is_scored_whole_within_it(model: ServingModel) -> None:
    """The budget holds one image at a time (it is smaller than any image): the batch still gets every
    verdict, the bytes held never exceed the largest image, and all of it is given back."""
    store = _store(30)
    largest = max(len(jpeg(i)) for i in range(30))
    handler = _handler(store, model, chunk=4)
    handler.fetcher.budget = ByteBudget(1)
    batch = _batch([f"chunks/{i}.jpg" for i in range(30)])
    try:
        handler(batch)
    finally:
        handler.close()
        handler.fetcher.close()
    assert [v.image_id for v in handler.sink.verdicts] == [f"chunk-{i}" for i in range(30)]  # type: ignore[attr-defined]
    assert 0 < handler.fetcher.budget.peak <= largest
    assert handler.fetcher.budget.held == 0
