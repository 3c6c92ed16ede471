"""Bounded-time fuzzing of the two parsers that see untrusted bytes first.

* Message parser (``ingest.contracts.decode``) for every topic's contract: valid messages with fields
  replaced by arbitrary JSON, removed or added, and byte-level mutations of valid records. The only
  exception allowed is ``InvalidMessage`` (a ``PermanentError``); what parses must survive a round trip.
* Image decoder (``ingest.decode.decode_image``): image headers with arbitrary dimensions, depths and
  colour types, plus mutated valid images. The result is a ``PermanentError`` with a known code or an
  image within the pixel limit that converts to a 32x32 RGB array; memory stays bounded.

``tests/unit/test_contracts.py`` and ``tests/unit/test_decode.py`` fuzz with unstructured bytes; these
targets reach deeper. Each test runs ``CIFAKE_FUZZ_EXAMPLES`` examples (default 150: about 20-40 s for the
module on CI); set it higher for a longer local run. The deadline is a hang guard, generous for a loaded CI
machine.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import zlib
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
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
)
from ingest.decode import DECODE_ERROR_CODES, DecodeLimits, decode_image, to_rgb_array
from ingest.errors import InvalidMessage, PermanentError
from tests.imagegen import animated_gif, noise, png_chunk, save

# Headers past PIL's own threshold warn before our pixel check refuses them: expected here, not noise.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

EXAMPLES = int(os.environ.get("CIFAKE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

T = "2026-11-01T12:00:00Z"
VALID: dict[type[Contract], dict[str, Any]] = {
    ImageSubmitted: {"image_id": "a1", "ref": "s3://images/k/a.png", "submitted_at": T, "source": "t"},
    Verdict: {
        "image_id": "a1",
        "model_version": "v1",
        "p_fake": 0.7,
        "label": "fake",
        "threshold": 0.5,
        "original_size": [32, 32],
        "original_format": "PNG",
        "submitted_at": T,
        "scored_at": T,
    },
    Explanation: {
        "image_id": "a1",
        "model_version": "v1",
        "method": "gradcam",
        "keys": {"map": "a1/v1/gradcam/map.png"},
        "evidence": {"mass_top10": 0.4},
        "created_at": T,
    },
    Feedback: {"image_id": "a1", "label": "real", "moderator": "alice", "note": "ok", "labelled_at": T},
    ModelPublished: {
        "version": "v2",
        "object_key": "v2/abc.safetensors",
        "sha256": "0" * 64,
        "published_at": T,
    },
    DeadLetter: {
        "payload_b64": "e30=",
        "topic": "images.submitted",
        "partition": 0,
        "offset": 1,
        "error_class": "InvalidMessage",
        "reason": "bad",
        "attempts": 1,
        "service": "scorer",
        "failed_at": T,
    },
}
CONTRACTS = list(VALID)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(
        ["", "\x00", "\ud800", "s3://images/../x", "file:///etc/passwd", "1e999", T, "2026-13-45"]
    )
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
)


@st.composite
def mutated_message(draw: st.DrawFn) -> tuple[type[Contract], bytes]:
    cls = draw(st.sampled_from(CONTRACTS))
    doc = dict(VALID[cls])
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "drop", "add", "version"]))
        field = draw(st.sampled_from(sorted(doc) or ["x"]))
        if action == "replace":
            doc[field] = draw(json_values)
        elif action == "drop":
            doc.pop(field, None)
        elif action == "add":
            doc[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
        else:
            doc["schema_version"] = draw(json_values)
    return cls, json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")


def _check_message(cls: type[Contract], data: bytes) -> None:
    try:
        msg = decode(cls, data)
    except InvalidMessage as e:
        assert isinstance(e, PermanentError) and e.code == "invalid_message" and e.reason
        return
    assert decode(cls, encode(msg)) == msg  # what parses is what travels on
    if isinstance(msg, ImageSubmitted):
        if msg.inline is not None:
            msg.inline_bytes()
        elif msg.ref is not None and msg.ref.startswith("s3://"):
            parse_s3_ref(msg.ref)


@FUZZ
@given(mutated_message())
def test_fuzz_contract_fields(case: tuple[type[Contract], bytes]) -> None:
    _check_message(*case)


@FUZZ
@given(
    cls=st.sampled_from(CONTRACTS),
    edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.none() | st.integers(min_value=0),
)
def test_fuzz_contract_bytes(cls: type[Contract], edits: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(json.dumps(VALID[cls]).encode())
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        del data[cut % len(data) :]
    _check_message(cls, bytes(data))


# -- image decoder ------------------------------------------------------------------------------

LIMITS = DecodeLimits(max_pixels=1_000_000, max_bytes=1_000_000)


def _png(w: int, h: int, depth: int, color: int, body: bytes, compress: bool) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    idat = zlib.compress(body) if compress else body
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def _gif(w: int, h: int, body: bytes) -> bytes:
    frame = (
        b"\x2c" + struct.pack("<HHHH", 0, 0, w, h) + b"\x00\x02" + bytes([min(len(body), 255)]) + body[:255]
    )
    return b"GIF89a" + struct.pack("<HH", w, h) + b"\x00\x00\x00" + frame + b"\x00\x3b"


def _bmp(w: int, h: int, bits: int, body: bytes) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, bits, 0, len(body), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + len(body), 0, 0, 54) + info + body


def _jpeg(w: int, h: int, body: bytes) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, h, w, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + sof + body + b"\xff\xd9"


dims = st.integers(0, 70_000)


@st.composite
def image_header(draw: st.DrawFn) -> bytes:
    w, h, body = draw(dims), draw(dims), draw(st.binary(max_size=512))
    kind = draw(st.sampled_from(["png", "gif", "bmp", "jpeg"]))
    if kind == "png":
        depth, color = (
            draw(st.sampled_from([1, 2, 4, 8, 16, 3, 7])),
            draw(st.sampled_from([0, 2, 3, 4, 6, 5])),
        )
        return _png(w, h, depth, color, body, draw(st.booleans()))
    if kind == "gif":
        return _gif(min(w, 65535), min(h, 65535), body)
    if kind == "bmp":
        return _bmp(
            draw(st.integers(-70_000, 70_000)),
            draw(st.integers(-70_000, 70_000)),
            draw(st.sampled_from([1, 4, 8, 16, 24, 32, 0, 7])),
            body,
        )
    return _jpeg(min(w, 65535), min(h, 65535), body)


SEEDS = [
    save(noise(12, 10), "PNG"),
    save(noise(12, 10), "JPEG"),
    save(noise(12, 10), "WEBP"),
    save(noise(12, 10), "BMP"),
    save(noise(12, 10, "LA"), "PNG"),
    animated_gif(),
]


def _check_image(data: bytes) -> None:
    try:
        out = decode_image(data, LIMITS, target_size=32)
    except PermanentError as e:
        assert e.code in DECODE_ERROR_CODES, e.code
        return
    w, h = out.size
    assert 0 < w * h <= LIMITS.max_pixels
    assert out.image.size[0] * out.image.size[1] <= LIMITS.max_pixels
    arr = to_rgb_array(out, 32)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@FUZZ
@given(image_header())
def test_fuzz_image_headers(data: bytes) -> None:
    _check_image(data)


@FUZZ
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=8),
    cut=st.none() | st.integers(min_value=0),
    dims=st.none() | st.tuples(st.integers(0, 2**16 - 1), st.integers(0, 2**16 - 1)),
)
def test_fuzz_mutated_images(
    seed: int, edits: list[tuple[int, int]], cut: int | None, dims: tuple[int, int] | None
) -> None:
    data = bytearray(SEEDS[seed])
    if dims is not None and seed == 0:  # a valid PNG whose IHDR claims other dimensions (CRC fixed up)
        struct.pack_into(">II", data, 16, *dims)
        struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        del data[cut % len(data) :]
    _check_image(bytes(data))


def test_decoding_a_bomb_does_not_grow_memory() -> None:
    """A header that claims 65535 x 65535 must be refused before any pixel is allocated (16 GB as RGB)."""
    before = _peak_rss_mib()
    for w, h in ((65535, 65535), (1, 2**31 - 1), (40_000, 40_000)):
        _check_image(_png(w, h, 8, 2, b"\x00" * 1000, True))
        _check_image(_gif(min(w, 65535), min(h, 65535), b"\x00" * 10))
    assert _peak_rss_mib() - before < 256
