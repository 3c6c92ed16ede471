"""The object-store and database adapters, and what `deploy/stack up` provisioned, on the real stack."""

from __future__ import annotations

import uuid

import pytest

from ingest.db import connect
from ingest.errors import PermanentError
from ingest.kafka import make_admin
from ingest.settings import StackSettings
from ingest.storage import S3Store
from ingest.topics import ALL_TOPICS, dlq_topic

pytestmark = pytest.mark.integration


def test_s3_put_get_stat_and_missing_object(stack: StackSettings) -> None:
    store = S3Store(stack.s3)
    key = f"tests/{uuid.uuid4().hex}.bin"
    data = b"\x00\x01hello" * 100
    put = store.put("images", key, data, "application/octet-stream")
    assert put.size == len(data)
    assert store.get("images", key, max_bytes=len(data)) == data
    st = store.stat("images", key)
    assert st.size == len(data) and st.etag
    with pytest.raises(PermanentError, match="larger than"):
        store.get("images", key, max_bytes=len(data) - 1)
    with pytest.raises(PermanentError, match="does not exist"):
        store.get("images", key + ".missing", max_bytes=10)
    with pytest.raises(PermanentError, match="does not exist"):
        store.stat("no-such-bucket-" + uuid.uuid4().hex[:8], key)


def test_buckets_exist(stack: StackSettings) -> None:
    client = S3Store(stack.s3).client
    for bucket in ("images", "explanations", "models"):
        assert client.bucket_exists(bucket), bucket


def test_schema_exists_with_migrations_recorded(stack: StackSettings) -> None:
    with connect(stack.pg) as conn, conn.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        tables = {r[0] for r in cur.fetchall()}
        cur.execute("SELECT count(*) FROM schema_migrations")
        row = cur.fetchone()
    assert {"images", "verdicts", "explanations", "feedback", "models", "api_keys", "moderators"} <= tables
    assert row is not None and row[0] >= 1


def test_topics_and_dead_letter_topics_exist(stack: StackSettings) -> None:
    admin = make_admin(stack.kafka)
    try:
        topics = set(admin.list_topics())
    finally:
        admin.close()
    for t in ALL_TOPICS:
        assert t in topics and dlq_topic(t) in topics, t
