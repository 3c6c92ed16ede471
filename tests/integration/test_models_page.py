"""The console's Models page against the real stack, in a private PostgreSQL schema (``iso``): key metrics as
columns, the p_fake histogram as an inline SVG, raw metrics in a <details>; then the same page in headless
Chromium (the CSP lets its stylesheet colour the bars; the raw metrics open with one click).
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from ingest.accounts import set_moderator
from ingest.db import connect
from ingest.settings import StackSettings
from tests.intake_helpers import intake_settings, running_intake
from tests.unit.test_models_view import (
    FEEDBACK_DATA,
    FINE_TUNED_METRICS,
    INITIAL_METRICS,
    parse_models_page,
    svg_bars,
)

pytestmark = pytest.mark.integration

PASSWORD = "a-long-test-password"
COUNTS = INITIAL_METRICS["val_pfake_hist"]["counts"]
# version, parent, status, trigger, metrics, data, reasons, created_at (newest first on the page)
MODELS: list[tuple[Any, ...]] = [
    (
        "cifake-fastnet24-v3",
        None,
        "champion",
        "initial",
        INITIAL_METRICS,
        {"source": "default.safetensors"},
        [],
        datetime(2025, 1, 2, 3, 4, tzinfo=UTC),
    ),
    (
        "ft-20250103-a1b2c3",
        "cifake-fastnet24-v3",
        "rejected",
        "feedback_count",
        FINE_TUNED_METRICS,
        FEEDBACK_DATA,
        ["base-validation drop +0.0010 is above epsilon +0.0005"],
        datetime(2025, 1, 3, 4, 5, tzinfo=UTC),
    ),
    ("bare-1", None, "retired", None, {}, {}, [], datetime(2025, 1, 1, 0, 0, tzinfo=UTC)),
]


@pytest.fixture
def console(iso: StackSettings) -> Iterator[tuple[str, str]]:
    """(base URL, moderator name): the API on the private schema, its registry holding ``MODELS``."""
    name = f"mod-{uuid.uuid4().hex[:8]}"
    with connect(iso.pg) as conn, conn.cursor() as cur:
        set_moderator(conn, name, PASSWORD)
        for version, parent, status, trigger, metrics, data, reasons, created in MODELS:
            cur.execute(
                "INSERT INTO models (version, parent, sha256, object_key, metrics, status, trigger, data,"
                " reasons, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    version,
                    parent,
                    "0" * 64,
                    f"{version}/x.safetensors",
                    json.dumps(metrics),
                    status,
                    trigger,
                    json.dumps(data),
                    json.dumps(reasons),
                    created,
                ),
            )
    conn.close()
    with running_intake(iso, intake_settings()) as base:
        yield base, name


def logged_in_get(base: str, name: str, path: str) -> tuple[str, dict[str, str]]:
    """GET ``path`` after logging in with a cookie jar (the login form's CSRF token included)."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(f"{base}/review/login", timeout=30) as r:
        m = re.search(r'name="csrf" value="([^"]+)"', r.read().decode())
    assert m
    body = urllib.parse.urlencode({"name": name, "password": PASSWORD, "csrf": m.group(1)}).encode()
    with opener.open(f"{base}/review/login", data=body, timeout=30) as r:
        assert r.url.endswith("/review"), r.url  # redirected to the queue: logged in
    with opener.open(f"{base}{path}", timeout=30) as r:
        assert r.status == 200
        return r.read().decode(), dict(r.headers.items())


def test_models_page_columns_histogram_and_raw_metrics(console: tuple[str, str]) -> None:
    base, name = console
    page, headers = logged_in_get(base, name, "/review/models")
    assert "style-src 'self'" in headers["content-security-policy"]
    rows = parse_models_page(page)
    assert list(rows) == ["ft-20250103-a1b2c3", "cifake-fastnet24-v3", "bare-1"]

    champ = rows["cifake-fastnet24-v3"]
    assert champ.cells["status"] == "champion" and champ.cells["when"] == "2025-01-02 03:04"
    assert champ.cells["trigger"] == "initial from default.safetensors"
    assert [champ.cells[c] for c in ("accuracy", "auroc", "ece", "gain", "drop")] == [
        "0.9812",
        "0.9984",
        "0.0028",
        "–",
        "–",
    ]
    svg, bars = svg_bars(champ.svg)
    assert svg.get("role") == "img" and "10,000 images in 10 bins" in (svg.get("aria-label") or "")
    assert len(bars) == len(COUNTS)
    height = float(svg.get("height") or 0) - 1  # one pixel below the bars for the axis
    for bar, count in zip(bars, COUNTS, strict=True):
        assert float(bar.get("height") or -1) == pytest.approx(height * count / max(COUNTS), abs=0.01)
    assert champ.summary == "raw metrics" and json.loads(champ.details[0]) == INITIAL_METRICS

    ft = rows["ft-20250103-a1b2c3"]
    assert ft.cells["status"].startswith("rejected base-validation drop")
    assert ft.cells["version"] == "ft-20250103-a1b2c3 from cifake-fastnet24-v3"
    assert ft.cells["trigger"] == "feedback count 200 moderator-labelled images, 40 held out"
    assert [ft.cells[c] for c in ("accuracy", "auroc", "ece", "gain", "drop", "histogram")] == [
        "0.9731",
        "–",
        "–",
        "+0.0250",
        "+0.0010",
        "–",
    ]
    assert json.loads(ft.details[0]) == FINE_TUNED_METRICS and json.loads(ft.details[1]) == FEEDBACK_DATA

    bare = rows["bare-1"]
    cols = ("trigger", "accuracy", "auroc", "ece", "gain", "drop", "histogram", "raw")
    assert all(bare.cells[c] == "–" for c in cols) and bare.details == []


def test_models_page_in_chromium(console: tuple[str, str], browser: Browser, tmp_path: Path) -> None:
    base, name = console
    page = browser.new_page(viewport={"width": 1400, "height": 700})
    console_messages: list[str] = []
    page.on("console", lambda m: console_messages.append(m.text))
    page.goto(f"{base}/review/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/review")
    page.click("nav >> text=Models")
    page.wait_for_url(f"{base}/review/models")

    row = page.locator('#models tr[data-version="cifake-fastnet24-v3"]')
    bars = row.locator("svg[role=img] rect.bar")
    assert bars.count() == len(COUNTS)
    # Drawn heights (the stylesheet, allowed by the CSP, colours them by side of 0.5).
    boxes = [bars.nth(i).bounding_box() for i in range(bars.count())]
    assert all(b is not None for b in boxes)
    tallest = max(b["height"] for b in boxes if b)
    for b, count in zip(boxes, COUNTS, strict=True):
        assert b is not None and b["height"] == pytest.approx(tallest * count / max(COUNTS), abs=0.1)
    fills = [bars.nth(i).evaluate("e => getComputedStyle(e).fill") for i in (0, 9)]
    assert fills == ["rgb(46, 139, 71)", "rgb(192, 57, 43)"]

    pre = row.locator("details pre.metrics")
    assert not pre.is_visible()
    row.locator("details summary").click()
    assert pre.is_visible() and json.loads(pre.inner_text()) == INITIAL_METRICS
    page.screenshot(path=str(tmp_path / "models.png"), full_page=True)
    assert not [m for m in console_messages if "Content Security Policy" in m], console_messages
