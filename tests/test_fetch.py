"""Fetching by reference: allow-lists, SSRF refusals, a local HTTP server, batches, and MinIO."""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import urllib3
from minio.error import S3Error

from ingest.contracts import ImageSubmitted
from ingest.errors import PermanentError, TransientError
from ingest.fetch import FETCH_ERROR_CODES, Fetcher, FetchSettings
from ingest.settings import StackSettings
from ingest.storage import ObjectInfo, S3Store

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


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.put("images", "a/ok.png", PNG)
    s.put("images", "big.bin", b"x" * 2000)
    s.put("private", "secret.png", PNG)
    return s


@pytest.fixture
def fetcher(store: MemoryStore) -> Iterator[Fetcher]:
    with Fetcher(store, FetchSettings(max_bytes=1000)) as f:
        yield f


# -- inline and object store --------------------------------------------------------------------


def test_inline_ok_and_size_limits(fetcher: Fetcher) -> None:
    assert fetcher.fetch(msg(inline=base64.b64encode(PNG).decode())) == PNG
    assert fetcher.fetch(msg(inline=base64.b64encode(b"y" * 1000).decode())) == b"y" * 1000
    assert code_of(fetcher, msg(inline=base64.b64encode(b"y" * 1001).decode())) == "too_large"
    assert code_of(fetcher, msg(inline=base64.b64encode(b"y" * 100_000).decode())) == "too_large"
    assert code_of(fetcher, msg(inline="not base64!")) == "invalid_message"
    assert code_of(fetcher, msg()) == "invalid_message"


def test_s3_ok_missing_oversized_and_bucket_allow_list(fetcher: Fetcher, store: MemoryStore) -> None:
    assert fetcher.fetch(msg("s3://images/a/ok.png")) == PNG
    assert code_of(fetcher, msg("s3://images/a/nope.png")) == "missing_object"
    assert code_of(fetcher, msg("s3://images/big.bin")) == "too_large"
    assert code_of(fetcher, msg("s3://private/secret.png")) == "bucket_not_allowed"
    assert ("private", "secret.png") not in store.calls


@pytest.mark.parametrize(
    "ref",
    [
        "s3://images/../private/secret.png",
        "s3://images/a/../../private/secret.png",
        "s3://images//etc/passwd",
        "s3://images/./a/ok.png",
        "s3://images/a//ok.png",
        "s3://images/a/..",
        "s3://images/a/\x00ok.png",
        "s3://images/",
        "s3://IMAGES/a/ok.png",
        "S3://images/a/ok.png",
    ],
)
def test_key_escape_attempts_are_refused_before_the_store(
    ref: str, fetcher: Fetcher, store: MemoryStore
) -> None:
    assert code_of(fetcher, msg(ref)) == "invalid_ref"
    assert store.calls == []


def test_store_failures_are_classified(store: MemoryStore) -> None:
    resp = urllib3.HTTPResponse(status=403)
    store.fail["down"] = urllib3.exceptions.NewConnectionError(None, "connection refused")  # type: ignore[arg-type]
    store.fail["reset"] = ConnectionResetError("reset")
    store.fail["denied"] = S3Error(resp, "AccessDenied", "denied", "/images/denied", "r", "h")
    store.fail["slow"] = S3Error(resp, "SlowDown", "slow down", "/images/slow", "r", "h")
    store.fail["bug"] = KeyError("a bug in an adapter is not hidden")
    with Fetcher(store) as f:
        for key in ("down", "reset", "slow"):
            with pytest.raises(TransientError):
                f.fetch(msg(f"s3://images/{key}"))
        assert code_of(f, msg("s3://images/denied")) == "store_refused"
        with pytest.raises(KeyError):
            f.fetch(msg("s3://images/bug"))


# -- schemes and SSRF ---------------------------------------------------------------------------

FORBIDDEN_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://127.0.0.1:1/",
    "http://[::1]/",
    "http://localhost/",
    "http://2130706433/",  # 127.0.0.1 written as one decimal number
    "http://0.0.0.0/",
    "http://[::ffff:127.0.0.1]/",
]


@pytest.mark.parametrize(
    "ref",
    ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://x/", "data:image/png;base64,AAAA", "a.png"],
)
def test_other_schemes_are_refused(ref: str, fetcher: Fetcher) -> None:
    assert code_of(fetcher, msg(ref)) == "scheme_not_allowed"


