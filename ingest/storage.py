"""Object storage port and its S3 adapter (MinIO in development, any S3 service in production)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from minio import Minio
from minio.error import S3Error

from ingest.errors import PermanentError
from ingest.s3_curl import CurlS3
from ingest.settings import S3Settings


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    size: int
    etag: str
    content_type: str | None


class ObjectStore(Protocol):
    def put(self, bucket: str, key: str, data: bytes, content_type: str = ...) -> ObjectInfo: ...
    def get(self, bucket: str, key: str, max_bytes: int) -> bytes: ...
    def stat(self, bucket: str, key: str) -> ObjectInfo: ...


class S3Store:
    """``ObjectStore`` over the ``minio`` SDK, with reads through libcurl (``ingest.s3_curl``): the scorer
    reads every image it scores, and the SDK's Python HTTP stack cost more than the model. A missing object
    is the record's fault (permanent); connection and server errors are transient for the loop."""

    def __init__(self, s3: S3Settings) -> None:
        self.client = Minio(
            s3.endpoint,
            access_key=s3.access_key.get_secret_value(),
            secret_key=s3.secret_key.get_secret_value(),
            secure=s3.secure,
            region=s3.region,
        )
        self.curl = CurlS3(s3)

    def put(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> ObjectInfo:
        etag = self.curl.put(bucket, key, data, content_type)
        return ObjectInfo(bucket, key, len(data), etag, content_type)

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        try:
            st = self.client.stat_object(bucket, key)
        except S3Error as e:
            if e.code in {"NoSuchKey", "NoSuchBucket"}:
                raise PermanentError(f"object s3://{bucket}/{key} does not exist") from e
            raise
        return ObjectInfo(bucket, key, st.size or 0, st.etag or "", st.content_type)

    def get(self, bucket: str, key: str, max_bytes: int) -> bytes:
        """Read an object, refusing (permanently) one larger than ``max_bytes``."""
        return self.curl.get(bucket, key, max_bytes)
