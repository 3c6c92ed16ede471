"""Fetching image bytes for an ``ImageSubmitted`` message, safely.

Sources, each checked here rather than trusted from the contract's own validation:

* ``inline``: base64 in the message, size-checked before and after decoding.
* ``s3://bucket/key``: the bucket must be in ``allowed_buckets``; the key is validated by
  ``parse_s3_ref`` (no empty, ``.`` or ``..`` segments); read through the ``ObjectStore`` port with the
  ``max_bytes`` cap.
* ``http(s)://``: off by default. When on, the host must be in ``http_allowed_hosts`` (any port; IDN
  hosts in their ``xn--`` form) and every address
  it resolves to must be public (not loopback, link-local, private, shared, multicast, reserved or
  unspecified; IPv4 embedded in IPv6 is unwrapped first) unless ``allow_private_addresses`` (tests and
  development only) or the address lies in ``allowed_private_networks``. The connection then goes to
  the address that was checked, never to a second DNS answer, so DNS rebinding cannot swap in an
  internal address between check and connect (``Host`` and TLS SNI/certificate checks still use the
  name). The body is streamed with the ``max_bytes`` cap and ``Accept-Encoding: identity``, and never
  decompressed (images are compressed already; no gzip bombs). Connections are reused through one
  ``urllib3.PoolManager``.

  Redirects: at most ``max_redirects`` (default 3) are followed, and every hop is checked again as a new
  URL (scheme, host allow-list, resolved addresses); an https -> http downgrade is refused. A chain
  longer than that is ``too_many_redirects``. Set ``max_redirects=0`` to treat any redirect as that
  error.

  ``http_timeout_s`` bounds the whole fetch, every hop and the body included (each socket operation
  gets the time that is left).

Every failure is a ``PermanentError`` whose ``code`` is in ``FETCH_ERROR_CODES`` (dead-letter it) or a
``TransientError`` (store or remote server unavailable, timeouts, TLS failures, 5xx, 408/425/429: retry
the batch). An exception the store adapter was not expected to raise (a bug) is re-raised unchanged.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Final
from urllib.parse import urljoin

import urllib3
from minio.error import S3Error
from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, field_validator
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from ingest.budget import ByteBudget, Held
from ingest.contracts import ImageSubmitted, parse_s3_ref
from ingest.errors import PermanentError, TransientError, is_transient
from ingest.storage import ObjectStore

logger = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
FETCH_ERROR_CODES: Final = frozenset(
    {
        "invalid_message",
        "invalid_ref",
        "scheme_not_allowed",
        "bucket_not_allowed",
        "host_not_allowed",
        "address_not_allowed",
        "host_unresolvable",
        "missing_object",
        "forbidden",
        "http_status",
        "too_many_redirects",
        "too_large",
        "store_refused",
    }
)
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_RETRYABLE_STATUS: Final = frozenset({408, 425, 429})
_CHUNK: Final = 64 * 1024
# Resolver failures that mean "this name does not exist", as opposed to "DNS is unavailable".
_NO_SUCH_HOST: Final = frozenset({socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)})

Resolver = Callable[[str, int], list[str]]


class FetchSettings(BaseModel):
    """Where images may come from and what they may cost. Nest it in a service's settings."""

    model_config = ConfigDict(frozen=True)

    allowed_buckets: list[str] = Field(default_factory=lambda: ["images"])
    http_enabled: bool = False
    http_allowed_hosts: list[str] = Field(default_factory=list)
    max_bytes: int = Field(default=10 * MiB, ge=1)
    # Fetched image bytes a process holds until they are decoded (ingest/budget.py): a batch of phone
    # photos waits for room instead of being held whole.
    budget_bytes: int = Field(default=128 * MiB, ge=1)
    http_timeout_s: float = Field(default=5.0, gt=0)
    max_redirects: int = Field(default=3, ge=0, le=10)
    workers: int = Field(default=8, ge=1, le=256)
    # Tests and development only: lets http(s) reach loopback/private addresses.
    allow_private_addresses: bool = False
    # Narrow exceptions to the private-address block, e.g. an internal image service's subnet.
    allowed_private_networks: list[IPvAnyNetwork] = Field(default_factory=list)

    @field_validator("http_allowed_hosts")
    @classmethod
    def _normalise_hosts(cls, v: list[str]) -> list[str]:
        return [_normalise_host(h) for h in v]