@pytest.mark.parametrize("url", [*FORBIDDEN_URLS, "https://images.example.com/a.png"])
def test_http_is_disabled_by_default(url: str, fetcher: Fetcher) -> None:
    assert code_of(fetcher, msg(url)) == "scheme_not_allowed"


@pytest.mark.parametrize("url", FORBIDDEN_URLS)
def test_hosts_not_allow_listed_are_refused(url: str, store: MemoryStore) -> None:
    settings = FetchSettings(http_enabled=True, http_allowed_hosts=["images.example.com"])
    with Fetcher(store, settings) as f:
        assert code_of(f, msg(url)) == "host_not_allowed"


@pytest.mark.parametrize("url", FORBIDDEN_URLS)
def test_internal_addresses_are_refused_even_when_allow_listed(url: str, store: MemoryStore) -> None:
    hosts = ["169.254.169.254", "127.0.0.1", "::1", "localhost", "2130706433", "0.0.0.0", "::ffff:127.0.0.1"]
    with Fetcher(store, FetchSettings(http_enabled=True, http_allowed_hosts=hosts)) as f:
        assert code_of(f, msg(url)) == "address_not_allowed"


@pytest.mark.parametrize(
    "answers",
    [
        ["93.184.216.34", "10.0.0.5"],  # one internal answer among public ones
        ["::ffff:10.0.0.1"],
        ["2002:0a00:0001::1"],  # 6to4 around 10.0.0.1
        ["100.64.1.1"],  # shared address space
        ["224.0.1.1"],
        ["fe80::1%eth0"],
        ["240.0.0.1"],
    ],
)
def test_resolved_addresses_are_all_checked(answers: list[str], store: MemoryStore) -> None:
    settings = FetchSettings(http_enabled=True, http_allowed_hosts=["cdn.example"])
    with Fetcher(store, settings, resolver=lambda host, port: answers) as f:
        assert code_of(f, msg("http://cdn.example/a.png")) == "address_not_allowed"


def test_dns_failures_and_credentials(store: MemoryStore) -> None:
    def resolver(host: str, port: int) -> list[str]:
        if host == "gone.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    settings = FetchSettings(http_enabled=True, http_allowed_hosts=["gone.example", "flaky.example"])
    with Fetcher(store, settings, resolver=resolver) as f:
        assert code_of(f, msg("http://gone.example/a.png")) == "host_unresolvable"
        with pytest.raises(TransientError):
            f.fetch(msg("http://flaky.example/a.png"))
        assert code_of(f, msg("http://user:pw@flaky.example/a.png")) == "invalid_ref"


# -- a real HTTP server on loopback -------------------------------------------------------------

BIG = 1000


class Server:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, int]] = []  # (path, Host header, client port)
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is observable

            def log_message(self, format: str, *args: object) -> None:
                pass

            def reply(self, status: int, body: bytes = b"", **headers: str) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k.replace("_", "-"), v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("Host", ""), self.client_address[1]))
                p, port = self.path, outer.port
                statuses = {"/missing": 404, "/gone": 410, "/forbidden": 403, "/error": 500, "/busy": 429}
                redirects = {
                    "/redirect": "/ok.png",
                    "/redirect-abs": f"http://127.0.0.1:{port}/ok.png",
                    "/redirect-meta": "http://169.254.169.254/latest/meta-data/",
                    "/redirect-loopback": f"http://127.0.0.2:{port}/ok.png",
                    "/redirect-other": "http://evil.example/a.png",
                    "/redirect-file": "file:///etc/passwd",
                    "/redirect-ftp": "ftp://127.0.0.1/a.png",
                }
                if p == "/ok.png":
                    self.reply(200, PNG, Content_Type="image/png")
                elif p in statuses:
                    self.reply(statuses[p], b"nope")
                elif p == "/teapot":
                    self.reply(418)
                elif p in redirects:
                    self.reply(302, Location=redirects[p])
                elif p == "/redirect-nowhere":
                    self.reply(302)
                elif p.startswith("/chain/"):
                    n = int(p.rsplit("/", 1)[1])
                    self.reply(302, Location=f"/chain/{n - 1}" if n > 0 else "/ok.png")
                elif p == "/big-declared":
                    self.reply(200, b"z" * (BIG + 1))
                elif p == "/big-undeclared":  # no Content-Length: the cap must hold while streaming
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(b"z" * (BIG * 50))
                    self.close_connection = True
                elif p == "/hang":
                    outer.release.wait(10)  # until the test is done with it; the client has gone
                    self.close_connection = True
                else:
                    self.reply(400)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def paths(self) -> list[str]:
        return [r[0] for r in self.requests]


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    s.thread.start()
    yield s
    s.release.set()
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def http(store: MemoryStore) -> Iterator[Fetcher]:
    settings = FetchSettings(
        http_enabled=True, http_allowed_hosts=["127.0.0.1"], allow_private_addresses=True, max_bytes=BIG
    )
    with Fetcher(store, settings) as f:
        yield f


