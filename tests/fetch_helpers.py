"""Shared by the fetch tests: a message builder, an in-memory object store, and an assertion helper."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from ingest.contracts import ImageSubmitted
from ingest.errors import PermanentError
from ingest.fetch import FETCH_ERROR_CODES, Fetcher
from ingest.storage import ObjectInfo

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def msg(ref: str | None = None, inline: str | None = None) -> ImageSubmitted:
    """A message as a producer might send it; ``model_construct`` skips the contract's own checks so that
    the Fetcher is tested on what it would do if they were bypassed or loosened."""
    return ImageSubmitted.model_construct(
        image_id="img-1", ref=ref, inline=inline, submitted_at=datetime.now(UTC), source="test", metadata={}
    )


@dataclass
class MemoryStore:
    """In-memory ``ObjectStore`` with S3Store's error behaviour; ``fail`` maps a key to an exception."""

    objects: dict[tuple[str, str], bytes] = field(default_factory=dict)
    fail: dict[str, BaseException] = field(default_factory=dict)
    before_get: Callable[[str], None] | None = None
    calls: list[tuple[str, str]] = field(default_factory=list)

    def put(self, bucket: str, key: str, data: bytes, content_type: str = "") -> ObjectInfo:
        self.objects[bucket, key] = data
        return ObjectInfo(bucket, key, len(data), "etag", content_type)

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        return ObjectInfo(bucket, key, len(self.objects[bucket, key]), "etag", None)

    def get(self, bucket: str, key: str, max_bytes: int) -> bytes:
        self.calls.append((bucket, key))
        if self.before_get is not None:
            self.before_get(key)
        if key in self.fail:
            raise self.fail[key]
        if (bucket, key) not in self.objects:
            raise PermanentError(f"object s3://{bucket}/{key} does not exist")
        data = self.objects[bucket, key]
        if len(data) > max_bytes:
            raise PermanentError(f"object s3://{bucket}/{key} is larger than {max_bytes} bytes")
        return data


def code_of(fetcher: Fetcher, m: ImageSubmitted) -> str:
    with pytest.raises(PermanentError) as info:
        fetcher.fetch(m)
    assert info.value.code in FETCH_ERROR_CODES
    return info.value.code


def seeded_store() -> MemoryStore:
    s = MemoryStore()
    s.put("images", "a/ok.png", PNG)
    s.put("images", "big.bin", b"x" * 2000)
    s.put("private", "secret.png", PNG)
    return s
