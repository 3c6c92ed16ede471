"""Message contracts: round trips, the rules they enforce, and the parser's failure mode."""

from __future__ import annotations

import base64
import contextlib
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.contracts import (
    Contract,
    DeadLetter,
    Explanation,
    Feedback,
    ImageSubmitted,
    ModelPublished,
    Verdict,
    decode,
    encode,
    parse_s3_ref,
    utcnow,
)
from ingest.errors import InvalidMessage, PermanentError

NOW = utcnow()
SAMPLES = [
    ImageSubmitted(image_id="a" * 64, ref="s3://images/" + "a" * 64, submitted_at=NOW, source="tenant-1"),
    ImageSubmitted(
        image_id="img-1", inline=base64.b64encode(b"\x89PNG").decode(), submitted_at=NOW, source="x"
    ),
    Verdict(
        image_id="img-1",
        model_version="v1",
        p_fake=0.9,
        label="fake",
        threshold=0.5,
        original_size=(32, 32),
        original_format="PNG",
        submitted_at=NOW,
        scored_at=NOW,
        timings_ms={"infer": 1.5},
    ),
    Explanation(image_id="img-1", model_version="v1", method="gradcam", keys={"map": "k"}, created_at=NOW),
    Feedback(image_id="img-1", label="real", moderator="alice", labelled_at=NOW),
    ModelPublished(
        version="v2", object_key="models/v2.safetensors", sha256="0" * 64, parent="v1", published_at=NOW
    ),
    DeadLetter(
        payload_b64="eA==",
        topic="images.submitted",
        partition=0,
        offset=3,
        error_class="InvalidMessage",
        reason="bad",
        attempts=1,
        service="scorer",
        failed_at=NOW,
    ),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_and_schema_version(message: Contract) -> None:
    data = encode(message)
    back = decode(type(message), data)
    assert back == message
    assert b'"schema_version":1' in data


def test_exactly_one_of_ref_and_inline() -> None:
    both = b'{"image_id":"x","ref":"s3://images/k","inline":"eA==","submitted_at":"2026-01-01T00:00:00Z","source":"s"}'
    neither = b'{"image_id":"x","submitted_at":"2026-01-01T00:00:00Z","source":"s"}'
    for raw in (both, neither):
        with pytest.raises(InvalidMessage, match="exactly one of ref or inline"):
            decode(ImageSubmitted, raw)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"not json", "invalid ImageSubmitted"),
        (
            b'{"image_id":"x","ref":"s3://images/k","submitted_at":"2026-01-01T00:00:00","source":"s"}',
            "submitted_at",
        ),
        (
            b'{"image_id":"x","ref":"file:///etc/passwd","submitted_at":"2026-01-01T00:00:00Z","source":"s"}',
            "ref",
        ),
        (
            b'{"image_id":"../x","ref":"s3://images/k","submitted_at":"2026-01-01T00:00:00Z","source":"s"}',
            "image_id",
        ),
        (b'{"image_id":"x","inline":"@@@","submitted_at":"2026-01-01T00:00:00Z","source":"s"}', "base64"),
        (
            b'{"schema_version":2,"image_id":"x","ref":"s3://images/k","submitted_at":"2026-01-01T00:00:00Z","source":"s"}',
            "schema_version",
        ),
        (
            b'{"image_id":"x","ref":"s3://images/k","submitted_at":"2026-01-01T00:00:00Z","source":"s","extra":1}',
            "extra",
        ),
    ],
)
def test_invalid_messages_give_readable_permanent_errors(raw: bytes, needle: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode(ImageSubmitted, raw)
    assert isinstance(info.value, PermanentError)
    assert needle in info.value.reason


def test_tombstone_is_invalid() -> None:
    with pytest.raises(InvalidMessage, match="tombstone"):
        decode(Feedback, None)


def test_metadata_is_bounded() -> None:
    with pytest.raises(ValueError, match="metadata"):
        ImageSubmitted(
            image_id="x",
            ref="s3://images/k",
            submitted_at=NOW,
            source="s",
            metadata={str(i): "v" for i in range(33)},
        )


@pytest.mark.parametrize(
    "ref", ["s3://images/../etc", "s3://images//k", "s3://images/a/./b", "s3://Im/k", "s3://images/"]
)
def test_s3_refs_cannot_escape_or_be_empty(ref: str) -> None:
    with pytest.raises(ValueError):
        parse_s3_ref(ref)


def test_s3_ref_parts() -> None:
    assert parse_s3_ref("s3://images/ab/cd.png") == ("images", "ab/cd.png")


def test_naive_datetime_rejected() -> None:
    with pytest.raises(ValueError):
        Feedback(image_id="x", label="fake", moderator="m", labelled_at=datetime(2026, 1, 1))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_decoder_only_ever_raises_invalid_message(data: bytes) -> None:
    for cls in (ImageSubmitted, Verdict, Feedback, ModelPublished):
        # Anything else escaping (TypeError, UnicodeDecodeError...) would crash a consumer.
        with contextlib.suppress(InvalidMessage):
            decode(cls, data)