def _normalise_host(host: str) -> str:
    return host.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")


def _redact(url: str) -> str:
    """The URL for a reason/log line: no credentials, query or fragment (they may hold tokens)."""
    try:
        u = parse_url(url)
    except LocationParseError:
        return url.split("?", 1)[0].split("#", 1)[0][:120]
    return f"{u.scheme}://{u.netloc or ''}{u.path or ''}"[:200]


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to for a TCP connection, in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if not ip.is_global:  # covers private, loopback, link-local, shared (100.64/10), unspecified
        return False
    if ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local or ip.is_unspecified:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        # 6to4 and Teredo carry an IPv4 address that may be an internal one.
        for inner in (ip.sixtofour, ip.teredo[1] if ip.teredo else None):
            if inner is not None and not _is_public(inner):
                return False
    return True


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    address: str
    host_header: str
    path: str


def outcome(future: Future[bytes]) -> bytes | BaseException:
    """The bytes of a finished (or running: this waits) fetch, or the exception it raised."""
    try:
        return future.result()
    except Exception as e:  # per-item outcome; the caller classifies it
        return e


class Fetcher:
    """Fetches the bytes a message refers to; ``fetch_many`` does a batch on a bounded thread pool.

    Owns a ``ThreadPoolExecutor`` of ``settings.workers`` threads and (when http is enabled) one
    ``urllib3.PoolManager``; ``close()`` releases both. Safe to use from several threads at once.
    ``resolver`` is replaceable for tests (default: ``socket.getaddrinfo``).
    """

    def __init__(
        self, store: ObjectStore, settings: FetchSettings | None = None, *, resolver: Resolver | None = None
    ) -> None:
        self.settings = settings or FetchSettings()
        self._store = store
        self._resolve = resolver or resolve
        self._http: urllib3.PoolManager | None = None
        if self.settings.http_enabled:
            # retries=False: the consumer loop owns retrying; maxsize keeps one connection per worker.
            self._http = urllib3.PoolManager(
                num_pools=32, maxsize=self.settings.workers, block=False, retries=False
            )
        self._executor = ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="fetch")
        self.budget = ByteBudget(self.settings.budget_bytes)

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Wait for running fetches, cancel queued ones, drop pooled connections. Idempotent."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._http is not None:
            self._http.clear()

    def submit_many(self, msgs: Sequence[ImageSubmitted]) -> list[Future[bytes]]:
        """Start fetching every message on the pool; one future per message, in order. A caller that
        stops early should cancel the futures it no longer needs."""
        return [self._executor.submit(self.fetch, m) for m in msgs]

    def submit_within(self, msgs: Sequence[ImageSubmitted], budget: ByteBudget) -> list[Future[Held]]:
        """``submit_many`` for images that may be large: each fetched image takes its size from
        ``budget`` before its future completes. Read the futures with ``ingest.budget.as_fetched``."""
        return [self._executor.submit(self._fetch_within, m, budget) for m in msgs]

    def _fetch_within(self, msg: ImageSubmitted, budget: ByteBudget) -> Held:
        data = self.fetch(msg)
        budget.acquire(len(data))
        return Held(data)

    def fetch_many(self, msgs: Sequence[ImageSubmitted]) -> list[bytes | BaseException]:
        """Fetch every message concurrently; the result list is in the order of ``msgs``.

        A failed item holds its exception instead of bytes (``PermanentError``: dead-letter that record;
        ``TransientError``: retry the batch); nothing is raised for a per-item failure.
        """
        return [outcome(f) for f in self.submit_many(msgs)]

    def fetch(self, msg: ImageSubmitted) -> bytes:
        """The image bytes for ``msg``, at most ``settings.max_bytes`` (see the module docstring)."""
        if msg.inline is not None:
            return self._fetch_inline(msg.inline)
        ref = msg.ref
        if not ref:
            raise PermanentError("message has neither ref nor inline", "invalid_message")
        scheme = ref.split(":", 1)[0].lower() if ":" in ref else ""
        if scheme == "s3":
            return self._fetch_s3(ref)
        if scheme in ("http", "https"):
            return self._fetch_http(ref)
        raise PermanentError(f"reference scheme {scheme[:20]!r} is not allowed", "scheme_not_allowed")

    # -- inline ---------------------------------------------------------------------------------

    def _fetch_inline(self, text: str) -> bytes:
        limit = self.settings.max_bytes
        # Refuse before decoding: base64 text is 4/3 of the bytes, minus at most 2 padding bytes.
        if len(text) // 4 * 3 - 2 > limit:
            raise PermanentError(f"inline image is larger than {limit} bytes", "too_large")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise PermanentError("inline image is not valid base64", "invalid_message") from None
        if len(data) > limit:
            raise PermanentError(f"inline image is {len(data)} bytes, more than {limit}", "too_large")
        return data

    # -- object store ---------------------------------------------------------------------------

    def _fetch_s3(self, ref: str) -> bytes:
        try:
            bucket, key = parse_s3_ref(ref)
        except ValueError as e:
            raise PermanentError(str(e), "invalid_ref") from None
        if bucket not in self.settings.allowed_buckets:
            raise PermanentError(f"bucket {bucket!r} is not allowed", "bucket_not_allowed")
        limit = self.settings.max_bytes
        try:
            data = self._store.get(bucket, key, limit)
        except PermanentError as e:
            if e.code != "permanent":
                raise
            # ObjectStore adapters predating error codes only say it in words.
            code = "too_large" if "larger than" in e.reason else "missing_object"
            raise PermanentError(e.reason, code) from e
        except Exception as e:
            where = f"s3://{bucket}/{key[:200]}"
            if is_transient(e):
                raise TransientError(
                    f"object store unavailable reading {where}: {type(e).__name__}: {e}"
                ) from e
            if isinstance(e, S3Error):
                raise PermanentError(f"object store refused {where}: {e.code}", "store_refused") from e
            raise
        if len(data) > limit:  # do not trust an adapter with the cap
            raise PermanentError(
                f"object s3://{bucket}/{key[:200]} is larger than {limit} bytes", "too_large"
            )
        return data

    # -- http(s) --------------------------------------------------------------------------------

    def _fetch_http(self, url: str) -> bytes:
        s = self.settings
        if not s.http_enabled or self._http is None:
            raise PermanentError("http(s) references are disabled (fetch.http_enabled)", "scheme_not_allowed")
        deadline = time.monotonic() + s.http_timeout_s
        previous: str | None = None
        for hop in range(s.max_redirects + 1):
            target = self._check_url(url, previous)
            resp = self._request(target, deadline)
            if resp.status not in _REDIRECTS:
                return self._read_body(resp, url, deadline)
            location = resp.headers.get("Location")
            self._discard(resp)
            if not location:
                raise PermanentError(
                    f"HTTP {resp.status} without Location from {_redact(url)}", "http_status"
                )
            if hop == s.max_redirects:
                raise PermanentError(
                    f"more than {s.max_redirects} redirects fetching {_redact(url)}", "too_many_redirects"
                )
            logger.debug("following redirect %d from %s", resp.status, _redact(url))
            previous, url = target.scheme, urljoin(url, location)
        raise AssertionError("unreachable")  # the loop returns or raises on its last hop

    def _check_url(self, url: str, previous_scheme: str | None) -> _Target:
        """Validate one hop: scheme, host allow-list, and every resolved address."""
        try:
            u = parse_url(url)
        except LocationParseError:
            raise PermanentError(f"malformed URL {_redact(url)}", "invalid_ref") from None
        scheme = (u.scheme or "").lower()
        if scheme not in ("http", "https"):
            raise PermanentError(f"reference scheme {scheme[:20]!r} is not allowed", "scheme_not_allowed")
        if previous_scheme == "https" and scheme == "http":
            raise PermanentError(f"redirect from https to http refused: {_redact(url)}", "scheme_not_allowed")
        if u.auth:
            raise PermanentError("credentials in a URL are not accepted", "invalid_ref")
        host = _normalise_host(u.host or "")
        if not host:
            raise PermanentError(f"URL has no host: {_redact(url)}", "invalid_ref")
        if host not in self.settings.http_allowed_hosts:
            raise PermanentError(f"host {host[:100]!r} is not allowed", "host_not_allowed")
        port = u.port or (443 if scheme == "https" else 80)
        addresses = self._addresses(host, port)
        return _Target(scheme, host, port, addresses[0], u.netloc or host, u.request_uri)

    def _addresses(self, host: str, port: int) -> list[str]:
        try:
            addresses = self._resolve(host, port)
        except socket.gaierror as e:
            if e.errno in _NO_SUCH_HOST:
                raise PermanentError(f"host {host[:100]!r} does not resolve", "host_unresolvable") from None
            raise TransientError(f"cannot resolve {host[:100]!r}: {e}") from e
        except UnicodeError:
            raise PermanentError(f"host {host[:100]!r} is not a valid name", "invalid_ref") from None
        except OSError as e:
            raise TransientError(f"cannot resolve {host[:100]!r}: {e}") from e
        if not addresses:
            raise PermanentError(f"host {host[:100]!r} has no addresses", "host_unresolvable")
        # One refused address refuses the host: a name that also points inside is not trusted.
        for a in addresses:
            if not self._address_allowed(a):
                raise PermanentError(
                    f"host {host[:100]!r} resolves to refused address {a}", "address_not_allowed"
                )
        return addresses

    def _address_allowed(self, text: str) -> bool:
        try:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if self.settings.allow_private_addresses:
            return True
        if any(ip in net for net in self.settings.allowed_private_networks):
            return True
        return _is_public(ip)

    def _request(self, t: _Target, deadline: float) -> urllib3.BaseHTTPResponse:
        assert self._http is not None
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransientError(f"timed out fetching {t.scheme}://{t.host_header}")
        # Connect to the checked address; the name travels in Host, SNI and the certificate check.
        pool_kwargs = {"server_hostname": t.host, "assert_hostname": t.host} if t.scheme == "https" else None
        pool = self._http.connection_from_host(t.address, t.port, t.scheme, pool_kwargs=pool_kwargs)
        headers = {"Host": t.host_header, "Accept-Encoding": "identity", "User-Agent": "cifake-screen/fetch"}
        try:
            resp = pool.urlopen(
                "GET",
                t.path,
                headers=headers,
                redirect=False,
                retries=False,
                assert_same_host=False,
                timeout=urllib3.Timeout(connect=left, read=left),
                preload_content=False,
                decode_content=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise TransientError(f"cannot fetch {t.scheme}://{t.host_header}: {type(e).__name__}: {e}") from e
        return resp

    @staticmethod
    def _discard(resp: urllib3.BaseHTTPResponse) -> None:
        """Drop a response without reading its body (and the connection, which still holds it)."""
        resp.close()
        resp.release_conn()

    def _read_body(self, resp: urllib3.BaseHTTPResponse, url: str, deadline: float) -> bytes:
        status = resp.status
        if status != 200:
            self._discard(resp)
            where = _redact(url)
            if status in (404, 410):
                raise PermanentError(f"HTTP {status} for {where}", "missing_object")
            if status in (401, 403):
                raise PermanentError(f"HTTP {status} for {where}", "forbidden")
            if status in _RETRYABLE_STATUS or status >= 500:
                raise TransientError(f"HTTP {status} for {where}")
            raise PermanentError(f"HTTP {status} for {where}", "http_status")
        limit = self.settings.max_bytes
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            self._discard(resp)
            raise PermanentError(f"{_redact(url)} declares {declared} bytes, more than {limit}", "too_large")
        chunks: list[bytes] = []
        total = 0
        complete = False
        try:
            while chunk := resp.read(_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise PermanentError(f"{_redact(url)} is larger than {limit} bytes", "too_large")
                if time.monotonic() > deadline:
                    raise TransientError(f"timed out reading {_redact(url)}")
                chunks.append(chunk)
            complete = True
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise TransientError(f"error reading {_redact(url)}: {type(e).__name__}: {e}") from e
        finally:
            if not complete:
                resp.close()  # unread body left on the socket would corrupt the next request on it
            resp.release_conn()
        return b"".join(chunks)