def test_http_ok_reuses_one_connection(http: Fetcher, server: Server) -> None:
    for _ in range(5):
        assert http.fetch(msg(server.url("/ok.png"))) == PNG
    assert server.paths() == ["/ok.png"] * 5
    assert len({port for _, _, port in server.requests}) == 1  # one keep-alive connection
    assert server.requests[0][1] == f"127.0.0.1:{server.port}"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/missing", "missing_object"),
        ("/gone", "missing_object"),
        ("/forbidden", "forbidden"),
        ("/teapot", "http_status"),
        ("/big-declared", "too_large"),
        ("/big-undeclared", "too_large"),
    ],
)
def test_http_permanent_failures(path: str, code: str, http: Fetcher, server: Server) -> None:
    assert code_of(http, msg(server.url(path))) == code
    assert http.fetch(msg(server.url("/ok.png"))) == PNG  # the pool is still usable afterwards


@pytest.mark.parametrize("path", ["/error", "/busy"])
def test_http_server_errors_are_transient(path: str, http: Fetcher, server: Server) -> None:
    with pytest.raises(TransientError, match="HTTP"):
        http.fetch(msg(server.url(path)))


def test_connection_refused_and_timeout_are_transient(store: MemoryStore, server: Server) -> None:
    settings = FetchSettings(
        http_enabled=True, http_allowed_hosts=["127.0.0.1"], allow_private_addresses=True, http_timeout_s=0.5
    )
    with Fetcher(store, settings) as f:
        with pytest.raises(TransientError):
            f.fetch(msg("http://127.0.0.1:1/a.png"))
        with pytest.raises(TransientError, match="timed out"):
            f.fetch(msg(server.url("/hang")))


def test_redirects_are_followed_and_rechecked(http: Fetcher, server: Server) -> None:
    assert http.fetch(msg(server.url("/redirect"))) == PNG
    assert http.fetch(msg(server.url("/redirect-abs"))) == PNG
    assert http.fetch(msg(server.url("/chain/2"))) == PNG  # three redirects: the limit
    assert code_of(http, msg(server.url("/chain/3"))) == "too_many_redirects"
    assert code_of(http, msg(server.url("/redirect-other"))) == "host_not_allowed"
    assert code_of(http, msg(server.url("/redirect-file"))) == "scheme_not_allowed"
    assert code_of(http, msg(server.url("/redirect-ftp"))) == "scheme_not_allowed"
    assert code_of(http, msg(server.url("/redirect-nowhere"))) == "http_status"
    assert "/chain/-1" not in server.paths()


def test_no_redirects_when_max_redirects_is_zero(store: MemoryStore, server: Server) -> None:
    settings = FetchSettings(
        http_enabled=True, http_allowed_hosts=["127.0.0.1"], allow_private_addresses=True, max_redirects=0
    )
    with Fetcher(store, settings) as f:
        assert code_of(f, msg(server.url("/redirect"))) == "too_many_redirects"
    assert server.paths() == ["/redirect"]


def test_redirect_to_internal_address_is_refused(store: MemoryStore, server: Server) -> None:
    # Private addresses are refused; only the test server's own address is let through.
    settings = FetchSettings(
        http_enabled=True,
        http_allowed_hosts=["127.0.0.1", "127.0.0.2", "169.254.169.254"],
        allowed_private_networks=["127.0.0.1/32"],  # type: ignore[list-item]
    )
    with Fetcher(store, settings) as f:
        assert f.fetch(msg(server.url("/ok.png"))) == PNG
        assert code_of(f, msg(server.url("/redirect-loopback"))) == "address_not_allowed"
        assert code_of(f, msg(server.url("/redirect-meta"))) == "address_not_allowed"
        assert code_of(f, msg(f"http://127.0.0.2:{server.port}/ok.png")) == "address_not_allowed"


