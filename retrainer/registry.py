"""Model registry: immutable versions in PostgreSQL ``models`` plus their weights in bucket ``models``.

Publishing order (``ModelRegistry.publish``), so that a crash at any point leaves a consistent registry:

1. upload the weights to ``models/<prefix><version>/model.safetensors``;
2. verify: read the object back and compare its sha256 with the local bytes;
3. register: one transaction inserts the row (and, for a champion, retires the previous champion first; the
   unique partial index ``models_one_champion_idx`` makes a second champion impossible);
4. announce on ``models.published`` (a ``ModelPublished`` with the object key and sha256), then stamp
   ``announced_at``.

A crash before 3 leaves at most an unreferenced object (no row, no announcement, champion unchanged). A crash
between 3 and 4 leaves a registered but unannounced champion; ``reconcile`` (run by every retrainer process
at start) re-announces the registry's champion when the topic's last announcement names another version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import psycopg2.extensions
from kafka import KafkaConsumer, TopicPartition

from ingest.contracts import ModelPublished, decode, encode, utcnow
from ingest.db import transaction
from ingest.errors import InvalidMessage
from ingest.kafka import make_producer
from ingest.settings import StackSettings
from ingest.storage import ObjectStore
from ingest.topics import MODELS_PUBLISHED

logger = logging.getLogger(__name__)

MODELS_BUCKET = "models"
MAX_WEIGHTS_BYTES = 200 * 1024 * 1024
Status = Literal["candidate", "champion", "rejected", "retired"]
Trigger = Literal["initial", "feedback_count", "schedule", "manual"]

_COLUMNS = (
    "version, parent, sha256, object_key, metrics, status, trigger, created_at, data, reasons, "
    "promoted_at, rolled_back_at, announced_at"
)


_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}")  # as ingest.contracts.ModelVersion
_SHA256 = re.compile(r"[0-9a-f]{64}")


class RegistryError(Exception):
    """An operator request the registry refuses (unknown version, nothing to roll back to, ...)."""


@dataclass(frozen=True)
class ModelRecord:
    version: str
    parent: str | None
    sha256: str
    object_key: str
    metrics: dict[str, Any]
    status: str
    trigger: str | None
    created_at: datetime
    data: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    promoted_at: datetime | None = None
    rolled_back_at: datetime | None = None
    announced_at: datetime | None = None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> ModelRecord:
        return cls(*row)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            out[k] = v.isoformat() if isinstance(v, datetime) else v
        return out

    def announcement(self) -> ModelPublished:
        numeric = {k: float(v) for k, v in self.metrics.items() if isinstance(v, int | float)}
        return ModelPublished(
            version=self.version,
            object_key=self.object_key,
            sha256=self.sha256,
            parent=self.parent,
            metrics=numeric,
            published_at=utcnow(),
        )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Announcer:
    """Publishes ``ModelPublished`` on the (single-partition) models topic and waits until it is durable."""

    def __init__(self, stack: StackSettings, topic: str = MODELS_PUBLISHED) -> None:
        self.stack = stack
        self.topic = topic

    def announce(self, msg: ModelPublished) -> None:
        producer = make_producer(self.stack.kafka)
        try:
            producer.send(self.topic, key=msg.version.encode(), value=encode(msg)).get(timeout=30)
            producer.flush(timeout=30)
        finally:
            producer.close(timeout=10)
        logger.info("announced model %s on %s", msg.version, self.topic)

    def last(self) -> ModelPublished | None:
        """The topic's latest valid announcement, or None."""
        consumer = KafkaConsumer(**self.stack.kafka.client_kwargs(), enable_auto_commit=False)
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            end = consumer.end_offsets([tp])[tp]
            if end == 0:
                return None
            consumer.seek(tp, end - 1)
            for _ in range(20):
                for msgs in consumer.poll(timeout_ms=500).values():
                    for m in msgs:
                        try:
                            return decode(ModelPublished, m.value)
                        except InvalidMessage:
                            return None
            return None
        finally:
            consumer.close()


