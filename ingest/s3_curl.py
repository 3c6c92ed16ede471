"""S3 reads and writes through libcurl (``pycurl``): every image the scorer fetches or stores.

The ``minio`` SDK signs each request in Python and moves it through urllib3, so with the scorer's eight fetch
threads contending for the GIL a small GET cost the scorer more CPU than the model. libcurl signs the request
itself (``CURLOPT_AWS_SIGV4``) and does the whole transfer in C with the GIL released, so a thread holds the
GIL only to set a URL and collect the bytes: about a quarter of the SDK's CPU per request
(``python -m harness.s3_client_bench``, ``benchmarks/pipeline/s3_client.json``). Stats, listings and bucket
management stay on the SDK: they are rare and not on the hot path.

Errors keep the meaning the SDK path gave them. ``get``: a missing object or bucket, or an object larger
than the cap, is the record's fault (``PermanentError``, worded as ``S3Store.get`` words it); a refusal
that no retry changes (access denied, invalid name) is ``PermanentError`` ``store_refused``. ``put``: the
same refusals are ``StoreRefused``, an error that is neither transient nor the record's fault (the
consumer loop retries it, then its circuit breaker holds the batches of a misconfigured release). Anything
else, connection failures, timeouts and 5xx included, is ``TransientError``.
"""

from __future__ import annotations

import io
import os
import re
import threading
from typing import Final
from urllib.parse import quote

import certifi
import pycurl

from ingest.errors import PermanentError, TransientError
from ingest.settings import S3Settings

# S3 error codes that mean "this object", not "the store": the record is dead-lettered.
_MISSING: Final = frozenset({"NoSuchKey", "NoSuchBucket"})
_REFUSED: Final = frozenset({"AccessDenied", "InvalidObjectName"})
_ERROR_CODE: Final = re.compile(rb"<Code>([^<]{1,64})</Code>")
_ERROR_BODY_BYTES: Final = 64 * 1024


class StoreRefused(Exception):
    """The object store refused a write in a way that retrying does not change (no such bucket, access
    denied): a deployment's fault, not a record's and not an outage."""


