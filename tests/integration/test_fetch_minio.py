"""The fetcher against the real MinIO (the rest of its behaviour, in memory: tests/unit/test_fetch.py)."""

from __future__ import annotations

import uuid

import pytest

from ingest.fetch import Fetcher
from ingest.settings import StackSettings
from ingest.storage import S3Store
from tests.fetch_helpers import PNG, code_of, msg

# -- MinIO --------------------------------------------------------------------------------------


@pytest.mark.integration
def test_fetch_from_minio(stack: StackSettings) -> None:
    s3 = S3Store(stack.s3)
    key = f"tests/fetch/{uuid.uuid4().hex}.png"
    s3.put("images", key, PNG, "image/png")
    with Fetcher(s3) as f:
        assert f.fetch_many([msg(f"s3://images/{key}"), msg(f"s3://images/{key}.missing")])[0] == PNG
        assert code_of(f, msg(f"s3://images/{key}.missing")) == "missing_object"
