"""Fetching over HTTP from a real server on loopback: status codes, timeouts, redirects, TLS names."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ingest.errors import TransientError
from ingest.fetch import Fetcher, FetchSettings
from tests.fetch_helpers import PNG, MemoryStore, code_of, msg, seeded_store


@pytest.fixture
def store() -> MemoryStore:
    return seeded_store()


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