class CurlS3:
    """``get`` and ``put`` over libcurl, with one reused connection per calling thread.

    A ``pycurl.Curl`` handle must not be shared between threads, so each thread gets its own (kept for
    the client's life: its connection stays open between requests). Safe to call from many threads.
    """

    def __init__(self, s3: S3Settings, timeout_s: float = 30.0, connect_timeout_s: float = 5.0) -> None:
        scheme = "https" if s3.secure else "http"
        self._base = f"{scheme}://{s3.endpoint}"
        self._sigv4 = f"aws:amz:{s3.region or 'us-east-1'}:s3"
        self._userpwd = f"{s3.access_key.get_secret_value()}:{s3.secret_key.get_secret_value()}"
        self._secure = s3.secure
        self._timeout_ms = int(timeout_s * 1000)
        self._connect_timeout_ms = int(connect_timeout_s * 1000)
        self._local = threading.local()
        self._handles: list[pycurl.Curl] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close every thread's handle (and its connection). Call once no thread uses the client."""
        with self._lock:
            handles, self._handles = self._handles, []
        for h in handles:
            h.close()
        self._local = threading.local()

    def get(self, bucket: str, key: str, max_bytes: int) -> bytes:
        """The object's bytes; at most ``max_bytes`` (a larger object is refused, permanently)."""
        where = f"s3://{bucket}/{key[:200]}"
        curl = self._handle()
        body = io.BytesIO()
        curl.setopt(pycurl.HTTPGET, 1)
        curl.setopt(pycurl.URL, self._url(bucket, key))
        curl.setopt(pycurl.WRITEDATA, body)
        # libcurl stops a transfer whose Content-Length, or whose bytes so far, pass the cap. The cap also
        # applies to error answers, so it is never below what an S3 error document needs.
        curl.setopt(pycurl.MAXFILESIZE_LARGE, max(max_bytes, _ERROR_BODY_BYTES))
        try:
            curl.perform()
        except pycurl.error as e:
            if _curl_code(e) != pycurl.E_FILESIZE_EXCEEDED:
                raise TransientError(f"object store unavailable reading {where}: curl error {e}") from None
            if curl.getinfo(pycurl.RESPONSE_CODE) == 200:
                raise PermanentError(f"object {where} is larger than {max_bytes} bytes") from None
            body = io.BytesIO()  # an error answer too long to be an S3 error document: judge by status
        status = curl.getinfo(pycurl.RESPONSE_CODE)
        data = body.getvalue()
        if status == 200:
            if len(data) > max_bytes:
                raise PermanentError(f"object {where} is larger than {max_bytes} bytes")
            return data
        raise _read_error(status, data, where)

    def put(self, bucket: str, key: str, data: bytes, content_type: str) -> str:
        """Store ``data`` under ``key``; returns the object's ETag (without quotes)."""
        where = f"s3://{bucket}/{key[:200]}"
        curl = self._handle()
        body = io.BytesIO()
        headers: list[bytes] = []
        curl.setopt(pycurl.URL, self._url(bucket, key))
        curl.setopt(pycurl.CUSTOMREQUEST, "PUT")
        curl.setopt(pycurl.POSTFIELDS, data)  # signed with its SHA-256 (x-amz-content-sha256)
        # "Expect:" off: no 100-continue round trip before a body the store accepts anyway.
        curl.setopt(pycurl.HTTPHEADER, [f"Content-Type: {content_type}", "Expect:"])
        curl.setopt(pycurl.HEADERFUNCTION, headers.append)
        curl.setopt(pycurl.WRITEDATA, body)
        curl.setopt(pycurl.MAXFILESIZE_LARGE, _ERROR_BODY_BYTES)
        try:
            curl.perform()
        except pycurl.error as e:
            raise TransientError(f"object store unavailable writing {where}: curl error {e}") from None
        finally:
            # Nothing of this PUT stays on the handle for its next request, nor a reference to the body.
            curl.unsetopt(pycurl.CUSTOMREQUEST)
            curl.unsetopt(pycurl.HTTPHEADER)
            curl.unsetopt(pycurl.HEADERFUNCTION)
            curl.setopt(pycurl.POSTFIELDS, b"")  # get() sets HTTPGET before its request
        status = curl.getinfo(pycurl.RESPONSE_CODE)
        if status != 200:
            code = _error_code(status, body.getvalue())
            if code in _MISSING or code in _REFUSED:
                raise StoreRefused(f"object store refused writing {where}: {code}")
            raise TransientError(f"object store error writing {where}: HTTP {status} {code}")
        return _etag(headers)

    def _url(self, bucket: str, key: str) -> str:
        return f"{self._base}/{quote(bucket, safe='')}/{quote(key, safe='/~')}"

    def _handle(self) -> pycurl.Curl:
        curl: pycurl.Curl | None = getattr(self._local, "curl", None)
        if curl is None:
            curl = pycurl.Curl()
            curl.setopt(pycurl.NOSIGNAL, 1)  # no SIGALRM for DNS timeouts: this runs on worker threads
            curl.setopt(pycurl.AWS_SIGV4, self._sigv4)
            curl.setopt(pycurl.USERPWD, self._userpwd)
            curl.setopt(pycurl.TIMEOUT_MS, self._timeout_ms)
            curl.setopt(pycurl.CONNECTTIMEOUT_MS, self._connect_timeout_ms)
            curl.setopt(pycurl.FOLLOWLOCATION, 0)
            curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
            if self._secure:
                # The CA bundle the minio SDK used: SSL_CERT_FILE when set (a private CA), else certifi's.
                curl.setopt(pycurl.CAINFO, os.environ.get("SSL_CERT_FILE") or certifi.where())
            self._local.curl = curl
            with self._lock:
                self._handles.append(curl)
        return curl


def _curl_code(e: pycurl.error) -> int:
    return int(e.args[0]) if e.args else -1


def _error_code(status: int, body: bytes) -> str:
    """The S3 error code of an error answer, or ``HTTP <status>`` when its body has none."""
    found = _ERROR_CODE.search(body)
    return found.group(1).decode("ascii", "replace") if found else f"HTTP {status}"


def _read_error(status: int, body: bytes, where: str) -> Exception:
    """The exception for a GET's non-200 answer."""
    code = _error_code(status, body)
    if code in _MISSING or (status == 404 and code.startswith("HTTP ")):
        return PermanentError(f"object {where} does not exist")
    if code in _REFUSED:
        return PermanentError(f"object store refused {where}: {code}", "store_refused")
    return TransientError(f"object store error reading {where}: HTTP {status} {code}")


def _etag(headers: list[bytes]) -> str:
    for line in headers:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"etag":
            return value.strip().strip(b'"').decode("ascii", "replace")
    return ""
