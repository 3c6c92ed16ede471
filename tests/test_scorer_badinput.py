"""Bad input through the streaming scorer: each case ends as a verdict or a dead letter with its reason code,
and the scorer keeps consuming afterwards."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from ingest.contracts import DeadLetter, ImageSubmitted, decode, encode, utcnow
from ingest.settings import StackSettings
from ingest.storage import S3Store
from scorer.service import run_scorer
from tests.imagegen import animated_gif, noise, png16_rgba, png_bomb, save
from tests.kafka_helpers import produce, read_all
from tests.scorer_helpers import jpeg, make_weights, scorer_settings, verdict_rows

pytestmark = pytest.mark.integration

MAX_BYTES = 300_000  # a low limit keeps the "oversized file" case cheap


@dataclass(frozen=True)
class Case:
    name: str
    expect: str  # "verdict" or the dead-letter reason code
    payload: bytes | None = None  # raw Kafka value (malformed messages)
    image: bytes | None = None  # stored in the images bucket and referenced
    ref: str | None = None  # explicit reference
    inline: bytes | None = None


def _cmyk_jpeg() -> bytes:
    return save(noise(24, 24).convert("CMYK"), "JPEG")


def _tiff() -> bytes:
    return save(noise(16, 16), "TIFF")


def _one_px() -> bytes:
    return save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")


CASES = [
    Case("valid jpeg", "verdict", image=jpeg(1)),
    Case("inline png", "verdict", inline=_one_px()),
    Case("animated gif (first frame)", "verdict", image=animated_gif()),
    Case("cmyk jpeg", "verdict", image=_cmyk_jpeg()),
    Case("16-bit png with alpha", "verdict", image=png16_rgba()),
    Case("1x1 image", "verdict", image=_one_px()),
    Case("large photo-sized jpeg", "verdict", image=jpeg(2, size=(640, 480))),
    Case("missing object", "missing_object", ref="s3://images/does-not-exist-" + uuid.uuid4().hex),
    Case("bucket not allowed", "bucket_not_allowed", ref="s3://models/anything"),
    Case("file:// url", "invalid_message", ref="file:///etc/passwd"),
    Case("link-local url", "scheme_not_allowed", ref="http://169.254.169.254/latest/meta-data/"),
    Case("zero bytes", "empty", image=b""),
    Case("text file", "not_an_image", image=b"hello, I am not an image\n" * 20),
    Case("truncated jpeg", "truncated", image=jpeg(3, size=(200, 200))[:1500]),
    Case("png bomb 20000x20000", "too_many_pixels", image=png_bomb()),
    Case("oversized file", "too_large", image=b"\xff\xd8\xff" + bytes(MAX_BYTES + 10)),
    Case("invalid json", "invalid_message", payload=b'{"image_id": "x", '),
    Case("missing fields", "invalid_message", payload=b'{"image_id": "x", "source": "t"}'),
    Case(
        "unknown schema_version",
        "invalid_message",
        payload=b'{"schema_version": 9, "image_id": "x", "ref": "s3://images/k",'
        b' "submitted_at": "2026-01-01T00:00:00Z", "source": "t"}',
    ),
    Case("unsupported format (tiff)", "format_not_allowed", image=_tiff()),
]


def _record(stack: StackSettings, case: Case, image_id: str) -> bytes:
    if case.payload is not None:
        return case.payload
    ref, inline = case.ref, None
    if case.image is not None:
        key = f"tests/{hashlib.sha256(case.image).hexdigest()}"
        S3Store(stack.s3).put("images", key, case.image)
        ref = f"s3://images/{key}"
    if case.inline is not None:
        inline = base64.b64encode(case.inline).decode()
    if ref is not None and not ref.startswith(("s3://", "http://", "https://")):
        # The contract itself refuses such a reference: send the raw JSON a careless client would.
        raw = {"image_id": image_id, "ref": ref, "submitted_at": utcnow().isoformat(), "source": "t"}
        return json.dumps(raw).encode()
    msg = ImageSubmitted(image_id=image_id, ref=ref, inline=inline, submitted_at=utcnow(), source="test")
    return encode(msg)


def test_table_covers_at_least_fifteen_kinds() -> None:
    assert len(CASES) >= 15
    assert {c.expect for c in CASES} >= {"verdict", "invalid_message", "too_many_pixels", "truncated"}


def test_bad_input_table_through_the_streaming_scorer(
    stack: StackSettings, topic: str, group: str, tmp_path: Path
) -> None:
    weights = make_weights(tmp_path / "w.safetensors", f"test-bad-{uuid.uuid4().hex[:6]}", seed=3)
    run = uuid.uuid4().hex[:8]
    ids = [f"bad-{run}-{i}" for i in range(len(CASES))]
    produce(stack, topic, [(i.encode(), _record(stack, c, i)) for i, c in zip(ids, CASES, strict=True)])
    # One good record after all the bad ones: the scorer must still be consuming.
    tail_id = f"bad-{run}-tail"
    tail_key = f"tests/{hashlib.sha256(jpeg(99)).hexdigest()}"
    S3Store(stack.s3).put("images", tail_key, jpeg(99))
    tail = ImageSubmitted(image_id=tail_id, ref=f"s3://images/{tail_key}", submitted_at=utcnow(), source="t")
    produce(stack, topic, [(tail_id.encode(), encode(tail))])

    settings = scorer_settings(
        topic, group, weights, limits={"max_bytes": MAX_BYTES}, fetch={"max_bytes": MAX_BYTES}
    )
    stats = run_scorer(stack, settings, max_records=len(CASES) + 1, idle_timeout=60)

    expected_dead = [c for c in CASES if c.expect != "verdict"]
    letters = [decode(DeadLetter, v) for *_, v in read_all(stack, topic + ".dlq", expect=len(expected_dead))]
    by_key = {base64.b64decode(dl.key_b64 or "").decode(): dl for dl in letters}
    verdicts = {r[0] for r in verdict_rows(stack, [*ids, tail_id])}
    outcomes = {}
    for image_id, case in zip(ids, CASES, strict=True):
        if image_id in verdicts:
            outcomes[case.name] = "verdict"
        elif image_id in by_key:
            outcomes[case.name] = by_key[image_id].code
        else:
            outcomes[case.name] = "lost"
    assert outcomes == {c.name: c.expect for c in CASES}
    assert tail_id in verdicts
    assert stats.dead_lettered == len(expected_dead)
    for dl in letters:  # every dead letter carries the original payload and a readable reason
        assert dl.payload() and dl.reason and dl.topic == topic

    inline_id = ids[[c.name for c in CASES].index("inline png")]
    stored = S3Store(stack.s3).get("images", hashlib.sha256(_one_px()).hexdigest(), 10_000)
    assert Image.open(io.BytesIO(stored)).size == (1, 1), inline_id
