"""Step 3 of the consumer loop: send a batch's outputs and dead letters, and make them durable.

Three outcomes besides success, each with its own path:

* **The broker will never accept one message** (larger than the topic's ``max.message.bytes``): the record
  it came from is dead-lettered with code ``output_too_large`` and the partition moves on. The check runs
  *before* sending, against the limit the broker reports for the topic: kafka-python's idempotent producer
  treats a broker-side size rejection as fatal (every later send fails too), and its ``flush()`` raises
  ``UnknownError: Future not done`` while it splits the rejected batch, so the rejection must not reach it.
  If one does anyway (the topic's limit was lowered since it was read), the limit is read again, the
  producer is replaced and the batch retried, which then takes the dead-letter path.
* **The broker refuses the topic** (no ACL to write it, an invalid topic): every record would fail the same
  way, so nothing is dead-lettered. ``DeliveryRefused`` tells the loop to hold the batch (not committed,
  service unready, retried every probe interval) until the fault is fixed.
* **Anything transient** (a broker down, a timeout): ``TransientError``; the loop backs off and retries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from kafka.record.default_records import DefaultRecordBatchBuilder

from ingest.batch import MAX_DEAD_LETTER_PAYLOAD, Batch, dead_letter
from ingest.contracts import encode
from ingest.errors import PermanentError, TransientError, is_transient, rejects_record
from ingest.loop_config import ProducerLike
from ingest.topics import dlq_topic

logger = logging.getLogger(__name__)

# Kafka's default max.message.bytes (topic) and message.max.bytes (broker): used when a topic's own limit
# cannot be read (no DescribeConfigs ACL, a fake in unit tests).
DEFAULT_MESSAGE_LIMIT = 1_048_588
# More than a one-record batch adds to its key and value (61-byte batch header, at most ~25 of varints).
RECORD_OVERHEAD_BOUND = 128
# Room a dead letter needs besides its base64 payload: the reason (4,000 characters), ids and field names.
DEAD_LETTER_OVERHEAD = 16 * 1024

LimitLookup = Callable[[list[str]], dict[str, int]]


class DeliveryRefused(Exception):
    """The broker refuses a whole topic (authorization, invalid topic): hold the batch, dead-letter none."""

    def __init__(self, topic: str, cause: BaseException) -> None:
        super().__init__(f"the broker refuses writes to {topic}: {type(cause).__name__}: {cause}")
        self.topic = topic
        self.cause = cause


class TopicLimits:
    """Each topic's ``max.message.bytes``, read from the broker on first use and cached for ``ttl_s``."""

    def __init__(
        self, lookup: LimitLookup | None, default: int = DEFAULT_MESSAGE_LIMIT, ttl_s: float = 300.0
    ) -> None:
        self._lookup = lookup
        self._default = default
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def limit(self, topic: str) -> int:
        with self._lock:
            hit = self._cache.get(topic)
            if hit is not None and time.monotonic() - hit[1] < self._ttl_s:
                return hit[0]
        value = self._read(topic)
        with self._lock:
            self._cache[topic] = (value, time.monotonic())
        return value

    def forget(self, topic: str) -> None:
        with self._lock:
            self._cache.pop(topic, None)

    def _read(self, topic: str) -> int:
        if self._lookup is None:
            return self._default
        try:
            return self._lookup([topic]).get(topic, self._default)
        except Exception as e:  # a limit we cannot read must not stop delivery; the broker still checks
            logger.warning("cannot read max.message.bytes of %s (%s: %s)", topic, type(e).__name__, e)
            return self._default


def broker_limits(make_admin: Callable[[], Any]) -> LimitLookup:
    """A ``TopicLimits`` lookup that asks the broker (``describe_configs``). The admin client is made on
    first use, so a service still starts while the broker is down."""
    from kafka.admin import ConfigResource, ConfigResourceType

    admins: list[Any] = []

    def lookup(topics: list[str]) -> dict[str, int]:
        if not admins:
            admins.append(make_admin())
        resources = [ConfigResource(ConfigResourceType.TOPIC, t, ["max.message.bytes"]) for t in topics]
        described = admins[0].describe_configs(resources, config_filter="all").get("topic", {})
        out: dict[str, int] = {}
        for topic, configs in described.items():
            value = configs.get("max.message.bytes", {}).get("value")
            if value is not None:
                out[topic] = int(value)
        return out

    return lookup


