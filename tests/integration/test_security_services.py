"""Security promises checked against running services on the real stack; each test fails if its promise
breaks (see ``tests/unit/test_security.py`` for the map of which test checks which promise)."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import re
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2.extensions
import pytest
from pydantic import SecretStr
from starlette.routing import Route

from ingest.accounts import create_api_key, set_moderator, verify_api_key, verify_moderator
from ingest.api.review import router as review_router
from ingest.api.sessions import COOKIE
from ingest.contracts import ImageSubmitted, encode, utcnow
from ingest.db import connect
from ingest.settings import StackSettings
from ingest.storage import S3Store
from scorer.service import run_scorer
from tests.intake_helpers import intake_settings, new_api_key, random_png, running_intake, upload
from tests.kafka_helpers import produce, read_all
from tests.scorer_helpers import jpeg, make_weights, scorer_settings

pytestmark = pytest.mark.integration

KAFKA_SECRET = "kafka-sasl-" + uuid.uuid4().hex
SESSION_SECRET = "session-key-" + uuid.uuid4().hex


def call(
    base: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request that does not follow redirects."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def form(**fields: str) -> tuple[bytes, dict[str, str]]:
    return urllib.parse.urlencode(fields).encode(), {"Content-Type": "application/x-www-form-urlencoded"}


def session_cookie(headers: http.client.HTTPMessage) -> str:
    for value in headers.get_all("set-cookie") or []:
        m = re.match(rf"{COOKIE}=([^;]+)", value)
        if m:
            return m.group(1)
    raise AssertionError(f"no session cookie in {headers}")


def csrf_of(html: bytes) -> str:
    m = re.search(rb'name="csrf" value="([^"]+)"', html)
    assert m, html[:300]
    return m.group(1).decode()


def login(base: str, name: str, password: str) -> tuple[int, str, str]:
    """(status of the login POST, session cookie after it, CSRF token of that session)."""
    _s, h, page = call(base, "GET", "/review/login")
    cookie, token = session_cookie(h), csrf_of(page)
    body, hdrs = form(name=name, password=password, csrf=token)
    status, h, _b = call(base, "POST", "/review/login", body, {**hdrs, "Cookie": f"{COOKIE}={cookie}"})
    if status != 303:
        return status, cookie, token
    cookie = session_cookie(h)
    _s, _h, page = call(base, "GET", "/review/history", headers={"Cookie": f"{COOKIE}={cookie}"})
    return status, cookie, csrf_of(page)


@contextmanager
def moderator(stack: StackSettings) -> Iterator[tuple[str, str]]:
    name, password = f"sec-{uuid.uuid4().hex[:8]}", "pw-" + uuid.uuid4().hex
    with connect(stack.pg) as conn:
        set_moderator(conn, name, password)
    conn.close()
    yield name, password


@contextmanager
def verdict_rows(stack: StackSettings, refs: dict[str, str]) -> Iterator[None]:
    """``images`` + ``verdicts`` rows for each image id -> ref; deleted afterwards."""
    with connect(stack.pg) as conn, conn.cursor() as cur:
        for image_id, ref in refs.items():
            cur.execute(
                "INSERT INTO images (id, ref, source, submitted_at) VALUES (%s, %s, 'sec', now())",
                (image_id, ref),
            )
            cur.execute(
                "INSERT INTO verdicts (image_id, model_version, p_fake, label, threshold, scored_at)"
                " VALUES (%s, 'sec-v1', 0.5, 'uncertain', 0.5, now())",
                (image_id,),
            )
    conn.close()
    try:
        yield
    finally:
        with connect(stack.pg) as conn, conn.cursor() as cur:
            for table, column in (("feedback", "image_id"), ("verdicts", "image_id"), ("images", "id")):
                cur.execute(f"DELETE FROM {table} WHERE {column} = ANY(%s)", (list(refs),))
        conn.close()


# -- credentials never in logs or /metrics ------------------------------------------------------


def _secrets(stack: StackSettings, *extra: str) -> list[str]:
    dsn = stack.pg.dsn.get_secret_value()
    password = psycopg2.extensions.parse_dsn(dsn).get("password", "")
    found = [stack.s3.secret_key.get_secret_value(), stack.s3.access_key.get_secret_value(), password, dsn]
    assert all(len(s) >= 6 for s in found), (
        "the stack must have real credentials for this test to mean anything"
    )
    return [*found, KAFKA_SECRET, *extra]


def test_credentials_never_appear_in_logs_metrics_or_dead_letters(
    stack: StackSettings,
    topic: str,
    group: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    # A Kafka password the services must log masked (PLAINTEXT here, so it is never sent anywhere).
    stack = stack.model_copy(
        update={"kafka": stack.kafka.model_copy(update={"sasl_password": SecretStr(KAFKA_SECRET)})}
    )
    key = new_api_key(stack)
    with moderator(stack) as (name, password):
        # The scorer: a good record, a missing object and a malformed one.
        S3Store(stack.s3).put("images", f"tests/sec/{hashlib.sha256(jpeg(5)).hexdigest()}", jpeg(5))
        records = [
            ImageSubmitted(image_id=f"sec-{i}", ref=ref, submitted_at=utcnow(), source="sec")
            for i, ref in enumerate(
                [
                    f"s3://images/tests/sec/{hashlib.sha256(jpeg(5)).hexdigest()}",
                    "s3://images/tests/sec/missing",
                ]
            )
        ]
        produce(
            stack, topic, [(m.image_id.encode(), encode(m)) for m in records] + [(b"sec-2", b"{not json")]
        )
        weights = make_weights(tmp_path / "w.safetensors", "sec-v1", seed=2)
        stats = run_scorer(
            stack, scorer_settings(topic, group, weights, metrics_port=0), max_records=3, idle_timeout=30
        )
        assert (stats.processed, stats.dead_lettered) == (1, 2)
        port = next(
            int(m.group(1))
            for r in caplog.records
            if (m := re.search(r"metrics on http://[^:]+:(\d+)", r.getMessage()))
        )
        _s, _h, scorer_metrics = call(f"http://127.0.0.1:{port}", "GET", "/metrics")
        letters = b"".join(v or b"" for *_x, v in read_all(stack, topic + ".dlq", expect=2))

        # The intake and console: uploads with a good and a bad key, logins with a good and a bad password.
        settings = intake_settings(topic=topic, session_secret=SecretStr(SESSION_SECRET))
        with running_intake(stack, settings) as base:
            assert upload(base, key, random_png())[0] == 202
            assert upload(base, key[:-3] + "xyz", random_png())[0] == 401
            assert login(base, name, password)[0] == 303
            assert login(base, name, password[::-1])[0] == 401
            _s, _h, intake_metrics = call(base, "GET", "/metrics")
            assert b"intake_http_requests_total" in intake_metrics

    out, err = capfd.readouterr()
    logs = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records) + out + err
    assert "scorer starting: stack=" in logs
    assert "**********" in logs, "the effective configuration is logged, masked"
    # ck_<id>_<secret>: the url-safe secret may itself contain "_" (rsplit once gave a 1-character "secret")
    for secret in _secrets(stack, key, key.split("_", 2)[2], password, SESSION_SECRET):
        assert secret not in logs, f"a credential ({secret[:4]}...) is in the logs"
        for name_, text in (
            ("scorer", scorer_metrics),
            ("intake", intake_metrics),
            ("dead letters", letters),
        ):
            assert secret.encode() not in text, f"a credential ({secret[:4]}...) is in the {name_}"


# -- secrets stored hashed ----------------------------------------------------------------------


def test_api_keys_and_passwords_are_stored_hashed(stack: StackSettings) -> None:
    name, password = f"sec-{uuid.uuid4().hex[:8]}", "correct horse " + uuid.uuid4().hex
    with connect(stack.pg) as conn:
        record, key = create_api_key(conn, name)
        set_moderator(conn, name, password)
        with conn.cursor() as cur:
            cur.execute("SELECT row_to_json(k)::text, key_hash FROM api_keys k WHERE id = %s", (record.id,))
            key_row, key_hash = cur.fetchone()
            cur.execute(
                "SELECT row_to_json(m)::text, password_hash FROM moderators m WHERE name = %s", (name,)
            )
            mod_row, password_hash = cur.fetchone()
        assert verify_api_key(conn, key) == record and verify_api_key(conn, key + "x") is None
        assert verify_moderator(conn, name, password) and not verify_moderator(conn, name, password + "x")
    conn.close()
    secret = key.split("_", 2)[2]  # ck_<id>_<secret>; the url-safe secret may itself contain "_"
    assert key not in key_row and secret not in key_row
    assert key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert password not in mod_row and password_hash.startswith("scrypt$16384$8$1$")
    salt = password_hash.split("$")[4]
    assert salt and salt not in password  # salted, and not derived from the password text


# -- review console: sessions and CSRF ----------------------------------------------------------


def _review_routes() -> list[tuple[str, str]]:
    out = []
    for route in review_router.routes:
        assert isinstance(route, Route)
        for method in sorted(route.methods or []):
            out.append((method, route.path.replace("{image_id}", "sec-img")))
    return out


def test_console_refuses_requests_without_a_session_and_posts_without_csrf(
    stack: StackSettings, topic: str
) -> None:
    routes = _review_routes()
    gets = [p for m, p in routes if m == "GET" and p != "/review/login"]
    posts = [p for m, p in routes if m == "POST"]
    assert len(gets) >= 6 and len(posts) >= 3, routes
    query = "?model_version=v1&method=gradcam"
    with (
        moderator(stack) as (name, password),
        running_intake(stack, intake_settings(feedback_topic=topic)) as base,
    ):
        status, cookie, token = login(base, name, password)
        assert status == 303
        _s, _h, other = call(base, "GET", "/review/login")
        other_token = csrf_of(other)  # a valid token, but of another (anonymous) session
        forged = cookie[:-4] + ("AAAA" if not cookie.endswith("AAAA") else "BBBB")
        for path in gets:
            for cookies in ({}, {"Cookie": f"{COOKIE}={forged}"}, {"Cookie": f"{COOKIE}=garbage"}):
                status, h, _b = call(base, "GET", path + query, headers=cookies)
                assert (status, h.get("location")) == (303, "/review/login"), (path, cookies)
        assert call(base, "GET", "/review/history", headers={"Cookie": f"{COOKIE}={cookie}"})[0] == 200
        for path in posts:
            fields = {"label": "fake", "name": name, "password": password}
            for bad in ({}, {"csrf": ""}, {"csrf": token + "x"}, {"csrf": other_token}):
                body, hdrs = form(**fields, **bad)
                status, _h, _b = call(base, "POST", path, body, {**hdrs, "Cookie": f"{COOKIE}={cookie}"})
                assert status == 403, (path, bad, status)
            body, hdrs = form(**fields, csrf=token)  # the right token without the session cookie
            status, h, _b = call(base, "POST", path, body, hdrs)
            assert status in (303, 403) and (status == 403 or h.get("location") == "/review/login"), (
                path,
                status,
            )
        # The session still works: nothing above logged it out or labelled anything.
        assert call(base, "GET", "/review/history", headers={"Cookie": f"{COOKIE}={cookie}"})[0] == 200


# -- SQL injection strings through the console, and the preview's bucket allow-list ---------------


def test_injection_strings_are_data_and_previews_come_only_from_image_buckets(
    stack: StackSettings, topic: str
) -> None:
    run = uuid.uuid4().hex[:8]
    store = S3Store(stack.s3)
    png = random_png()
    store.put("images", f"tests/sec/{run}.png", png)
    store.put("models", f"tests/sec/{run}.png", png)  # the same bytes, in a bucket previews may not read
    ok_id, foreign_id = f"sec-{run}-ok", f"sec-{run}-models"
    refs = {ok_id: f"s3://images/tests/sec/{run}.png", foreign_id: f"s3://models/tests/sec/{run}.png"}
    note = "'); DROP TABLE feedback; --"
    with (
        moderator(stack) as (name, password),
        verdict_rows(stack, refs),
        running_intake(stack, intake_settings(feedback_topic=topic)) as base,
    ):
        assert login(base, "x' OR '1'='1", "' OR '1'='1")[0] == 401
        assert login(base, name, "' OR '1'='1")[0] == 401
        _s, cookie, token = login(base, name, password)
        auth = {"Cookie": f"{COOKIE}={cookie}"}
        injected = urllib.parse.quote("' OR 1=1 --")
        status, _h, page = call(
            base, "GET", f"/review?model_version={injected}&since={injected}", headers=auth
        )
        assert status == 200 and ok_id.encode() not in page
        status, _h, page = call(base, "GET", "/review?model_version=sec-v1", headers=auth)
        assert status == 200 and ok_id.encode() in page  # the control: the filter does find it

        status, _h, data = call(base, "GET", f"/review/img/{ok_id}", headers=auth)
        assert status == 200 and data.startswith(b"\x89PNG")
        assert call(base, "GET", f"/review/img/{foreign_id}", headers=auth)[0] == 404

        body, hdrs = form(label="fake", note=note, csrf=token)
        status, _h, _b = call(base, "POST", f"/review/item/{ok_id}/label", body, {**hdrs, **auth})
        assert status == 303
        with connect(stack.pg) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT note, label FROM feedback WHERE image_id = %s AND moderator = %s", (ok_id, name)
            )
            assert cur.fetchone() == (note, "fake")
            cur.execute("SELECT count(*) FROM feedback")  # the table is still there
            assert cur.fetchone()[0] >= 1
        conn.close()
    ((_p, _o, _k, value),) = read_all(stack, topic, expect=1)
    assert json.loads(value or b"{}")["note"] == note
