"""``ingest.s3_curl.CurlS3`` against a local HTTP server that answers like S3: what each answer means.

The real MinIO path (signature accepted, bytes, missing object, cap) is in
``tests/integration/test_adapters_integration.py``; here the answers MinIO will not give on demand.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from pydantic import SecretStr

from ingest.errors import PermanentError, TransientError, is_transient
from ingest.s3_curl import CurlS3, StoreRefused
from ingest.settings import S3Settings

BODY = b"\xff\xd8" + b"x" * 998


def _xml(code: str) -> bytes:
    return f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>m</Message></Error>".encode()


# path -> (status, body, chunked: no Content-Length)
ANSWERS: dict[str, tuple[int, bytes, bool]] = {
    "/images/ok": (200, BODY, False),
    "/images/ok-chunked": (200, BODY, True),
    "/images/missing": (404, _xml("NoSuchKey"), False),
    "/nobucket/x": (404, _xml("NoSuchBucket"), False),
    "/images/bare-404": (404, b"", False),
    "/images/denied": (403, _xml("AccessDenied"), False),
    "/images/slow-down": (503, _xml("SlowDown"), False),
    "/images/broken": (500, b"internal", False),
    "/images/odd": (400, _xml("InvalidArgument"), False),
    "/images/huge-404": (404, b"x" * 100_000, False),
}


PUT_ANSWERS: dict[str, tuple[int, bytes]] = {
    "/nobucket/x": (404, _xml("NoSuchBucket")),
    "/images/denied": (403, _xml("AccessDenied")),
    "/images/slow-down": (503, _xml("SlowDown")),
}


class _S3Like(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        status, body, chunked = ANSWERS.get(self.path, (404, _xml("NoSuchKey"), False))
        self.send_response(status)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 100):
                part = body[i : i + 100]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_PUT(self) -> None:
        n = int(self.headers.get("Content-Length", "0"))
        type(self).seen.append({**self.headers, "body": self.rfile.read(n).decode("latin-1")})
        status, body = PUT_ANSWERS.get(self.path, (200, b""))
        self.send_response(status)
        if status == 200:
            self.send_header("ETag", '"0123abcd"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def reader() -> Iterator[CurlS3]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _S3Like)
    _S3Like.protocol_version = "HTTP/1.1"  # keep-alive, as S3 answers
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    s3 = S3Settings(
        endpoint=f"127.0.0.1:{server.server_address[1]}",
        access_key=SecretStr("AKIDEXAMPLE"),
        secret_key=SecretStr("wJalrXUtnFEMI"),
        region="eu-west-1",
    )
    r = CurlS3(s3, timeout_s=5)
    yield r
    r.close()
    server.shutdown()


def test_reads_the_bytes_and_signs_the_request_with_sigv4(reader: CurlS3) -> None:
    _S3Like.seen.clear()
    assert reader.get("images", "ok", max_bytes=len(BODY)) == BODY
    assert reader.get("images", "ok-chunked", max_bytes=len(BODY)) == BODY
    auth = _S3Like.seen[0]["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/s3/aws4_request" in auth
    assert "wJalrXUtnFEMI" not in auth  # the secret signs; it is never sent


@pytest.mark.parametrize("key", ["ok", "ok-chunked"])
def test_an_object_over_the_cap_is_refused_permanently(reader: CurlS3, key: str) -> None:
    with pytest.raises(PermanentError, match="larger than 999 bytes") as e:
        reader.get("images", key, max_bytes=len(BODY) - 1)
    assert e.value.code == "permanent"  # the fetcher words it as too_large


@pytest.mark.parametrize(
    ("bucket", "key"), [("images", "missing"), ("nobucket", "x"), ("images", "bare-404")]
)
def test_a_missing_object_is_the_records_fault(reader: CurlS3, bucket: str, key: str) -> None:
    with pytest.raises(PermanentError, match="does not exist"):
        reader.get(bucket, key, max_bytes=10_000)
    # The cap is for the object, not for the error document that says it is missing.
    with pytest.raises(PermanentError, match="does not exist"):
        reader.get(bucket, key, max_bytes=10)


def test_an_error_answer_longer_than_any_error_document_is_judged_by_its_status(reader: CurlS3) -> None:
    with pytest.raises(PermanentError, match="does not exist"):
        reader.get("images", "huge-404", max_bytes=10)


def test_access_denied_is_a_refusal_not_an_outage(reader: CurlS3) -> None:
    with pytest.raises(PermanentError, match="AccessDenied") as e:
        reader.get("images", "denied", max_bytes=10_000)
    assert e.value.code == "store_refused"


@pytest.mark.parametrize("key", ["slow-down", "broken", "odd"])
def test_other_answers_are_transient(reader: CurlS3, key: str) -> None:
    with pytest.raises(TransientError) as e:
        reader.get("images", key, max_bytes=10_000)
    assert is_transient(e.value)


def test_an_unreachable_store_is_transient() -> None:
    s3 = S3Settings(endpoint="127.0.0.1:9", access_key=SecretStr("a"), secret_key=SecretStr("b"))
    r = CurlS3(s3, timeout_s=2, connect_timeout_s=1)
    try:
        with pytest.raises(TransientError, match="object store unavailable reading s3://images/k"):
            r.get("images", "k", max_bytes=10)
    finally:
        r.close()


def test_each_thread_reads_on_its_own_handle(reader: CurlS3) -> None:
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(reader.get("images", "ok", len(BODY))))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [BODY] * 8


def test_put_sends_the_bytes_signed_and_returns_the_etag(reader: CurlS3) -> None:
    _S3Like.seen.clear()
    assert reader.put("images", "new/key", BODY, "image/jpeg") == "0123abcd"
    sent = _S3Like.seen[0]
    assert sent["body"].encode("latin-1") == BODY
    assert sent["Content-Type"] == "image/jpeg"
    assert sent["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "x-amz-content-sha256" in {k.lower() for k in sent}
    # The same thread's handle reads with GET again afterwards, not with the PUT's method or body.
    assert reader.get("images", "ok", max_bytes=len(BODY)) == BODY


@pytest.mark.parametrize(("bucket", "key"), [("nobucket", "x"), ("images", "denied")])
def test_a_put_the_store_refuses_is_neither_transient_nor_the_records_fault(
    reader: CurlS3, bucket: str, key: str
) -> None:
    with pytest.raises(StoreRefused) as e:
        reader.put(bucket, key, b"x", "image/jpeg")
    assert not is_transient(e.value) and not isinstance(e.value, PermanentError)


def test_a_put_the_store_cannot_take_now_is_transient(reader: CurlS3) -> None:
    with pytest.raises(TransientError, match="SlowDown"):
        reader.put("images", "slow-down", b"x", "image/jpeg")
