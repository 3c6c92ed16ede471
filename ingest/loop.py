"""The one consumer loop every service runs.

Contract, in order, for each batch:

1. poll records until ``max_batch`` records or ``max_wait_ms`` after the first one was produced;
2. call the handler; it makes its results durable (database upserts, objects) and may mark single
   records as permanently failed with ``Batch.fail`` and queue downstream messages with ``Batch.produce``;
3. send the queued messages and one dead letter per failed record (``ingest.delivery``);
4. only then commit ``last_offset + 1`` for every partition in the batch.

A transient error commits nothing: the loop seeks back to the batch's first offsets, backs off and
processes the batch again. Anything else is retried on the whole batch a few times, then the batch is
replayed one record at a time so that the poison record is dead-lettered and its neighbours processed,
unless the circuit breaker (``ingest.breaker``) sees a broken release and holds the batch, probing with
one record until it goes through. Writes must be idempotent (keyed upserts): a record can be handled more
than once, never lost. SIGTERM/SIGINT finish the current batch, commit, and close (``ingest.shutdown``).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time

from kafka import TopicPartition
from kafka.errors import UnsupportedCodecError
from kafka.structs import OffsetAndMetadata

from ingest.batch import MAX_DEAD_LETTER_PAYLOAD, Batch, Failure, Handler, Record, log_failures
from ingest.breaker import Breaker
from ingest.delivery import Delivery, DeliveryRefused
from ingest.errors import PermanentError, classify, is_transient
from ingest.lag import LagReporter
from ingest.loop_config import ConsumerLike, LoopConfig, ProducerLike, Revocations, RunStats
from ingest.metrics import LoopMetrics
from ingest.rebalance import without_revoked
from ingest.shutdown import Shutdown

# The batch model lives in ingest.batch; handlers and tests import it from here as well.
__all__ = [
    "MAX_DEAD_LETTER_PAYLOAD",
    "Batch",
    "ConsumerLoop",
    "Failure",
    "Handler",
    "LoopConfig",
    "Record",
    "RunStats",
]

logger = logging.getLogger(__name__)


class _Retry(Exception):
    """Internal: the batch hit a transient error and must be processed again."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Open(Exception):
    """Internal: the circuit breaker holds this batch (nothing dead-lettered, nothing committed)."""


