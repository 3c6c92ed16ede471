"""Reading objects from S3 through libcurl (``pycurl``): the read path of every image the scorer fetches.

The ``minio`` SDK signs each request in Python and reads the response through urllib3, about 0.3 ms of
one core per small object before the fetch threads contend for the GIL. libcurl signs the request itself
(``CURLOPT_AWS_SIGV4``) and does the whole transfer in C with the GIL released, so a fetch thread holds
the GIL only to set a URL and collect the bytes. Writes, stats and listings stay on the SDK: they are
rare and not on the hot path.

Errors keep the meaning ``ingest.storage.S3Store.get`` gives them: a missing object or bucket, or an
object larger than the cap, is the record's fault (``PermanentError``, reason worded like the SDK path's);
a refusal that no retry changes (access denied, invalid name) is ``PermanentError`` ``store_refused``;
anything else, connection failures, timeouts and 5xx included, is ``TransientError``.
"""

from __future__ import annotations

import io
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


class CurlReader:
    """``get(bucket, key, max_bytes)`` over libcurl, with one reused connection per calling thread.

    A ``pycurl.Curl`` handle must not be shared between threads, so each thread gets its own (kept for
    the reader's life: its connection stays open between requests). Safe to call from many threads.
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
        """Close every thread's handle (and its connection). Call once no thread reads any more."""
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
        curl.setopt(pycurl.URL, f"{self._base}/{quote(bucket, safe='')}/{quote(key, safe='/~')}")
        curl.setopt(pycurl.WRITEDATA, body)
        # libcurl stops a transfer whose Content-Length, or whose bytes so far, pass the cap. The cap also
        # applies to error answers, so it is never below what an S3 error document needs.
        curl.setopt(pycurl.MAXFILESIZE_LARGE, max(max_bytes, _ERROR_BODY_BYTES))
        try:
            curl.perform()
        except pycurl.error as e:
            code = e.args[0] if e.args else -1
            if code != pycurl.E_FILESIZE_EXCEEDED:
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
        raise _error(status, data, where)

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
                curl.setopt(pycurl.CAINFO, certifi.where())
            self._local.curl = curl
            with self._lock:
                self._handles.append(curl)
        return curl


def _error(status: int, body: bytes, where: str) -> Exception:
    """The exception for a non-200 answer, by its S3 error code (HTTP status when the body has none)."""
    found = _ERROR_CODE.search(body)
    code = found.group(1).decode("ascii", "replace") if found else f"HTTP {status}"
    if code in _MISSING or (found is None and status == 404):
        return PermanentError(f"object {where} does not exist")
    if code in _REFUSED:
        return PermanentError(f"object store refused {where}: {code}", "store_refused")
    return TransientError(f"object store error reading {where}: HTTP {status} {code}")