def test_connection_goes_to_the_checked_address(store: MemoryStore, server: Server) -> None:
    resolved: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["127.0.0.1"]

    settings = FetchSettings(
        http_enabled=True,
        http_allowed_hosts=["images.example.com"],
        allowed_private_networks=["127.0.0.1/32"],  # type: ignore[list-item]
    )
    with Fetcher(store, settings, resolver=resolver) as f:
        assert f.fetch(msg(f"http://images.example.com:{server.port}/ok.png")) == PNG
    assert resolved == ["images.example.com"]
    assert server.requests[0][1] == f"images.example.com:{server.port}"


def test_https_checks_the_certificate_against_the_name_not_the_address(
    store: MemoryStore, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    name = "images.example.com"
    args = f"req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN={name} -addext subjectAltName=DNS:{name}"
    subprocess.run(
        [openssl, *args.split(), "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.httpd.socket = ctx.wrap_socket(server.httpd.socket, server_side=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust it the way a system CA would be
    settings = FetchSettings(
        http_enabled=True,
        http_allowed_hosts=["images.example.com", "other.example.com"],
        allow_private_addresses=True,
    )
    with Fetcher(store, settings, resolver=lambda host, port: ["127.0.0.1"]) as f:
        assert f.fetch(msg(f"https://images.example.com:{server.port}/ok.png")) == PNG
        with pytest.raises(TransientError, match="doesn't match"):
            f.fetch(msg(f"https://other.example.com:{server.port}/ok.png"))
        redirect = msg(f"https://images.example.com:{server.port}/redirect-abs")
        assert code_of(f, redirect) == "scheme_not_allowed"  # https -> http downgrade
    assert server.requests[0][:2] == ("/ok.png", f"images.example.com:{server.port}")


# -- batches ------------------------------------------------------------------------------------


def test_fetch_many_keeps_order_and_returns_errors_per_item(store: MemoryStore) -> None:
    store.fail["down"] = ConnectionRefusedError("store down")
    msgs = [
        msg("s3://images/a/ok.png"),
        msg("s3://images/missing.png"),
        msg(inline=base64.b64encode(b"inline-bytes").decode()),
        msg("s3://private/secret.png"),
        msg("s3://images/down"),
        msg("file:///etc/passwd"),
        msg("s3://images/a/ok.png"),
    ]
    with Fetcher(store, FetchSettings(workers=3)) as f:
        out = f.fetch_many(msgs)
        assert f.fetch_many([]) == []
    assert out[0] == PNG and out[2] == b"inline-bytes" and out[6] == PNG
    codes = [getattr(o, "code", None) for o in out]
    assert (
        codes[1] == "missing_object" and codes[3] == "bucket_not_allowed" and codes[5] == "scheme_not_allowed"
    )
    assert isinstance(out[4], TransientError)


def test_fetch_many_runs_items_concurrently(store: MemoryStore) -> None:
    # Each get waits until all four are in flight at once; run one by one they would break the barrier.
    barrier = threading.Barrier(4, timeout=10)

    def all_in_flight(key: str) -> None:
        barrier.wait()

    store.before_get = all_in_flight
    with Fetcher(store, FetchSettings(workers=4)) as f:
        out = f.fetch_many([msg("s3://images/a/ok.png")] * 4)
    assert out == [PNG] * 4


def test_closed_fetcher_refuses_batches(store: MemoryStore) -> None:
    f = Fetcher(store)
    f.close()
    f.close()
    with pytest.raises(RuntimeError):
        f.fetch_many([msg("s3://images/a/ok.png")])


# -- MinIO --------------------------------------------------------------------------------------


@pytest.mark.integration
def test_fetch_from_minio(stack: StackSettings) -> None:
    s3 = S3Store(stack.s3)
    key = f"tests/fetch/{uuid.uuid4().hex}.png"
    s3.put("images", key, PNG, "image/png")
    with Fetcher(s3) as f:
        assert f.fetch_many([msg(f"s3://images/{key}"), msg(f"s3://images/{key}.missing")])[0] == PNG
        assert code_of(f, msg(f"s3://images/{key}.missing")) == "missing_object"
