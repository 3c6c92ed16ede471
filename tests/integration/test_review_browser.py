"""The review console in headless Debian Chromium (Playwright): log in, label with the keyboard, history,
feedback in Kafka and PostgreSQL, CSRF refusal, a screenshot.

The test writes its own verdicts under a unique model version and filters the queue on it, so other
rows in the shared database do not matter. ``CIFAKE_README_SCREENSHOT=path`` also saves the item page
there (how docs/figures/review-console.png is made).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from ingest.accounts import set_moderator
from ingest.contracts import Feedback, decode
from ingest.db import connect
from ingest.settings import StackSettings
from ingest.storage import S3Store
from tests.intake_helpers import intake_settings, random_png, running_intake
from tests.kafka_helpers import read_all

pytestmark = pytest.mark.integration

# (p_fake, label): the queue must offer the uncertain one first, then by closeness to the threshold 0.5.
VERDICTS = [(0.97, "fake"), (0.55, "uncertain"), (0.30, "real"), (0.62, "fake")]
EXPECTED_ORDER = [1, 3, 2, 0]


@pytest.fixture
def seeded(stack: StackSettings) -> Iterator[tuple[str, list[str]]]:
    """A model version with 4 verdicts (images in S3, one with a Grad-CAM overlay); cleaned up afterwards."""
    version = f"ui-{uuid.uuid4().hex[:10]}"
    store = S3Store(stack.s3)
    ids = []
    with connect(stack.pg) as conn, conn.cursor() as cur:
        for p_fake, label in VERDICTS:
            image_id = f"uitest-{uuid.uuid4().hex}"
            ids.append(image_id)
            store.put("images", image_id, random_png(), "image/png")
            cur.execute(
                "INSERT INTO images (id, ref, source, submitted_at) VALUES (%s, %s, 'ui-test', now())",
                (image_id, f"s3://images/{image_id}"),
            )
            cur.execute(
                "INSERT INTO verdicts (image_id, model_version, p_fake, label, threshold, original_size,"
                " original_format, scored_at) VALUES (%s, %s, %s, %s, 0.5, '{32,32}', 'PNG', now())",
                (image_id, version, p_fake, label),
            )
        first = ids[EXPECTED_ORDER[0]]
        # The signals block a known-content match writes: the console must say why in words.
        signals = {
            "version": 1,
            "decided_by": "known_content",
            "known": {"entry_id": 7, "label": "fake", "distance": 12, "image_id": "img-x", "moderators": 2},
        }
        cur.execute("UPDATE verdicts SET signals = %s WHERE image_id = %s", (json.dumps(signals), first))
        keys = {"overlay": f"{first}/{version}/gradcam/overlay.png"}
        store.put("explanations", keys["overlay"], random_png(), "image/png")
        evidence = {"top_cells": [3, 7], "mass_in_top_10pct": 0.41, "faithfulness": {"deletion_auc": 0.23}}
        cur.execute(
            "INSERT INTO explanations (image_id, model_version, method, keys, evidence)"
            " VALUES (%s, %s, 'gradcam', %s, %s)",
            (first, version, json.dumps(keys), json.dumps(evidence)),
        )
    conn.close()
    yield version, ids
    with connect(stack.pg) as conn, conn.cursor() as cur:
        for table, column in (
            ("feedback", "image_id"),
            ("review_skips", "image_id"),
            ("explanations", "image_id"),
            ("verdicts", "image_id"),
            ("images", "id"),
        ):
            cur.execute(f"DELETE FROM {table} WHERE {column} = ANY(%s)", (ids,))
    conn.close()


def _current_id(page: Page) -> str:
    return page.url.split("/review/item/")[1].split("?")[0]


def test_label_three_items_with_the_keyboard(
    stack: StackSettings, topic: str, browser: Browser, seeded: tuple[str, list[str]], tmp_path: Path
) -> None:
    version, ids = seeded
    name, password = f"mod-{uuid.uuid4().hex[:8]}", "a-long-test-password"
    with connect(stack.pg) as conn:
        set_moderator(conn, name, password)
    conn.close()

    with running_intake(stack, intake_settings(feedback_topic=topic)) as base:
        page = browser.new_page(viewport={"width": 1200, "height": 760})
        page.goto(f"{base}/review")
        assert page.url.endswith("/review/login")
        page.fill("input[name=name]", name)
        page.fill("input[name=password]", "wrong password")
        page.click("button[type=submit]")
        assert "wrong password" in page.inner_text("main")
        page.fill("input[name=name]", name)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/review")

        page.goto(f"{base}/review?model_version={version}")
        page.click("#start")
        page.wait_for_url("**/review/item/**")
        assert _current_id(page) == ids[EXPECTED_ORDER[0]]
        assert page.inner_text("#model-version") == version
        assert "mass_in_top_10pct" in page.inner_text("main") and "0.41" in page.inner_text("main")
        why = page.inner_text("#reasons")
        assert "matches image img-x labelled fake by 2 moderators, PDQ distance 12" in why
        assert (
            page.eval_on_selector("img.pixelated", "e => getComputedStyle(e).imageRendering") == "pixelated"
        )
        page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(tmp_path / "review-item.png"), full_page=True)
        if os.environ.get("CIFAKE_README_SCREENSHOT"):
            shutil.copyfile(tmp_path / "review-item.png", os.environ["CIFAKE_README_SCREENSHOT"])

        labelled = []
        for keypress, expect_index in zip("frf", EXPECTED_ORDER[:3], strict=True):
            current = _current_id(page)
            assert current == ids[expect_index]
            labelled.append(current)
            page.keyboard.press(keypress)
            page.wait_for_url(_leaving(current))
        assert _current_id(page) == ids[EXPECTED_ORDER[3]]
        page.keyboard.press("s")  # SKIP: no feedback, and the (filtered) queue is empty now
        page.wait_for_url(f"{base}/review?**")
        assert "Nothing to review" in page.inner_text("main")

        page.goto(f"{base}/review/history")
        history = page.inner_text("#history")
        assert all(i[:16] in history for i in labelled)
        assert page.locator("#history tbody tr").count() == 3

        # A POST without the session's CSRF token is refused, even with the session cookie.
        refused = page.request.post(
            f"{base}/review/item/{ids[EXPECTED_ORDER[3]]}/label", form={"label": "fake"}
        )
        assert refused.status == 403
        forged = page.request.post(
            f"{base}/review/item/{ids[EXPECTED_ORDER[3]]}/label", form={"label": "fake", "csrf": "forged"}
        )
        assert forged.status == 403

        _assert_feedback(stack, topic, name, dict(zip(labelled, ["fake", "real", "fake"], strict=True)), 3)

        # Relabelling an image replaces the moderator's earlier label: still 3 rows, one more message.
        page.goto(f"{base}/review/item/{labelled[0]}")
        page.keyboard.press("r")
        page.wait_for_url(_leaving(labelled[0]))
    _assert_feedback(stack, topic, name, dict(zip(labelled, ["real", "real", "fake"], strict=True)), 4)
    with connect(stack.pg) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM moderators WHERE name = %s", (name,))
    conn.close()


def _leaving(image_id: str) -> Callable[[str], bool]:
    return lambda url: image_id not in url


def _assert_feedback(
    stack: StackSettings, topic: str, name: str, want: dict[str, str], messages: int
) -> None:
    with connect(stack.pg) as conn, conn.cursor() as cur:
        cur.execute("SELECT image_id, label FROM feedback WHERE moderator = %s", (name,))
        assert dict(cur.fetchall()) == want
    conn.close()
    got = [decode(Feedback, v) for *_rest, v in read_all(stack, topic, expect=messages)]
    assert len(got) == messages and all(m.moderator == name for m in got)
    latest = {m.image_id: m.label for m in sorted(got, key=lambda m: m.labelled_at)}
    assert latest == want
