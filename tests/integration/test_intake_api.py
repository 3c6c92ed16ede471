"""The intake API against the real stack: upload -> 202 -> verdict through GET; idempotency; errors; links."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest

from ingest.contracts import ImageSubmitted, decode
from ingest.db import connect
from ingest.decode import DecodeLimits
from ingest.settings import StackSettings
from ingest.storage import S3Store
from tests.intake_helpers import (
    intake_settings,
    new_api_key,
    random_png,
    request,
    request_json,
    running_intake,
    upload,
)
from tests.kafka_helpers import end_offsets, read_all
from tests.known_helpers import picture, png_with_parameters
from tests.scorer_helpers import ScorerThread, make_weights, scorer_settings

pytestmark = pytest.mark.integration


def test_upload_is_scored_and_idempotent(
    stack: StackSettings, topic: str, group: str, tmp_path: Path
) -> None:
    key = new_api_key(stack)
    # Generation parameters in a PNG text chunk, as Automatic1111 writes them: the verdict says why.
    # new bytes every run: the upload must not be a duplicate of an earlier run's
    data = png_with_parameters(picture(uuid.uuid4().int % 10_000), seed=uuid.uuid4().int)
    with running_intake(stack, intake_settings(topic=topic)) as base:
        status, doc = upload(base, key, data)
        assert status == 202, doc
        image_id = doc["image_id"]
        assert image_id == hashlib.sha256(data).hexdigest() and doc["duplicate"] is False
        assert (doc["format"], doc["width"], doc["height"]) == ("PNG", 32, 32)

        status, again = upload(base, key, data, "another-name.png")
        assert status == 202 and again["image_id"] == image_id and again["duplicate"] is True
        assert sum(end_offsets(stack, topic).values()) == 1, "a re-upload must not publish again"
        ((_p, _o, k, v),) = read_all(stack, topic, expect=1)
        msg = decode(ImageSubmitted, v)
        assert (
            k == image_id.encode() and msg.ref == f"s3://images/{image_id}" and msg.source.startswith("test-")
        )

        status, before = request("GET", f"{base}/v1/images/{image_id}", headers={"X-API-Key": key})
        assert status == 200 and isinstance(before, dict) and before["status"] == "queued"

        weights = make_weights(tmp_path / "w.safetensors", "api-test-v1", seed=3)
        ScorerThread(stack, scorer_settings(topic, group, weights), max_records=1).join()

        status, after = request("GET", f"{base}/v1/images/{image_id}", headers={"X-API-Key": key})
        assert status == 200 and isinstance(after, dict), after
        assert after["status"] == "scored"
        (verdict,) = after["verdicts"]
        assert verdict["model_version"] == "api-test-v1" and 0.0 <= verdict["p_fake"] <= 1.0
        assert verdict["explanations"] == []  # no explainer ran: no links, no error
        assert verdict["label"] == "fake" and verdict["signals"]["decided_by"] == "provenance"
        assert len(verdict["signals"]["pdq"]["hash"]) == 64
        assert any(r.startswith("png_text: declared ai") for r in verdict["reasons"]), verdict["reasons"]


def test_refusals_have_json_bodies(stack: StackSettings, topic: str) -> None:
    key = new_api_key(stack)
    limits = DecodeLimits(max_bytes=50_000)
    with running_intake(stack, intake_settings(topic=topic, limits=limits)) as base:
        assert upload(base, None, random_png())[1]["error"]["code"] == "missing_api_key"
        status, doc = upload(base, "ck_nope_nope", random_png())
        assert (status, doc["error"]["code"]) == (401, "invalid_api_key")

        status, doc = upload(base, key, random_png((400, 400)))  # ~480 kB of noise: over the limit
        assert (status, doc["error"]["code"]) == (413, "too_large"), doc

        status, doc = upload(base, key, b"hello, I am text", "notes.png")
        assert (status, doc["error"]["code"]) == (415, "not_an_image"), doc

        png = random_png()
        status, doc = upload(base, key, png[: len(png) // 2])
        assert (status, doc["error"]["code"]) == (422, "truncated"), doc

        status, doc = request_json(
            "POST", f"{base}/v1/images", b"x", {"X-API-Key": key, "Content-Type": "text/plain"}
        )
        assert status == 415 and doc["error"]["code"] == "unsupported_media_type"

        ref = json.dumps({"ref": "s3://models/whatever"}).encode()
        headers = {"X-API-Key": key, "Content-Type": "application/json"}
        status, doc = request_json("POST", f"{base}/v1/images", ref, headers)
        assert status == 422 and doc["error"]["code"] == "bucket_not_allowed"
        status, doc = request_json("POST", f"{base}/v1/images", b'{"nope": 1}', headers)
        assert status == 422 and doc["error"]["code"] == "invalid_request"

        status, doc = request_json("GET", f"{base}/v1/images/{'0' * 64}", headers={"X-API-Key": key})
        assert status == 404 and doc["error"]["code"] == "not_found"
    assert sum(end_offsets(stack, topic).values()) == 0, "nothing refused may be published"


def test_reference_upload_health_metrics_docs(stack: StackSettings, topic: str) -> None:
    key = new_api_key(stack)
    data = random_png()
    with running_intake(stack, intake_settings(topic=topic)) as base:
        status, doc = request("GET", f"{base}/healthz")
        assert status == 200 and isinstance(doc, dict) and doc["status"] == "ok", doc
        status, spec = request("GET", f"{base}/openapi.json")
        assert status == 200 and isinstance(spec, dict) and "/v1/images" in spec["paths"]
        assert request("GET", f"{base}/docs")[0] == 200

        S3Store(stack.s3).put("images", "incoming/ref-test.png", data)
        body = json.dumps({"ref": "s3://images/incoming/ref-test.png", "metadata": {"k": "v"}}).encode()
        status, acc = request(
            "POST", f"{base}/v1/images", body, {"X-API-Key": key, "Content-Type": "application/json"}
        )
        assert status == 202 and isinstance(acc, dict) and acc["image_id"] == hashlib.sha256(data).hexdigest()

        status, text = request("GET", f"{base}/metrics")
        assert status == 200 and isinstance(text, bytes)
        assert b'intake_images_total{outcome="accepted"} 1.0' in text
        assert b'intake_http_requests_total{method="POST",route="/v1/images",status="202"} 1.0' in text


def test_presigned_link_downloads_the_overlay(stack: StackSettings) -> None:
    key = new_api_key(stack)
    image_id = f"test-{uuid.uuid4().hex}"
    overlay = random_png((32, 32))
    store = S3Store(stack.s3)
    keys = {"overlay": f"{image_id}/m1/gradcam/overlay.png", "map": f"{image_id}/m1/gradcam/map.png"}
    store.put("explanations", keys["overlay"], overlay, "image/png")
    with connect(stack.pg) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO verdicts (image_id, model_version, p_fake, label, threshold, scored_at)"
            " VALUES (%s, 'm1', 0.9, 'fake', 0.5, now())",
            (image_id,),
        )
        cur.execute(
            "INSERT INTO explanations (image_id, model_version, method, keys, evidence)"
            " VALUES (%s, 'm1', 'gradcam', %s, %s)",
            (image_id, json.dumps(keys), json.dumps({"mass_top10": 0.42})),
        )
    conn.close()
    try:
        with running_intake(stack, intake_settings(link_ttl_s=60)) as base:
            status, doc = request("GET", f"{base}/v1/images/{image_id}", headers={"X-API-Key": key})
            assert status == 200 and isinstance(doc, dict), doc
            (explanation,) = doc["verdicts"][0]["explanations"]
            assert explanation["evidence"] == {"mass_top10": 0.42}
            link = explanation["links"]["overlay"]
            assert "X-Amz-Expires=60" in link
            status, got = request("GET", link)
            assert status == 200 and got == overlay
    finally:
        with connect(stack.pg) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM explanations WHERE image_id = %s", (image_id,))
            cur.execute("DELETE FROM verdicts WHERE image_id = %s", (image_id,))
        conn.close()