class ConsumerLoop:
    """Runs ``handler`` over batches from ``consumer`` with commit-after-durable semantics.

    The loop does not create the clients but owns them once ``run`` starts: it closes the
    consumer after the final commit, then the producer (which flushes anything still queued).
    """

    def __init__(
        self,
        consumer: ConsumerLike,
        producer: ProducerLike,
        handler: Handler,
        config: LoopConfig,
        metrics: LoopMetrics | None = None,
        revocations: Revocations | None = None,
        delivery: Delivery | None = None,
    ) -> None:
        """``revocations``: the rebalance listener given to ``consumer.subscribe`` (``RevocationTracker``).
        ``delivery``: how outputs reach the broker (``ingest.delivery``); by default through ``producer``
        with Kafka's default message limit."""
        self.consumer = consumer
        self.revocations = revocations
        # Highest offset this member committed per partition while it owned it: a commit never goes back.
        self._committed: dict[TopicPartition, int] = {}
        self.delivery = delivery or Delivery(producer, config.service, timeout_s=config.flush_timeout_s)
        self._refused: str | None = None  # why the broker refuses an output topic, while it does
        self.handler = handler
        self.config = config
        self.metrics = metrics
        self._shutdown = Shutdown()
        self._stop = self._shutdown.event
        self._lag = LagReporter(metrics.lag) if metrics else None
        self.breaker = Breaker(config.breaker_threshold, config.breaker_min_records)

    def readiness(self) -> tuple[bool, str]:
        """For ``/ready``: not ready while the circuit breaker holds a batch."""
        if self.breaker.is_open:
            return False, "circuit open: batches fail on every record with unexpected errors"
        if self._refused is not None:
            return False, f"circuit open: {self._refused}"
        return True, "ready"

    # -- shutdown ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the current batch, commit, and return."""
        self._stop.set()

    # -- main loop -----------------------------------------------------------------------------

    def run(self, max_records: int | None = None, idle_timeout: float | None = None) -> RunStats:
        """Consume until stopped, ``max_records`` processed, or ``idle_timeout`` seconds without records.

        Always commits the last completed batch and closes both clients before returning.
        """
        stats = RunStats()
        attempts = poll_failures = 0
        with contextlib.ExitStack() as stack:
            stack.callback(self._close_producer)
            stack.callback(self._close_consumer)
            stack.enter_context(self._shutdown.handlers())
            last_activity = time.monotonic()
            while not self._stop.is_set():
                remaining = (
                    None if max_records is None else max_records - stats.processed - stats.dead_lettered
                )
                if remaining is not None and remaining <= 0:
                    stats.stopped_by = "max_records"
                    break
                try:
                    records = self._poll_batch(remaining)
                except Exception as e:
                    # kafka-python raises from poll() while the broker is unreachable (the coordinator
                    # lookup fails). Nothing was handed out, so nothing is lost: wait and poll again. A
                    # batch in a codec this process cannot decode is retried the same way: exiting would
                    # only crash-loop on the same batch; retrying keeps the service up, logging and
                    # counting (the transient-errors alert fires) until the codec is installed.
                    if not (is_transient(e) or isinstance(e, UnsupportedCodecError)):
                        raise
                    poll_failures += 1
                    self._poll_backoff(e, poll_failures)
                    continue
                poll_failures = 0
                if not records:
                    if idle_timeout is not None and time.monotonic() - last_activity >= idle_timeout:
                        stats.stopped_by = "idle_timeout"
                        break
                    continue
                last_activity = time.monotonic()
                try:
                    self._process(records, attempts + 1, stats)
                    attempts = 0
                except _Open:
                    self._rewind(records)
                    self._stop.wait(self.config.breaker_probe_s)
                except _Retry as r:
                    attempts += 1
                    stats.retries += 1
                    self._retry_later(records, r.cause, attempts)
            if not stats.stopped_by:
                stats.stopped_by = "signal" if self._shutdown.signals else "stop"
        logger.info(
            "loop stopped (%s): %d processed, %d dead-lettered, %d batches, %d retries",
            stats.stopped_by,
            stats.processed,
            stats.dead_lettered,
            stats.batches,
            stats.retries,
        )
        return stats

    def _retry_later(self, records: list[Record], cause: BaseException, attempts: int) -> None:
        """After a transient failure: rewind to the batch's first offsets and back off (exponentially)."""
        self._rewind(records)
        delay = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (attempts - 1))
        logger.warning(
            "transient failure on %s (attempt %d), retrying in %.1fs: %s: %s",
            records[0].where,
            attempts,
            delay,
            type(cause).__name__,
            cause,
        )
        if self.metrics:
            self.metrics.transient_errors.labels(type(cause).__name__).inc()
            self.metrics.batches.labels("retried").inc()
        self._stop.wait(delay)

    def _poll_batch(self, remaining: int | None) -> list[Record]:
        """Accumulate up to ``max_batch`` records, waiting at most ``max_wait_ms`` after the first."""
        cap = self.config.max_batch if remaining is None else min(self.config.max_batch, remaining)
        records: list[Record] = []
        deadline: float | None = None
        while len(records) < cap and not self._stop.is_set():
            if deadline is None:
                timeout_ms = self.config.poll_timeout_ms
            else:
                timeout_ms = int((deadline - time.monotonic()) * 1000)
                if timeout_ms <= 0:
                    break
            try:
                polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=cap - len(records))
            except Exception as e:
                if records and (is_transient(e) or isinstance(e, UnsupportedCodecError)):
                    break  # hand out what already arrived; the next poll meets the outage and backs off
                raise
            fresh = [
                Record(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp or 0)
                for tp in sorted(polled, key=lambda t: (t.topic, t.partition))
                for m in polled[tp]
            ]
            records = self._without_revoked(records + fresh)
            if not records:
                break  # nothing arrived within poll_timeout: let run() check its stop conditions
            if deadline is None:
                deadline = self._batch_deadline(records)
        return records

    def _batch_deadline(self, records: list[Record]) -> float:
        """When the batch that starts with ``records`` closes: ``max_wait_ms`` after its oldest record was
        produced (the Kafka timestamp), not after it was polled. Records that arrived while the previous
        batch was processed have already waited; holding them another ``max_wait_ms`` added that much to
        every latency and kept a half-loaded scorer busy waiting. The deadline is never later than
        ``max_wait_ms`` from now (a producer clock running ahead) and never sooner than ``min_wait_ms``
        (about one fetch round trip), so records produced just behind the first ones still join."""
        cfg = self.config
        stamps = [r.timestamp_ms for r in records if r.timestamp_ms > 0]
        age = max(0.0, time.time() - min(stamps) / 1000) if stamps else 0.0
        wait_s = max(min(cfg.min_wait_ms, cfg.max_wait_ms) / 1000, cfg.max_wait_ms / 1000 - age)
        return time.monotonic() + wait_s

    def _poll_backoff(self, e: BaseException, failures: int) -> None:
        delay = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (failures - 1))
        logger.warning(
            "poll failed (attempt %d), retrying in %.1fs: %s: %s", failures, delay, type(e).__name__, e
        )
        if self.metrics:
            self.metrics.transient_errors.labels(type(e).__name__).inc()
        self._stop.wait(delay)

    def _process(self, records: list[Record], attempt: int, stats: RunStats) -> None:
        started = time.monotonic()
        if self.breaker.is_open:
            self._probe(records[0])
        batch = self._handle(records)
        self._check_breaker(batch)
        log_failures(batch)
        self._deliver(batch, attempt)
        self._commit(records)
        n_failed = len(batch.failures)
        stats.processed += len(records) - n_failed
        stats.dead_lettered += n_failed
        stats.batches += 1
        if self.metrics:
            m = self.metrics
            for r in batch.pending():
                m.records.labels(r.topic, "processed").inc()
            for f in batch.failures.values():
                m.records.labels(f.record.topic, "dead_lettered").inc()
                m.dead_letters.labels(f.record.topic, f.code).inc()
            m.batches.labels("committed").inc()
            m.batch_size.observe(len(records))
            m.batch_seconds.observe(time.monotonic() - started)
            if self._lag is not None:
                self._lag.update(self.consumer)

    def _check_breaker(self, batch: Batch) -> None:
        held = self.breaker.hold(batch, self.config.breaker_probe_s)
        if self.metrics:
            self.metrics.circuit_open.set(1 if held else 0)
            if held:
                self.metrics.batches.labels("held").inc()
        if held:
            raise _Open()

    def _handle(self, records: list[Record], retries: int | None = None) -> Batch:
        """Run the handler; retry an unexpected error on the whole batch a few times (jittered), then
        isolate the poison record(s) one by one."""
        left = self.config.unexpected_retries if retries is None else retries
        batch = Batch(records)
        try:
            self.handler(batch)
            return batch
        except Exception as e:
            if is_transient(e):
                raise _Retry(e) from e
            if left > 0 and not isinstance(e, PermanentError):
                delay = self.config.backoff_initial_s * random.uniform(0.5, 1.5)
                logger.warning("unexpected %s: %s; retrying the batch in %.2fs", type(e).__name__, e, delay)
                self._stop.wait(delay)
                return self._handle(records, left - 1)
            if len(records) == 1:
                batch = Batch(records)
                batch.fail(records[0], e)
                return batch
            logger.warning(
                "batch of %d failed (%s: %s); replaying one by one", len(records), type(e).__name__, e
            )
        merged = Batch(records)
        for r in records:
            single = self._handle([r], retries=0)
            merged.failures.update(single.failures)
            merged.outputs.extend(single.outputs)
        return merged

    def _probe(self, record: Record) -> None:
        """While the breaker is open: handle the batch's first record alone (idempotent, its outputs are
        discarded). One handler call per probe, not a whole batch retried and replayed record by record
        (and a log line per record) while the fault lasts. Raises ``_Open`` while it still fails."""
        try:
            self.handler(Batch([record]))
        except Exception as e:
            kind = classify(e)
            if kind == "transient":
                raise _Retry(e) from e
            if kind == "unexpected":
                logger.info(
                    "circuit open: the probe on %s still fails: %s: %s", record.where, type(e).__name__, e
                )
                if self.metrics:
                    self.metrics.batches.labels("held").inc()
                raise _Open() from e
        self.breaker.close()

    def _deliver(self, batch: Batch, attempt: int) -> None:
        """Send outputs and dead letters and wait for the broker: after this returns they are durable.
        Whatever was sent before a failure may be sent again on retry; downstream consumers upsert by key."""
        try:
            self.delivery.deliver(batch, attempt)
        except DeliveryRefused as e:
            if self._refused is None:
                logger.error(
                    "circuit open: %s; holding the batch, retrying every %.0fs",
                    e,
                    self.config.breaker_probe_s,
                )
            self._refused = str(e)
            if self.metrics:
                self.metrics.circuit_open.set(1)
                self.metrics.batches.labels("held").inc()
            raise _Open() from e
        except Exception as e:
            raise _Retry(e) from e
        if self._refused is not None:
            logger.warning("circuit closed: the broker accepts the outputs again")
            self._refused = None

    def _without_revoked(self, records: list[Record]) -> list[Record]:
        """Drop records of partitions a rebalance revoked since they were polled (``ingest.rebalance``)."""
        gone = self.revocations.take() if self.revocations is not None else set()
        if not gone:
            return records
        for tp in gone:
            self._committed.pop(tp, None)
        return without_revoked(self.consumer, gone, records)

    def _commit(self, records: list[Record]) -> None:
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            if tp not in offsets or offsets[tp].offset <= r.offset:
                offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
        # Never move a committed offset back (a replayed batch after a rewind must not undo a later commit).
        offsets = {tp: om for tp, om in offsets.items() if om.offset > self._committed.get(tp, -1)}
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets)
            for tp, om in offsets.items():
                self._committed[tp] = om.offset
        except Exception as e:
            if is_transient(e):
                raise _Retry(e) from e
            # Typically a rebalance took the partitions away: the new owner reprocesses the batch,
            # which the idempotent writes absorb. Losing nothing matters more than this batch's commit.
            logger.warning("commit failed (%s: %s); records will be redelivered", type(e).__name__, e)

    def _rewind(self, records: list[Record]) -> None:
        first: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            first[tp] = min(first.get(tp, r.offset), r.offset)
        assigned = self.consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)

    def _close_consumer(self) -> None:
        with contextlib.suppress(Exception):
            self.consumer.close(autocommit=False)

    def _close_producer(self) -> None:
        with contextlib.suppress(Exception):
            self.delivery.producer.close(timeout=self.config.flush_timeout_s)
