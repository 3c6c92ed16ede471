"""One micro-batch as a handler sees it, and how a record it failed becomes a dead letter.

The consumer loop (``ingest.loop``) polls the records, hands a ``Batch`` to the handler, then sends the
batch's outputs and one ``dead_letter`` per failed record before it commits.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ingest.contracts import DeadLetter, utcnow

logger = logging.getLogger(__name__)

MAX_REASON = 4000
# The code of a failure that is neither bad input nor transient (a bug): ``unexpected_<ExceptionClass>``.
UNEXPECTED_PREFIX = "unexpected_"
# Bytes of the original record a dead letter keeps. Base64 of a record near Kafka's default 1 MiB message
# limit would not fit in a dead letter, and a dead letter that cannot be sent blocks its partition forever.
MAX_DEAD_LETTER_PAYLOAD = 512 * 1024


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class Failure:
    record: Record
    error_class: str
    reason: str
    code: str  # short, bounded reason code: the metrics label
    error: BaseException | None = field(default=None, compare=False, repr=False)  # for the log's traceback


@dataclass(frozen=True)
class Output:
    """A downstream message queued by the handler. ``source`` is the record it came from: when the broker
    will never accept the message (larger than the topic allows), that record is dead-lettered instead."""

    topic: str
    key: bytes | None
    value: bytes
    source: Record | None = None


@dataclass
class Batch:
    """What the handler sees: the records, plus the two ways it reports back."""

    records: list[Record]
    failures: dict[tuple[str, int, int], Failure] = field(default_factory=dict)
    outputs: list[Output] = field(default_factory=list)

    def fail(self, record: Record, error: BaseException | str) -> None:
        """Mark ``record`` as permanently failed; it will be dead-lettered with this reason."""
        if isinstance(error, BaseException):
            reason = getattr(error, "reason", None) or str(error) or type(error).__name__
            error_class = type(error).__name__
            # Unexpected exceptions have no code; their class name is bounded by the code base.
            code = getattr(error, "code", None) or f"{UNEXPECTED_PREFIX}{error_class}"
        else:
            reason, error_class, code = error, "PermanentError", "permanent"
        key = (record.topic, record.partition, record.offset)
        exc = error if isinstance(error, BaseException) else None
        self.failures[key] = Failure(record, error_class, reason[:MAX_REASON], str(code)[:64], exc)

    def produce(self, topic: str, key: bytes | None, value: bytes, source: Record | None = None) -> None:
        """Queue a downstream message; it is sent and flushed before the batch is committed. Name the
        ``source`` record when there is one, so an undeliverable message fails that record only."""
        self.outputs.append(Output(topic, key, value, source))

    def is_failed(self, record: Record) -> bool:
        return (record.topic, record.partition, record.offset) in self.failures

    def pending(self) -> Iterator[Record]:
        """Records not (yet) marked as failed."""
        for r in self.records:
            if (r.topic, r.partition, r.offset) not in self.failures:
                yield r


Handler = Callable[[Batch], None]


def dead_letter(
    failure: Failure, attempt: int, service: str, max_payload: int = MAX_DEAD_LETTER_PAYLOAD
) -> DeadLetter:
    """The ``<topic>.dlq`` message for ``failure``: the original record (its head, when it is too large to
    send whole: topic, partition and offset still locate all of it) and why it failed."""
    r = failure.record
    payload, reason = r.value or b"", failure.reason
    if len(payload) > max_payload:
        note = f"[payload truncated from {len(payload)} to {max_payload} bytes] "
        payload, reason = payload[:max_payload], (note + reason)[:MAX_REASON]
    return DeadLetter(
        payload_b64=base64.b64encode(payload).decode(),
        key_b64=base64.b64encode(r.key).decode() if r.key is not None else None,
        topic=r.topic,
        partition=r.partition,
        offset=r.offset,
        error_class=failure.error_class,
        code=failure.code,
        reason=reason,
        attempts=attempt,
        service=service,
        failed_at=utcnow(),
    )


def log_failures(batch: Batch) -> None:
    """Log the records about to be dead-lettered. Bad input is one line each; an unexpected error also gets
    its traceback, once per error class and batch (a broken release fails every record the same way)."""
    traced: set[str] = set()
    for f in batch.failures.values():
        unexpected = f.code.startswith(UNEXPECTED_PREFIX)
        trace = unexpected and f.error is not None and f.error_class not in traced
        if trace:
            traced.add(f.error_class)
        logger.log(
            logging.ERROR if unexpected else logging.INFO,
            "dead-lettering %s: %s: %s",
            f.record.where,
            f.error_class,
            f.reason,
            exc_info=f.error if trace else None,
        )
