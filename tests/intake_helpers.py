"""Helpers for the intake tests: the HTTP service on a free port in a thread, keys, images, requests."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import Image

from harness.wait import wait_until
from ingest.accounts import create_api_key
from ingest.api.app import bind, create_app, make_server
from ingest.db import connect
from ingest.intake import IntakeSettings
from ingest.settings import StackSettings


def intake_settings(**kw: Any) -> IntakeSettings:
    base: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "metrics_port": None, "db_pool_max": 4}
    base.update(kw)
    return IntakeSettings(**base)


@contextmanager
def running_intake(stack: StackSettings, settings: IntakeSettings) -> Iterator[str]:
    """Serve the app on a free port in a thread; yields its base URL, stops it (graceful) on exit."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = make_server(create_app(stack, settings))
    error: list[BaseException] = []

    def target() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as e:  # surfaced below
            error.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    wait_until(lambda: server.started or bool(error) or not thread.is_alive(), 30, "the intake to start")
    assert not error and server.started, f"intake did not start: {error}"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def new_api_key(stack: StackSettings) -> str:
    with connect(stack.pg) as conn:
        _record, key = create_api_key(conn, f"test-{uuid.uuid4().hex[:8]}")
    conn.close()
    return key


def random_png(size: tuple[int, int] = (32, 32)) -> bytes:
    rng = np.random.default_rng(uuid.uuid4().int % 2**32)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def multipart(
    field: str, filename: str, data: bytes, ctype: str = "application/octet-stream"
) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {ctype}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any] | bytes]:
    """(status, parsed JSON or raw bytes); HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers.get("content-type", "")
    return status, (json.loads(raw) if "json" in ctype else raw)


def upload(base: str, key: str | None, data: bytes, filename: str = "x.png") -> tuple[int, dict[str, Any]]:
    body, ctype = multipart("file", filename, data)
    headers = {"Content-Type": ctype, **({"X-API-Key": key} if key else {})}
    status, doc = request("POST", f"{base}/v1/images", body, headers)
    assert isinstance(doc, dict), doc
    return status, doc


def request_json(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    status, doc = request(method, url, body, headers)
    assert isinstance(doc, dict), doc
    return status, doc
