"""Pure logic of the consumer loop against in-memory clients (the real broker is in the integration tests)."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import TopicPartition

import ingest.loop
from ingest.contracts import DeadLetter, decode
from ingest.errors import PermanentError, TransientError
from ingest.loop import Batch, ConsumerLoop, Record
from tests.fakes import FakeProducer
from tests.loop_helpers import TOPIC, config, make


def test_commits_last_offset_plus_one_per_partition_after_processing() -> None:
    consumer = make([[b"a", b"b", b"c"], [b"d", b"e"]])
    seen: list[bytes] = []

    def handle(batch: Batch) -> None:
        # At handling time nothing of this batch may be committed yet.
        for r in batch.records:
            assert consumer.commits.get(TopicPartition(TOPIC, r.partition), 0) <= r.offset
        seen.extend(r.value or b"" for r in batch.records)

    stats = ConsumerLoop(consumer, FakeProducer(), handle, config()).run(max_records=5)
    assert sorted(seen) == [b"a", b"b", b"c", b"d", b"e"]
    assert consumer.commits == {TopicPartition(TOPIC, 0): 3, TopicPartition(TOPIC, 1): 2}
    assert stats.processed == 5 and stats.stopped_by == "max_records"
    assert consumer.closed


def test_outputs_are_flushed_before_commit_and_failed_flush_commits_nothing() -> None:
    consumer = make([[b"a", b"b"]])
    producer = FakeProducer(fail_flush=1)
    calls = 0

    def handle(batch: Batch) -> None:
        nonlocal calls
        calls += 1
        for r in batch.records:
            batch.produce("out", r.key, (r.value or b"") + b"!")

    ConsumerLoop(consumer, producer, handle, config()).run(max_records=2)
    assert calls == 2  # the first attempt's flush failed, so the batch was processed again
    assert producer.by_topic()["out"] == [(b"k", b"a!"), (b"k", b"b!")]
    assert consumer.commits == {TopicPartition(TOPIC, 0): 2}


def test_poison_record_is_isolated_and_dead_lettered_with_reason() -> None:
    consumer = make([[b"1", b"2", b"boom", b"4", b"5"]])
    producer = FakeProducer()
    processed: list[bytes] = []

    def handle(batch: Batch) -> None:
        for r in batch.records:
            if r.value == b"boom":
                raise ValueError("cannot parse boom")
        processed.extend(r.value or b"" for r in batch.records)

    stats = ConsumerLoop(consumer, producer, handle, config(max_batch=5)).run(max_records=5)
    assert processed == [b"1", b"2", b"4", b"5"]
    letters = [decode(DeadLetter, v) for _, v in producer.by_topic()["t.dlq"]]
    assert len(letters) == 1
    assert letters[0].payload() == b"boom" and letters[0].offset == 2
    assert letters[0].error_class == "ValueError" and "cannot parse boom" in letters[0].reason
    assert consumer.commits == {TopicPartition(TOPIC, 0): 5}
    assert stats.dead_lettered == 1 and stats.processed == 4


def test_batch_fail_marks_single_records_without_replay() -> None:
    consumer = make([[b"ok", b"bad", b"ok2"]])
    producer = FakeProducer()
    calls = 0

    def handle(batch: Batch) -> None:
        nonlocal calls
        calls += 1
        for r in batch.records:
            if r.value == b"bad":
                batch.fail(r, PermanentError("not an image"))

    ConsumerLoop(consumer, producer, handle, config()).run(max_records=3)
    assert calls == 1
    (letter,) = [decode(DeadLetter, v) for _, v in producer.by_topic()["t.dlq"]]
    assert letter.reason == "not an image" and letter.error_class == "PermanentError"


def test_transient_error_rewinds_and_retries_without_commit() -> None:
    consumer = make([[b"a", b"b"]])
    attempts: list[int] = []
    commits_seen: list[int] = []

    def handle(batch: Batch) -> None:
        attempts.append(len(batch.records))
        commits_seen.append(consumer.commit_calls)
        if len(attempts) < 3:
            raise TransientError("database unavailable")

    stats = ConsumerLoop(consumer, FakeProducer(), handle, config()).run(max_records=2)
    assert attempts == [2, 2, 2] and commits_seen == [0, 0, 0]
    assert stats.retries == 2
    assert consumer.commits == {TopicPartition(TOPIC, 0): 2}


def test_stop_during_transient_backoff_commits_nothing() -> None:
    consumer = make([[b"a"]])
    loop: ConsumerLoop

    def handle(batch: Batch) -> None:
        loop.stop()
        raise ConnectionError("broker gone")

    loop = ConsumerLoop(consumer, FakeProducer(), handle, config(backoff_initial_s=5))
    stats = loop.run()
    assert consumer.commits == {} and stats.processed == 0 and stats.stopped_by == "stop"


def test_poll_failing_while_the_broker_is_down_backs_off_and_loses_nothing() -> None:
    """kafka-python's poll() raises (e.g. KafkaConnectionError) while the coordinator is unreachable;
    the loop must wait and poll again, and records polled before the failure must still be handled."""
    consumer = make([[b"a", b"b", b"c"]])
    real_poll = consumer.poll
    calls = {"n": 0}

    def flaky_poll(
        timeout_ms: int = 0, max_records: int | None = None, update_offsets: bool = True
    ) -> object:
        calls["n"] += 1
        if calls["n"] in (2, 3):  # after the first records arrived, then before any arrive
            raise ConnectionError("broker unreachable")
        return real_poll(timeout_ms, 1)

    consumer.poll = flaky_poll  # type: ignore[method-assign]
    seen: list[bytes] = []
    stats = ConsumerLoop(
        consumer,
        FakeProducer(),
        lambda b: seen.extend(r.value or b"" for r in b.records),
        config(max_wait_ms=50),
    ).run(max_records=3)
    assert seen == [b"a", b"b", b"c"]
    assert consumer.commits == {TopicPartition(TOPIC, 0): 3} and stats.processed == 3


def test_micro_batch_respects_max_batch() -> None:
    consumer = make([[bytes([i]) for i in range(10)]])
    sizes: list[int] = []
    ConsumerLoop(consumer, FakeProducer(), lambda b: sizes.append(len(b.records)), config(max_batch=4)).run(
        max_records=10
    )
    assert sizes == [4, 4, 2]


@settings(max_examples=60, deadline=None)
@given(
    partitions=st.lists(
        st.lists(st.sampled_from([b"ok", b"bad", b"dead"]), max_size=12), min_size=1, max_size=4
    ),
    max_batch=st.integers(min_value=1, max_value=7),
    flaky=st.integers(min_value=0, max_value=2),
)
def test_every_record_is_processed_or_dead_lettered_exactly_once(
    partitions: list[list[bytes]], max_batch: int, flaky: int
) -> None:
    consumer = make(partitions)
    producer = FakeProducer()
    done: list[tuple[int, int]] = []
    failures_left = flaky

    def handle(batch: Batch) -> None:
        nonlocal failures_left
        if failures_left:
            failures_left -= 1
            raise TransientError("flaky")
        staged = []
        for r in batch.records:
            if r.value == b"bad":
                raise ValueError("bad record")
            if r.value == b"dead":
                batch.fail(r, "dead on arrival")
            else:
                staged.append((r.partition, r.offset))
        done.extend(staged)  # "durable" only once the whole batch succeeded

    total = sum(len(p) for p in partitions)
    stats = ConsumerLoop(consumer, producer, handle, config(max_batch=max_batch)).run(max_records=total)
    letters = [json.loads(v or b"{}") for _, v in producer.by_topic().get("t.dlq", [])]
    dead = {(x["partition"], x["offset"]) for x in letters}
    ok_expected = {(p, o) for p, vals in enumerate(partitions) for o, v in enumerate(vals) if v == b"ok"}
    # Each good record is durably processed; records of a replayed batch may repeat (idempotent writes).
    assert set(done) == ok_expected
    assert len(letters) == len(dead) == total - len(ok_expected)
    assert stats.processed + stats.dead_lettered == total
    assert consumer.commits == {TopicPartition(TOPIC, p): len(v) for p, v in enumerate(partitions) if v}


def test_batch_window_counts_from_when_the_first_record_was_produced(monkeypatch: pytest.MonkeyPatch) -> None:
    """The window's arithmetic on frozen clocks, so exact whatever else the machine does (on the real
    clocks the 5 ms case failed whenever the test was descheduled for 5 ms between two readings)."""
    loop = ConsumerLoop(make([[]]), FakeProducer(), lambda b: None, config(max_wait_ms=200, min_wait_ms=5))
    now, mono = 1_700_000_000.0, 5_000.0  # wall clock (record timestamps) and the loop's monotonic clock
    monkeypatch.setattr(ingest.loop, "time", SimpleNamespace(time=lambda: now, monotonic=lambda: mono))

    def wait_ms(*ages_s: float) -> float:
        """Milliseconds until the batch closes, for records produced ``ages_s`` before now."""
        stamps = [round((now - age) * 1000) for age in ages_s]
        records = [Record(TOPIC, 0, i, b"k", b"v", stamp) for i, stamp in enumerate(stamps)]
        return (loop._batch_deadline(records) - mono) * 1000

    def ms(x: float) -> object:
        return pytest.approx(x, abs=1e-3)  # float rounding of epoch seconds only

    # Fresh records: the whole window is still ahead.
    assert wait_ms(0.0, 0.0, 0.0) == ms(200)
    # Records that already waited 150 ms (behind the previous batch) get only what is left of it.
    assert wait_ms(0.15, 0.15, 0.15) == ms(50)
    # The oldest record of the batch sets its age.
    assert wait_ms(0.0, 0.12, 0.05) == ms(80)
    # Records older than the window close the batch after one fetch round trip (min_wait_ms), not at once.
    assert wait_ms(5.0, 5.0, 5.0) == ms(5)
    # A producer clock ahead of ours (or no timestamp at all) never stretches the window.
    assert wait_ms(-60.0, -60.0, -60.0) == ms(200)
    assert (loop._batch_deadline([Record(TOPIC, 0, 0, b"k", b"v", 0)]) - mono) * 1000 == ms(200)


def test_old_records_are_handled_without_waiting_out_the_window() -> None:
    """A backlog of records produced long ago is one batch each poll, not one batch per max_wait."""
    consumer = make([[b"a", b"b"]])
    consumer.timestamp_ms = int((time.time() - 3600) * 1000)
    sizes: list[int] = []
    started = time.monotonic()
    ConsumerLoop(
        consumer, FakeProducer(), lambda b: sizes.append(len(b.records)), config(max_wait_ms=60_000)
    ).run(max_records=2)
    # With the window counted from the poll, this run would take the full 60 s window.
    assert sizes == [2] and time.monotonic() - started < 30


def test_a_batch_in_a_codec_it_cannot_decode_is_retried_not_a_crash() -> None:
    """A producer compressing with a codec whose library is missing makes kafka-python's poll() raise
    UnsupportedCodecError on that batch. Exiting would crash-loop on the same batch; the loop must keep
    running, count the failure (the transient-errors alert) and go on once the batch can be read."""
    from kafka.errors import UnsupportedCodecError

    from ingest.metrics import LoopMetrics, new_registry

    consumer = make([[b"a", b"b", b"c"]])
    real_poll = consumer.poll
    calls = {"n": 0}

    def poll(timeout_ms: int = 0, max_records: int | None = None, update_offsets: bool = True) -> object:
        calls["n"] += 1
        if calls["n"] in (2, 3, 4):  # three polls in a row meet the undecodable batch
            raise UnsupportedCodecError("Libraries for lz4 compression codec not found")
        return real_poll(timeout_ms, 1)

    consumer.poll = poll  # type: ignore[method-assign]
    registry = new_registry()
    metrics = LoopMetrics.create("test", registry)
    seen: list[bytes] = []
    stats = ConsumerLoop(
        consumer, FakeProducer(), lambda b: seen.extend(r.value or b"" for r in b.records), config(), metrics
    ).run(max_records=3)
    assert seen == [b"a", b"b", b"c"] and stats.processed == 3
    assert consumer.commits == {TopicPartition(TOPIC, 0): 3}
    failures = registry.get_sample_value(
        "test_transient_errors_total", {"error_class": "UnsupportedCodecError"}
    )
    assert failures == 3.0


def test_a_bad_deploy_costs_one_batch_of_dead_letters_then_the_breaker_holds_until_fixed() -> None:
    """A handler that raises an unexpected error for every record (a broken release) on a backlog: the first
    full batch is dead-lettered (it could be poison), the second opens the breaker: nothing more is
    dead-lettered or committed, the circuit metric says so, and once the fault clears the same records go
    through and the breaker closes."""
    import threading

    from harness.wait import wait_until
    from ingest.metrics import LoopMetrics, new_registry

    consumer = make([[f"r{i}".encode() for i in range(40)]])
    broken = threading.Event()
    broken.set()
    seen: list[bytes] = []
    calls: list[int] = []

    def handler(batch: Batch) -> None:
        calls.append(len(batch.records))
        if broken.is_set():
            raise AttributeError("'NoneType' object has no attribute 'predict'")
        seen.extend(r.value or b"" for r in batch.records)

    registry = new_registry()
    loop = ConsumerLoop(
        consumer,
        FakeProducer(),
        handler,
        config(max_batch=8, unexpected_retries=1, breaker_probe_s=0.05),
        LoopMetrics.create("test", registry),
    )
    done: list[object] = []
    t = threading.Thread(target=lambda: done.append(loop.run(max_records=40)))
    t.start()
    circuit = lambda: registry.get_sample_value("test_circuit_open")  # noqa: E731
    wait_until(lambda: circuit() == 1.0, 10, "the breaker to open")
    labels = {"topic": TOPIC, "reason": "unexpected_AttributeError"}
    dead = registry.get_sample_value("test_dead_letters_total", labels)
    assert dead == 8.0  # one batch, not the backlog
    assert consumer.commits == {TopicPartition(TOPIC, 0): 8}

    def held() -> float:
        return registry.get_sample_value("test_batches_total", {"outcome": "held"}) or 0.0

    held_at, calls_at = held(), len(calls)
    wait_until(lambda: held() >= held_at + 3, 10, "the held batch to be probed again")
    assert consumer.commits == {TopicPartition(TOPIC, 0): 8}  # still nothing after the first batch
    probes = calls[calls_at : calls_at + 3]
    assert probes == [1, 1, 1]  # while held, a probe is one record, not the batch retried and replayed

    broken.clear()  # the fix is deployed (or the dependency recovered)
    t.join(timeout=20)
    assert not t.is_alive() and circuit() == 0.0
    # The probe that went through handled r8 alone; the batch then handles it again (writes are upserts).
    assert seen == [b"r8"] + [f"r{i}".encode() for i in range(8, 40)]
    assert consumer.commits == {TopicPartition(TOPIC, 0): 40}


def test_an_unexpected_error_that_clears_on_retry_dead_letters_nothing() -> None:
    consumer = make([[b"a", b"b", b"c", b"d"]])
    calls = {"n": 0}

    def handler(batch: Batch) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("a cache that was not warm yet")

    producer = FakeProducer()
    stats = ConsumerLoop(consumer, producer, handler, config(unexpected_retries=2)).run(max_records=4)
    assert stats.processed == 4 and stats.dead_lettered == 0 and calls["n"] == 2


def test_one_poison_record_among_good_ones_is_dead_lettered_and_the_breaker_stays_closed() -> None:
    consumer = make([[f"r{i}".encode() for i in range(16)]])

    def handler(batch: Batch) -> None:
        if any(r.value == b"r3" for r in batch.records):
            raise ValueError("cannot handle r3")

    loop = ConsumerLoop(consumer, FakeProducer(), handler, config(max_batch=8, unexpected_retries=1))
    stats = loop.run(max_records=16)
    assert stats.dead_lettered == 1 and stats.processed == 15 and not loop.breaker.is_open
