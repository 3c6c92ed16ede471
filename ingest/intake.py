"""The intake: validate image bytes, store them under their content hash, publish the reference.

``Intake.accept`` is shared by the HTTP API (``POST /v1/images``) and ``python -m ingest submit``:

1. the bytes are decoded under ``DecodeLimits`` (size, format allow-list, pixel count before any pixel
   is decoded) and refused with ``PermanentError`` (its ``code`` says why) before anything is stored;
2. ``image_id`` is the sha256 of the bytes, the object key in bucket ``images`` too;
3. an image already in the ``images`` table is a duplicate: nothing is stored or published again,
   and the same id is returned (idempotent);
4. otherwise the object is written, ``ImageSubmitted`` is published and flushed, and only then the
   ``images`` row is inserted, so a crash between the steps leads to a harmless re-publish, never to a
   row without a message.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg2.extensions
from kafka import KafkaProducer
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from ingest.contracts import ImageSubmitted, encode, parse_s3_ref, utcnow
from ingest.decode import DecodeLimits, decode_image
from ingest.errors import PermanentError
from ingest.settings import ServiceSettings
from ingest.storage import ObjectStore
from ingest.topics import IMAGES_SUBMITTED, MODERATION_FEEDBACK

logger = logging.getLogger(__name__)

CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "GIF": "image/gif",
}

# Which HTTP status each decode refusal maps to: the body is too big, not an image we take, or broken.
HTTP_STATUS_FOR_CODE = {
    "too_large": 413,
    "too_many_pixels": 413,
    "empty": 415,
    "not_an_image": 415,
    "format_not_allowed": 415,
    "truncated": 422,
    "undecodable": 422,
    "missing_object": 422,
    "bucket_not_allowed": 422,
    "invalid_ref": 422,
}


class IntakeSettings(ServiceSettings):
    """``CIFAKE_INTAKE_*``: the HTTP intake, the review console and ``submit``."""

    model_config = SettingsConfigDict(
        env_prefix="CIFAKE_INTAKE_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # The public base URL printed by the demo and used in links (behind a proxy: the proxy's URL).
    public_url: str | None = None
    topic: str = IMAGES_SUBMITTED
    feedback_topic: str = MODERATION_FEEDBACK
    images_bucket: str = "images"
    explanations_bucket: str = "explanations"
    # Buckets a JSON reference may point into; the bytes are copied under their hash into images_bucket.
    ref_buckets: list[str] = Field(default_factory=lambda: ["images"])
    limits: DecodeLimits = DecodeLimits()
    link_ttl_s: int = Field(default=300, ge=10, le=7 * 24 * 3600)
    # Signs the console's session cookies. Unset: a random key per process (sessions end on restart).
    session_secret: SecretStr | None = None
    session_ttl_s: int = Field(default=8 * 3600, ge=60)
    cookie_secure: bool = False
    review_page_size: int = Field(default=50, ge=1, le=500)
    skip_hours: float = Field(default=24.0, ge=0)
    db_pool_max: int = Field(default=8, ge=1)


@dataclass(frozen=True)
class Accepted:
    image_id: str
    duplicate: bool
    format: str
    size: tuple[int, int]
    bytes: int


INSERT_IMAGE = """
INSERT INTO images (id, ref, sha256, source, submitted_at, metadata) VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (id) DO NOTHING
"""

ConnFactory = Callable[[], Any]  # a context manager yielding a psycopg2 connection


class Intake:
    """Accepts images for screening. Thread-safe: the store, producer and pool are."""

    def __init__(
        self,
        settings: IntakeSettings,
        store: ObjectStore,
        producer: KafkaProducer,
        connection: ConnFactory,
    ) -> None:
        self.settings = settings
        self.store = store
        self.producer = producer
        self.connection = connection

    def accept(self, data: bytes, source: str, metadata: dict[str, str] | None = None) -> Accepted:
        """Validate, store and publish ``data``; raise ``PermanentError`` (with a code) to refuse it."""
        decoded = decode_image(data, self.settings.limits)
        fmt, size = decoded.format, decoded.size
        image_id = hashlib.sha256(data).hexdigest()
        with self.connection() as conn:
            if _exists(conn, image_id):
                logger.info("duplicate image %s from %s", image_id, source)
                return Accepted(image_id, True, fmt, size, len(data))
        bucket = self.settings.images_bucket
        ref = f"s3://{bucket}/{image_id}"
        self.store.put(bucket, image_id, data, CONTENT_TYPES.get(fmt, "application/octet-stream"))
        msg = ImageSubmitted(
            image_id=image_id, ref=ref, submitted_at=utcnow(), source=source, metadata=metadata or {}
        )
        self.producer.send(self.settings.topic, key=image_id.encode(), value=encode(msg)).get(timeout=30)
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute(
                INSERT_IMAGE,
                (image_id, ref, image_id, source, msg.submitted_at, json.dumps(msg.metadata)),
            )
        logger.info("accepted image %s (%s %dx%d) from %s", image_id, fmt, size[0], size[1], source)
        return Accepted(image_id, False, fmt, size, len(data))

    def accept_ref(self, ref: str, source: str, metadata: dict[str, str] | None = None) -> Accepted:
        """Read an ``s3://`` reference from an allow-listed bucket and accept its bytes."""
        try:
            bucket, key = parse_s3_ref(ref)
        except ValueError as e:
            raise PermanentError(str(e), "invalid_ref") from None
        if bucket not in self.settings.ref_buckets:
            raise PermanentError(f"bucket {bucket!r} is not one the intake reads from", "bucket_not_allowed")
        try:
            data = self.store.get(bucket, key, self.settings.limits.max_bytes)
        except PermanentError as e:
            code = "too_large" if "larger than" in str(e) else "missing_object"
            raise PermanentError(str(e), code) from None
        return self.accept(data, source, metadata)


def _exists(conn: psycopg2.extensions.connection, image_id: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM images WHERE id = %s", (image_id,))
        return cur.fetchone() is not None