class ModelRegistry:
    """Reads and changes the registry; every change is one transaction plus audit rows in ``model_events``."""

    def __init__(
        self,
        stack: StackSettings,
        store: ObjectStore,
        announcer: Announcer,
        key_prefix: str = "",
    ) -> None:
        self.stack = stack
        self.store = store
        self.announcer = announcer
        self.key_prefix = key_prefix

    @contextmanager
    def _tx(self) -> Iterator[psycopg2.extensions.cursor]:
        with transaction(self.stack.pg) as cur:  # commits on success, rolls back on any exception
            yield cur

    # -- reading ---------------------------------------------------------------------------------

    def versions(self) -> list[ModelRecord]:
        with self._tx() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM models ORDER BY created_at, version")
            return [ModelRecord.from_row(r) for r in cur.fetchall()]

    def get(self, version: str) -> ModelRecord | None:
        with self._tx() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM models WHERE version = %s", (version,))
            row = cur.fetchone()
        return ModelRecord.from_row(row) if row else None

    def champion(self) -> ModelRecord | None:
        with self._tx() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM models WHERE status = 'champion'")
            row = cur.fetchone()
        return ModelRecord.from_row(row) if row else None

    def find_by_sha256(self, sha256: str) -> ModelRecord | None:
        with self._tx() as cur:
            cur.execute(
                f"SELECT {_COLUMNS} FROM models WHERE sha256 = %s ORDER BY created_at LIMIT 1", (sha256,)
            )
            row = cur.fetchone()
        return ModelRecord.from_row(row) if row else None

    def events(self, version: str) -> list[dict[str, Any]]:
        with self._tx() as cur:
            cur.execute(
                "SELECT event, detail, at FROM model_events WHERE version = %s ORDER BY id", (version,)
            )
            return [{"event": e, "detail": d, "at": a.isoformat()} for e, d, a in cur.fetchall()]

    def fetch_weights(self, record: ModelRecord) -> bytes:
        """The version's weights, checked against the registered sha256."""
        data = self.store.get(MODELS_BUCKET, record.object_key, max_bytes=MAX_WEIGHTS_BYTES)
        digest = sha256_hex(data)
        if digest != record.sha256:
            raise RegistryError(
                f"{record.version}: stored weights hash {digest[:12]}, registry {record.sha256[:12]}"
            )
        return data

    # -- publishing --------------------------------------------------------------------------------

    def object_key(self, version: str, sha256: str) -> str:
        """Content-addressed under the version: an upload can never overwrite another version's bytes.

        ``version`` must be one path segment (the contracts' ``ModelVersion``) so the key stays under
        ``key_prefix``: a version read from a weights file's metadata is not trusted to be one.
        """
        if not _VERSION.fullmatch(version) or not _SHA256.fullmatch(sha256):
            raise RegistryError(f"invalid model version {version[:80]!r}: letters, digits and . _ : + - only")
        return f"{self.key_prefix}{version}/{sha256[:16]}.safetensors"

    def publish(
        self,
        data: bytes,
        *,
        version: str,
        parent: str | None,
        status: Status,
        trigger: Trigger,
        metrics: dict[str, Any],
        data_info: dict[str, Any],
        reasons: list[str] | None = None,
        after_upload: Callable[[], None] | None = None,
    ) -> ModelRecord:
        """Upload, verify, register, then (for a champion) announce. Returns the registered record.

        ``after_upload`` runs between verification and registration (tests inject a crash there).
        """
        if self.get(version) is not None:
            raise RegistryError(f"version {version} already exists; versions are immutable")
        digest = sha256_hex(data)
        key = self.object_key(version, digest)
        self.store.put(MODELS_BUCKET, key, data)
        if sha256_hex(self.store.get(MODELS_BUCKET, key, max_bytes=MAX_WEIGHTS_BYTES)) != digest:
            raise RegistryError(f"{version}: s3://{MODELS_BUCKET}/{key} does not read back as uploaded")
        if after_upload is not None:
            after_upload()
        with self._tx() as cur:
            if status == "champion":
                self._retire_champion(cur, reason=f"replaced by {version}")
            cur.execute(
                "INSERT INTO models (version, parent, sha256, object_key, metrics, status, trigger, data,"
                " reasons, promoted_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
                " CASE WHEN %s = 'champion' THEN now() END)",
                (
                    version,
                    parent,
                    digest,
                    key,
                    json.dumps(metrics),
                    status,
                    trigger,
                    json.dumps(data_info),
                    json.dumps(reasons or []),
                    status,
                ),
            )
            self._event(
                cur, version, "registered", {"status": status, "trigger": trigger, "reasons": reasons or []}
            )
        logger.info(
            "registered model %s as %s (%s)", version, status, "; ".join(reasons or []) or "no reasons"
        )
        record = self.get(version)
        assert record is not None
        if status == "champion":
            self._announce(record)
        return record

    def promote(self, version: str, *, force: bool = False, reason: str = "operator") -> ModelRecord:
        """Make ``version`` the champion (the old one is retired) and announce it."""
        with self._tx() as cur:
            cur.execute("SELECT status FROM models WHERE version = %s FOR UPDATE", (version,))
            row = cur.fetchone()
            if row is None:
                raise RegistryError(f"no model version {version!r}")
            if row[0] == "champion":
                raise RegistryError(f"{version} is already the champion")
            if row[0] == "rejected" and not force:
                raise RegistryError(f"{version} was rejected by the gate; pass --force to promote it anyway")
            self._retire_champion(cur, reason=f"replaced by {version}")
            cur.execute(
                "UPDATE models SET status = 'champion', promoted_at = now(), rolled_back_at = NULL"
                " WHERE version = %s",
                (version,),
            )
            self._event(cur, version, "promoted", {"from": row[0], "reason": reason})
        record = self.get(version)
        assert record is not None
        self._announce(record)
        return record

    def rollback(self, reason: str = "operator") -> ModelRecord:
        """Retire the champion as rolled back and re-announce the champion before it.

        The target is the most recently promoted retired version that was never rolled back itself, so
        repeated rollbacks walk back through the champion history instead of toggling between two versions.
        """
        with self._tx() as cur:
            cur.execute("SELECT version FROM models WHERE status = 'champion' FOR UPDATE")
            current = cur.fetchone()
            if current is None:
                raise RegistryError("there is no champion to roll back")
            cur.execute(
                "SELECT version FROM models WHERE status = 'retired' AND promoted_at IS NOT NULL"
                " AND rolled_back_at IS NULL ORDER BY promoted_at DESC LIMIT 1 FOR UPDATE"
            )
            target = cur.fetchone()
            if target is None:
                raise RegistryError(f"no earlier champion to roll back to from {current[0]}")
            cur.execute(
                "UPDATE models SET status = 'retired', rolled_back_at = now() WHERE version = %s",
                (current[0],),
            )
            self._event(cur, current[0], "rolled_back", {"to": target[0], "reason": reason})
            cur.execute(
                "UPDATE models SET status = 'champion', promoted_at = now() WHERE version = %s", (target[0],)
            )
            self._event(
                cur, target[0], "promoted", {"from": "retired", "reason": f"rollback from {current[0]}"}
            )
        record = self.get(target[0])
        assert record is not None
        self._announce(record)
        return record

    def reconcile(self) -> bool:
        """Announce the champion if the topic's last announcement names another version (crash recovery)."""
        champion = self.champion()
        if champion is None:
            return False
        last = self.announcer.last()
        if last is not None and last.version == champion.version:
            return False
        logger.warning(
            "champion %s is not the last announcement (%s); announcing it",
            champion.version,
            last.version if last else "none",
        )
        self._announce(champion)
        return True

    # -- internals -------------------------------------------------------------------------------

    def _retire_champion(self, cur: psycopg2.extensions.cursor, reason: str) -> None:
        cur.execute("UPDATE models SET status = 'retired' WHERE status = 'champion' RETURNING version")
        for (old,) in cur.fetchall():
            self._event(cur, old, "retired", {"reason": reason})

    @staticmethod
    def _event(cur: psycopg2.extensions.cursor, version: str, event: str, detail: dict[str, Any]) -> None:
        cur.execute(
            "INSERT INTO model_events (version, event, detail) VALUES (%s, %s, %s)",
            (version, event, json.dumps(detail)),
        )

    def _announce(self, record: ModelRecord) -> None:
        self.announcer.announce(record.announcement())
        with self._tx() as cur:
            cur.execute("UPDATE models SET announced_at = now() WHERE version = %s", (record.version,))
            self._event(cur, record.version, "announced", {"topic": self.announcer.topic})
