"""Error classes that drive the consumer loop's retry/dead-letter decision.

* ``PermanentError``: retrying cannot help (malformed message, undecodable image, unknown reference).
  The record goes to ``<topic>.dlq`` with the reason and the loop moves on.
* ``TransientError``: the world is temporarily broken (broker, object store or database unavailable).
  The batch is not committed; the loop backs off and processes it again.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["transient", "permanent", "unexpected"]

# Broker answers about one message that no retry changes (it is larger than the topic accepts, or malformed).
RECORD_REJECTIONS = frozenset(
    {"MessageSizeTooLargeError", "RecordListTooLargeError", "InvalidRecordError", "CorruptRecordError"}
)


class PermanentError(Exception):
    """Processing this record can never succeed; dead-letter it.

    ``code`` is a short snake_case reason from a small fixed set (e.g. ``missing_object``,
    ``not_an_image``): safe as a Prometheus label and stable for tests, unlike ``reason``.
    """

    def __init__(self, reason: str, code: str = "permanent") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class InvalidMessage(PermanentError):
    """The record's bytes do not parse as the topic's contract."""

    def __init__(self, reason: str, code: str = "invalid_message") -> None:
        super().__init__(reason, code)


class TransientError(Exception):
    """A dependency is unavailable; retry later without committing."""


def is_transient(exc: BaseException) -> bool:
    """Classify infrastructure failures from the libraries we use as transient.

    Imports are local so that this module stays importable without the optional clients and so
    that classification never fails because a library is missing.
    """
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, PermanentError):
        return False
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    try:
        import psycopg2

        if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
            return True
    except ImportError:  # pragma: no cover - psycopg2 is a hard dependency
        pass
    try:
        from kafka.errors import KafkaError

        if isinstance(exc, KafkaError):
            return bool(getattr(exc, "retriable", False)) or type(exc).__name__ in {
                "KafkaTimeoutError",
                "NoBrokersAvailable",
                "KafkaConnectionError",
            }
    except ImportError:  # pragma: no cover
        pass
    try:
        import urllib3.exceptions

        if isinstance(exc, urllib3.exceptions.HTTPError):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        from minio.error import S3Error, ServerError

        if isinstance(exc, ServerError):
            return True
        if isinstance(exc, S3Error):
            # Missing objects/buckets are the record's fault; everything else is the store's.
            return exc.code not in {"NoSuchKey", "NoSuchBucket", "AccessDenied", "InvalidObjectName"}
    except ImportError:  # pragma: no cover
        pass
    return False


def classify(exc: BaseException) -> Kind:
    """The one classification the consumer loop and the HTTP API share.

    ``transient``: retry later (the loop backs off without committing; the API answers 503).
    ``permanent``: this input can never succeed (the loop dead-letters it; the API answers 4xx).
    ``unexpected``: a bug or a deployment fault, such as a missing ACL (the loop retries, then its circuit
    breaker holds; the API answers 500 and logs).
    """
    if is_transient(exc):
        return "transient"
    if isinstance(exc, PermanentError):
        return "permanent"
    return "unexpected"


def rejects_record(exc: BaseException) -> bool:
    """True when the broker refused one message for what it is (its size or shape), not for who sent it
    or where: another message to the same topic would be accepted."""
    return type(exc).__name__ in RECORD_REJECTIONS
