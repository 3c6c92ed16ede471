"""The intake bad-input corpus (``tests/badinput/http.py``): every request through one running intake gets
its status and error code, nothing refused is published, and the intake still accepts an image afterwards;
every archive member given to ``ingest submit`` ends as expected and no member stops the run."""

from __future__ import annotations

import http.client
import io
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from ingest.accounts import revoke_api_key
from ingest.db import connect
from ingest.decode import DecodeLimits
from ingest.settings import StackSettings
from ingest.storage import S3Store
from ingest.submit import submit_paths
from tests.badinput.http import ARCHIVE_CASES, HTTP_CASES, MAX_BYTES, HttpCase
from tests.intake_helpers import intake_settings, new_api_key, random_png, running_intake, upload
from tests.kafka_helpers import end_offsets

pytestmark = pytest.mark.integration


def send(base: str, case: HttpCase, key: str | None) -> tuple[int, dict[str, Any]]:
    """One request with http.client (urllib cannot send a body without a Content-Length)."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=60)
    payload, ctype = case.body() if case.body else (b"", None)
    headers = {k: v for k, v in {"X-API-Key": key, "Content-Type": ctype}.items() if v is not None}
    try:
        if case.chunked:
            conn.putrequest(case.method, case.path)
            for k, v in {**headers, "Transfer-Encoding": "chunked"}.items():
                conn.putheader(k, v)
            conn.endheaders()
            for i in range(0, len(payload), 65536):
                chunk = payload[i : i + 65536]
                conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            conn.send(b"0\r\n\r\n")
        else:
            body = payload if case.body else None
            conn.request(case.method, case.path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        doc = json.loads(raw) if "json" in resp.headers.get("content-type", "") else {"raw": raw[:200]}
        return resp.status, doc
    except (ConnectionResetError, BrokenPipeError):
        # The server may answer 413 and close before the whole body was sent: read what it said.
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_http_corpus_through_one_intake(stack: StackSettings, topic: str) -> None:
    assert len(HTTP_CASES) >= 30 and len({c.name for c in HTTP_CASES}) == len(HTTP_CASES)
    key, revoked = new_api_key(stack), new_api_key(stack)
    with connect(stack.pg) as conn:
        assert revoke_api_key(conn, revoked.split("_")[1])
    conn.close()
    auth = {"valid": key, "none": None, "revoked": revoked}
    store = S3Store(stack.s3)
    settings = intake_settings(topic=topic, limits=DecodeLimits(max_bytes=MAX_BYTES))
    with running_intake(stack, settings) as base:
        outcomes: dict[str, tuple[int, str | None]] = {}
        for case in HTTP_CASES:
            status, doc = send(base, case, auth.get(case.auth, case.auth))
            outcomes[case.name] = (status, doc.get("error", {}).get("code") if status >= 300 else None)
            if status == 202:  # the object key is the content hash, whatever the file was called
                assert re.fullmatch(r"[0-9a-f]{64}", doc["image_id"]), doc
                assert store.stat("images", doc["image_id"]).size == doc["bytes"]
            else:
                assert doc.get("error", {}).get("message"), (case.name, doc)
        assert outcomes == {c.name: (c.status, c.code) for c in HTTP_CASES}

        status, doc = upload(base, key, random_png())
        assert status == 202, doc
    accepted = sum(1 for c in HTTP_CASES if c.status == 202) + 1
    assert sum(end_offsets(stack, topic).values()) == accepted, "nothing refused may be published"


def test_archive_corpus_through_ingest_submit(stack: StackSettings, topic: str, tmp_path: Path) -> None:
    paths = []
    for i, case in enumerate(ARCHIVE_CASES):
        paths.append(tmp_path / f"case{i}.zip")
        paths[-1].write_bytes(case.archive())
    err = io.StringIO()
    settings = intake_settings(topic=topic, limits=DecodeLimits(max_bytes=MAX_BYTES))
    rows = submit_paths(stack, settings, [str(p) for p in paths], "corpus", err, progress=False)
    problems = err.getvalue()
    got = {r.name: r.status + (f":{r.code}" if r.code else "") for r in rows}
    for path, case in zip(paths, ARCHIVE_CASES, strict=True):
        for member, expect in case.expect.items():
            name = f"{path}!{member}"
            if expect == "skipped":
                assert f"{name}: skipped" in problems, (case.name, problems)
                assert name not in got
            else:
                assert got.get(name) == expect, (case.name, got, problems)
        if case.problem:
            assert f"{path}: " in problems and case.problem in problems, (case.name, problems)
    submitted = sum(1 for v in got.values() if v == "submitted")
    assert submitted == sum(1 for c in ARCHIVE_CASES for v in c.expect.values() if v == "submitted")
    assert sum(end_offsets(stack, topic).values()) == submitted
