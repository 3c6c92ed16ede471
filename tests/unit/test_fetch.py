"""Fetching by reference: allow-lists, SSRF refusals, a local HTTP server, batches, and MinIO."""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterator

import pytest
import urllib3
from minio.error import S3Error

from ingest.errors import TransientError
from ingest.fetch import Fetcher, FetchSettings
from tests.fetch_helpers import PNG, MemoryStore, code_of, msg, seeded_store


@pytest.fixture
def store() -> MemoryStore:
    return seeded_store()


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
