"""Message contracts: the pydantic models that travel on every topic.

They are the only coupling between the independent consumers, so they are strict: unknown
fields are rejected, timestamps must carry a time zone, sizes are bounded, and every message
carries ``schema_version`` so that a consumer can refuse a version it does not understand
instead of mis-reading it. ``decode`` turns any parse failure into ``InvalidMessage`` (a
permanent error: the record is dead-lettered, never retried).
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ingest.errors import InvalidMessage
from ingest.signals import PDQ_HEX, Signals

SCHEMA_VERSION = 1

# Inline images travel inside the Kafka record; anything larger belongs in the object store.
MAX_INLINE_BYTES = 256 * 1024
MAX_METADATA_ITEMS = 32
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 1024

_S3_REF = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>[^\x00-\x1f]{1,1024})$")

ImageId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
ModelVersion = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:+-]*$")]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def _no_nul(value: str) -> str:
    # PostgreSQL text and jsonb cannot hold NUL: such a record would fail its whole batch at the sink.
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    return value


ShortText = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_no_nul)]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _bounded_metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_METADATA_ITEMS:
        raise ValueError(f"metadata has {len(value)} items, at most {MAX_METADATA_ITEMS} allowed")
    for k, v in value.items():
        _no_nul(k + v)
        if not k or len(k) > MAX_METADATA_KEY:
            raise ValueError(f"metadata key length must be 1..{MAX_METADATA_KEY}")
        if len(v) > MAX_METADATA_VALUE:
            raise ValueError(f"metadata value for {k!r} longer than {MAX_METADATA_VALUE}")
    return value


Metadata = Annotated[dict[str, str], AfterValidator(_bounded_metadata)]


class Contract(BaseModel):
    """Base of every topic payload."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1  # bump together with SCHEMA_VERSION


def parse_s3_ref(ref: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into (bucket, key); raise ``ValueError`` when it is not one."""
    m = _S3_REF.match(ref)
    if not m:
        raise ValueError(f"not an s3://bucket/key reference: {ref[:80]!r}")
    key = m.group("key")
    if key.startswith("/") or any(part in {"", ".", ".."} for part in key.split("/")):
        raise ValueError(f"object key has empty or relative segments: {key[:80]!r}")
    return m.group("bucket"), key


class ImageSubmitted(Contract):
    """A platform asks for one image to be screened. Exactly one of ``ref`` / ``inline`` is set."""

    image_id: ImageId
    ref: str | None = Field(default=None, max_length=1100)
    inline: str | None = Field(default=None, max_length=(MAX_INLINE_BYTES * 4) // 3 + 4)
    submitted_at: AwareDatetime
    source: ShortText
    metadata: Metadata = Field(default_factory=dict)

    @field_validator("ref")
    @classmethod
    def _check_ref(cls, v: str | None) -> str | None:
        if v is not None and v.startswith("s3://"):
            parse_s3_ref(v)
        elif v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("ref must be s3://bucket/key or an http(s) URL")
        return v

    @field_validator("inline")
    @classmethod
    def _check_inline(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError) as e:
                raise ValueError(f"inline is not valid base64: {e}") from e
        return v

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ImageSubmitted:
        if (self.ref is None) == (self.inline is None):
            raise ValueError("exactly one of ref or inline must be set")
        return self

    def inline_bytes(self) -> bytes:
        if self.inline is None:
            raise ValueError("message has no inline bytes")
        return base64.b64decode(self.inline, validate=True)


class Verdict(Contract):
    image_id: ImageId
    model_version: ModelVersion
    p_fake: float = Field(ge=0.0, le=1.0)
    label: Literal["real", "fake", "uncertain"]
    threshold: float = Field(ge=0.0, le=1.0)
    original_size: tuple[int, int] | None = None
    original_format: str | None = Field(default=None, max_length=16)
    submitted_at: AwareDatetime
    scored_at: AwareDatetime
    timings_ms: dict[str, float] = Field(default_factory=dict)
    # Known-content and provenance evidence, and which signal set ``label`` (``ingest.signals``). None on
    # verdicts written before signals existed.
    signals: Signals | None = None


class Explanation(Contract):
    image_id: ImageId
    model_version: ModelVersion
    method: ShortText
    keys: dict[str, str]
    evidence: dict[str, Any] = Field(default_factory=dict)
    created_at: AwareDatetime


class Feedback(Contract):
    image_id: ImageId
    label: Literal["real", "fake"]
    moderator: ShortText
    note: Annotated[str, AfterValidator(_no_nul)] | None = Field(default=None, max_length=2000)
    labelled_at: AwareDatetime


class KnownContentUpdate(Contract):
    """The current state of one known-content list entry (``known_content.updates``, one partition).

    Every message is the whole entry, never a delta, so applying one twice or replaying the topic from any
    point converges on the table's state: scorers upsert it into their in-memory index by ``entry_id``.
    """

    entry_id: int = Field(ge=1)
    pdq: str = Field(pattern=PDQ_HEX)
    label: Literal["real", "fake"]
    active: bool
    source: Literal["moderation", "import"]
    image_id: ImageId | None = None
    moderators: int = Field(default=0, ge=0)
    updated_at: AwareDatetime


class ModelPublished(Contract):
    version: ModelVersion
    object_key: str = Field(min_length=1, max_length=1024)
    sha256: Sha256Hex
    parent: ModelVersion | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    published_at: AwareDatetime


class DeadLetter(Contract):
    """A record that could not be processed, with everything needed to replay it by hand."""

    payload_b64: str
    key_b64: str | None = None
    topic: str
    partition: int
    offset: int
    error_class: str
    code: str = Field(default="permanent", max_length=64)  # bounded reason code, e.g. "too_many_pixels"
    reason: str = Field(max_length=4000)
    attempts: int = Field(ge=1)
    service: str
    failed_at: AwareDatetime

    def payload(self) -> bytes:
        return base64.b64decode(self.payload_b64)


C = TypeVar("C", bound=Contract)


def encode(message: Contract) -> bytes:
    """Serialise a contract for Kafka (UTF-8 JSON)."""
    return message.model_dump_json().encode()


def decode(cls: type[C], data: bytes | None) -> C:
    """Parse ``data`` as ``cls``; any failure is an ``InvalidMessage`` carrying a readable reason."""
    if data is None:
        raise InvalidMessage(f"empty record (tombstone) where a {cls.__name__} was expected")
    try:
        return cls.model_validate_json(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in e.errors()[:5]
        )
        raise InvalidMessage(f"invalid {cls.__name__}: {problems}") from None