def message_size(key: bytes | None, value: bytes | None) -> int:
    """Bytes the message takes in a record batch of its own, uncompressed: an upper bound of what the
    broker counts (it limits the compressed batch), so a message refused here might have compressed
    under the limit. Verdicts and explanations are a few kilobytes against a 1 MB limit."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, []))


class Delivery:
    """Sends what a handled batch produced and waits until the broker has it all (``acks=all``)."""

    def __init__(
        self,
        producer: ProducerLike,
        service: str,
        limits: TopicLimits | None = None,
        timeout_s: float = 30.0,
        renew: Callable[[], ProducerLike] | None = None,
    ) -> None:
        """``renew`` makes a new producer after a fatal rejection (an idempotent producer cannot recover)."""
        self.producer = producer
        self.service = service
        self.limits = limits or TopicLimits(None)
        self.timeout_s = timeout_s
        self._renew = renew

    def deliver(self, batch: Batch, attempt: int) -> None:
        """Dead-letter the records whose outputs the broker would refuse, then send and wait for the rest."""
        self._fail_oversized(batch)
        sent: list[tuple[str, Any]] = []
        for out in batch.outputs:
            if out.source is None or not batch.is_failed(out.source):
                sent.append((out.topic, self._send(out.topic, out.key, out.value)))
        for f in batch.failures.values():
            topic = dlq_topic(f.record.topic)
            room = (self.limits.limit(topic) - DEAD_LETTER_OVERHEAD) * 3 // 4  # base64 grows 4/3
            letter = dead_letter(f, attempt, self.service, max(0, min(MAX_DEAD_LETTER_PAYLOAD, room)))
            sent.append((topic, self._send(topic, f.record.key, encode(letter))))
        self._wait(sent)

    def _send(self, topic: str, key: bytes | None, value: bytes) -> Any:
        try:
            return self.producer.send(topic, value=value, key=key)
        except Exception as e:  # raised before queueing: the client's own size check, metadata, authorization
            self._classify(e, topic)

    def _fail_oversized(self, batch: Batch) -> None:
        for out in batch.outputs:
            limit = self.limits.limit(out.topic)
            raw = len(out.value) + len(out.key or b"")
            if raw + RECORD_OVERHEAD_BOUND <= limit:
                continue  # plainly fits: skip the exact estimate, once per output on the hot path
            size = message_size(out.key, out.value)
            if size <= limit:
                continue
            error = PermanentError(
                f"its output to {out.topic} is {size} bytes; the topic accepts at most {limit} "
                "(max.message.bytes): raise the topic's limit, then redrive this dead letter",
                code="output_too_large",
            )
            for record in [out.source] if out.source is not None else batch.records:
                if not batch.is_failed(record):
                    batch.fail(record, error)
                    logger.warning("dead-lettering %s: %s", record.where, error.reason)

    def _wait(self, sent: Iterable[tuple[str, Any]]) -> None:
        """Flush, then read every send's own result: kafka-python's ``flush()`` raises ``Future not done``
        while it splits a batch the broker rejected, which hides the message that failed and why."""
        deadline = time.monotonic() + self.timeout_s
        flush_error: Exception | None = None
        try:
            self.producer.flush(timeout=self.timeout_s)
        except Exception as e:
            flush_error = e
        for topic, future in sent:
            if future is None:  # a producer whose flush() is the whole answer (the unit tests' fake)
                continue
            try:
                future.get(timeout=max(0.1, deadline - time.monotonic()))
            except Exception as e:
                self._classify(e, topic)
        if flush_error is not None:
            self._classify(flush_error, "the output topics")

    def _classify(self, e: BaseException, topic: str) -> NoReturn:
        """Raise what the loop needs for ``e``."""
        if is_transient(e):
            raise TransientError(f"delivery to {topic} failed: {type(e).__name__}: {e}") from e
        self._replace_producer()
        if rejects_record(e):
            # The topic's limit changed since it was read: read it again and let the retry dead-letter.
            self.limits.forget(topic)
            raise TransientError(
                f"{topic} rejected a message ({type(e).__name__}); re-reading its limit"
            ) from e
        raise DeliveryRefused(topic, e) from e

    def _replace_producer(self) -> None:
        if self._renew is None:
            return
        old, self.producer = self.producer, self._renew()
        try:
            old.close(timeout=0)
        except Exception as e:  # the old producer is already broken; closing it is best-effort
            logger.debug("closing the replaced producer: %s", e)
