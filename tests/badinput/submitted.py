"""Records on ``images.submitted``: malformed messages and hostile image bytes, each with its outcome.

``expect`` is ``"verdict"`` (scored) or the dead-letter reason code. Message cases build the raw record
value from the record's image id (the record key, which is how a dead letter is matched to its case even
when the payload's own id is unreadable). Image cases store bytes in the ``images`` bucket and reference
them, or send them inline. The scorer under test runs with ``MAX_BYTES`` as its byte limit.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from PIL import Image

from ingest.contracts import MAX_INLINE_BYTES
from tests import provenance_fixtures as prov
from tests import provenance_hostile as hostile
from tests.imagegen import (
    animated_gif,
    half,
    jpeg_with_exif,
    noise,
    palette_png_transparent,
    png16_grey,
    png16_rgba,
    png_bad_ihdr_crc,
    png_bomb,
    png_garbage_idat,
    png_header_only,
    save,
)

MAX_BYTES = 300_000  # a low limit keeps the "oversized file" case cheap
MISSING = "corpus/no-such-object"  # a key never written: a message that parses ends as missing_object


@dataclass(frozen=True)
class SubmittedCase:
    name: str
    family: Literal["message", "image"]
    expect: str  # "verdict" or the dead-letter reason code
    raw: Callable[[str], bytes | None] | None = None  # image id -> record value (None: a tombstone)
    image: Callable[[], bytes] | None = None  # stored in the images bucket and referenced
    inline: Callable[[], bytes] | None = None
    ref: str | None = None  # an explicit reference, sent through the contract


_DROP = object()


def _doc(key_id: str, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema_version": 1,
        "image_id": key_id,
        "ref": f"s3://images/{MISSING}",
        "submitted_at": "2026-01-01T00:00:00Z",
        "source": "corpus",
    }
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not _DROP}


def msg(**over: Any) -> Callable[[str], bytes]:
    """A JSON message that is valid except for ``over`` (``_DROP`` removes a field)."""
    return lambda image_id: json.dumps(_doc(image_id, **over)).encode()


def raw(value: bytes | None) -> Callable[[str], bytes | None]:
    return lambda _image_id: value


def _nested(depth: int) -> Callable[[str], bytes]:
    return lambda image_id: (
        json.dumps(_doc(image_id)).encode()[:-1] + b', "x": ' + b"[" * depth + b"]" * depth + b"}"
    )


MESSAGE_CASES = [
    SubmittedCase("invalid json", "message", "invalid_message", raw(b'{"image_id": "x", ')),
    SubmittedCase("missing fields", "message", "invalid_message", raw(b'{"image_id": "x", "source": "t"}')),
    SubmittedCase("unknown schema_version", "message", "invalid_message", msg(schema_version=9)),
    SubmittedCase("schema_version as a string", "message", "invalid_message", msg(schema_version="1")),
    SubmittedCase("image_id of the wrong type", "message", "invalid_message", msg(image_id=12345)),
    SubmittedCase("metadata of the wrong type", "message", "invalid_message", msg(metadata=["a", "b"])),
    SubmittedCase("metadata value not a string", "message", "invalid_message", msg(metadata={"k": 1})),
    SubmittedCase("unknown extra field", "message", "invalid_message", msg(priority="high")),
    SubmittedCase("both ref and inline", "message", "invalid_message", msg(inline="AAAA")),
    SubmittedCase("neither ref nor inline", "message", "invalid_message", msg(ref=_DROP)),
    SubmittedCase(
        "timestamp without a zone", "message", "invalid_message", msg(submitted_at="2026-01-01T00:00:00")
    ),
    SubmittedCase("timestamp not a date", "message", "invalid_message", msg(submitted_at="yesterday")),
    SubmittedCase("image_id with path steps", "message", "invalid_message", msg(image_id="../../etc/passwd")),
    SubmittedCase(
        "image_id with sql", "message", "invalid_message", msg(image_id="x'; DROP TABLE verdicts;--")
    ),
    SubmittedCase("image_id too long", "message", "invalid_message", msg(image_id="a" * 129)),
    SubmittedCase("empty source", "message", "invalid_message", msg(source="")),
    SubmittedCase(
        "too many metadata items",
        "message",
        "invalid_message",
        msg(metadata={str(i): "v" for i in range(33)}),
    ),
    SubmittedCase("metadata value too long", "message", "invalid_message", msg(metadata={"k": "v" * 1025})),
    SubmittedCase("inline not base64", "message", "invalid_message", msg(ref=_DROP, inline="not base64!")),
    SubmittedCase(
        "inline over the message limit",
        "message",
        "invalid_message",
        msg(ref=_DROP, inline="A" * (MAX_INLINE_BYTES * 4 // 3 + 8)),
    ),
    SubmittedCase(
        "oversized record (900 kB)", "message", "invalid_message", msg(metadata={"k": "v" * 900_000})
    ),
    SubmittedCase("tombstone", "message", "invalid_message", raw(None)),
    SubmittedCase("not utf-8", "message", "invalid_message", raw(b"\xff\xfe\x00{\x80\x81")),
    SubmittedCase("json array", "message", "invalid_message", raw(b'[{"image_id": "x"}]')),
    SubmittedCase("json null", "message", "invalid_message", raw(b"null")),
    SubmittedCase(
        "utf-8 byte order mark", "message", "invalid_message", lambda i: b"\xef\xbb\xbf" + msg()(i)
    ),
    SubmittedCase("deeply nested json", "message", "invalid_message", _nested(20_000)),
    SubmittedCase("nul in metadata", "message", "invalid_message", msg(metadata={"k": "a\x00b"})),
    SubmittedCase("nul in source", "message", "invalid_message", msg(source="bad\x00source")),
    SubmittedCase("file:// url", "message", "invalid_message", msg(ref="file:///etc/passwd")),
    SubmittedCase("ftp url", "message", "invalid_message", msg(ref="ftp://example.com/a.png")),
    SubmittedCase(
        "s3 key escaping its bucket", "message", "invalid_message", msg(ref="s3://images/../models/x")
    ),
    SubmittedCase(
        "link-local url", "message", "scheme_not_allowed", ref="http://169.254.169.254/latest/meta-data/"
    ),
    SubmittedCase("loopback url", "message", "scheme_not_allowed", ref="http://127.0.0.1:9101/metrics"),
    SubmittedCase("bucket not allowed", "message", "bucket_not_allowed", ref="s3://models/anything"),
    SubmittedCase("missing object", "message", "missing_object", ref=f"s3://images/{MISSING}"),
]


# -- image bytes --------------------------------------------------------------------------------


@cache
def zip_of(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, data)
    return buf.getvalue()


def one_px() -> bytes:
    return save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")


def jpeg_bytes(w: int = 32, h: int = 32, seed: int = 0) -> bytes:
    return save(noise(w, h, seed=seed), "JPEG", quality=80)


def gif_header_only(w: int, h: int) -> bytes:
    """A GIF whose screen and first frame claim ``w`` x ``h``, with a token of pixel data."""
    frame = b"\x2c" + struct.pack("<HHHH", 0, 0, w, h) + b"\x00\x02\x02\x44\x01\x00"
    return b"GIF89a" + struct.pack("<HH", w, h) + b"\x00\x00\x00" + frame + b"\x3b"


def bmp_huge_header() -> bytes:
    data = bytearray(save(noise(4, 4), "BMP"))
    struct.pack_into("<ii", data, 18, 100_000, 100_000)  # width, height in BITMAPINFOHEADER
    return bytes(data)


IMAGE_CASES = [
    SubmittedCase("valid jpeg", "image", "verdict", image=lambda: jpeg_bytes(seed=1)),
    SubmittedCase("inline png", "image", "verdict", inline=one_px),
    SubmittedCase("animated gif (first frame)", "image", "verdict", image=animated_gif),
    SubmittedCase(
        "animated png",
        "image",
        "verdict",
        image=lambda: save(noise(8, 8), "PNG", save_all=True, append_images=[noise(8, 8, seed=1)]),
    ),
    SubmittedCase("cmyk jpeg", "image", "verdict", image=lambda: save(noise(24, 24).convert("CMYK"), "JPEG")),
    SubmittedCase("16-bit png with alpha", "image", "verdict", image=png16_rgba),
    SubmittedCase("16-bit greyscale png", "image", "verdict", image=png16_grey),
    SubmittedCase("1x1 image", "image", "verdict", image=one_px),
    SubmittedCase("1x4000 sliver", "image", "verdict", image=lambda: save(noise(1, 4000), "PNG")),
    SubmittedCase("large photo-sized jpeg", "image", "verdict", image=lambda: jpeg_bytes(640, 480, seed=2)),
    SubmittedCase("palette png with transparency", "image", "verdict", image=palette_png_transparent),
    SubmittedCase("exif-rotated jpeg", "image", "verdict", image=jpeg_with_exif),
    SubmittedCase("webp", "image", "verdict", image=lambda: save(noise(33, 17), "WEBP")),
    SubmittedCase("bmp", "image", "verdict", image=lambda: save(noise(31, 7), "BMP")),
    SubmittedCase("grey+alpha png", "image", "verdict", image=lambda: save(noise(6, 6, "LA"), "PNG")),
    SubmittedCase(
        "polyglot jpeg+zip", "image", "verdict", image=lambda: jpeg_bytes(seed=3) + zip_of("x.txt", b"hi")
    ),
    SubmittedCase(
        "polyglot gif+zip (gifar)",
        "image",
        "verdict",
        image=lambda: save(noise(8, 8).convert("P"), "GIF") + zip_of("Main.class", b"\xca\xfe\xba\xbe"),
    ),
    SubmittedCase("zero bytes", "image", "empty", image=lambda: b""),
    SubmittedCase("text file", "image", "not_an_image", image=lambda: b"hello, I am not an image\n" * 20),
    SubmittedCase("inline text", "image", "not_an_image", inline=lambda: b"plain text, sent inline"),
    SubmittedCase(
        "svg",
        "image",
        "not_an_image",
        image=lambda: b'<svg xmlns="http://www.w3.org/2000/svg"><script/></svg>',
    ),
    SubmittedCase("html", "image", "not_an_image", image=lambda: b"<!DOCTYPE html><script>alert(1)</script>"),
    SubmittedCase(
        "pdf", "image", "not_an_image", image=lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + b"0" * 200
    ),
    SubmittedCase("zip archive of a png", "image", "not_an_image", image=lambda: zip_of("a.png", one_px())),
    SubmittedCase("truncated jpeg", "image", "truncated", image=lambda: jpeg_bytes(200, 200, seed=3)[:1500]),
    SubmittedCase("truncated png", "image", "truncated", image=lambda: half(save(noise(80, 64), "PNG"))),
    SubmittedCase(
        "jpeg start marker only", "image", "undecodable", image=lambda: b"\xff\xd8\xff\xe0" + bytes(10)
    ),
    SubmittedCase("png bomb 20000x20000", "image", "too_many_pixels", image=png_bomb),
    SubmittedCase(
        "png header 8000x6000", "image", "too_many_pixels", image=lambda: png_header_only(8000, 6000)
    ),
    SubmittedCase(
        "gif header 65535x65535", "image", "too_many_pixels", image=lambda: gif_header_only(65535, 65535)
    ),
    SubmittedCase("bmp header 100000x100000", "image", "too_many_pixels", image=bmp_huge_header),
    SubmittedCase(
        "oversized file", "image", "too_large", image=lambda: b"\xff\xd8\xff" + bytes(MAX_BYTES + 10)
    ),
    SubmittedCase("tiff", "image", "format_not_allowed", image=lambda: save(noise(16, 16), "TIFF")),
    SubmittedCase("ico", "image", "format_not_allowed", image=lambda: save(noise(16, 16), "ICO")),
    SubmittedCase("ppm", "image", "format_not_allowed", image=lambda: save(noise(8, 8), "PPM")),
    SubmittedCase("png with a corrupt header crc", "image", "undecodable", image=png_bad_ihdr_crc),
    SubmittedCase("png with garbage pixel data", "image", "undecodable", image=png_garbage_idat),
]

# Provenance metadata, declared or hostile: read before decoding, it must never cost the image its verdict.
# (A zTXt inflating past PIL's 1 MB MAX_TEXT_CHUNK, or a text chunk with a bad CRC, is refused by the
# decoder itself: those are decoder cases, not these.)
_AI = "trainedAlgorithmicMedia"
PROVENANCE_CASES = [
    SubmittedCase(
        "png with a1111 parameters",
        "image",
        "verdict",
        image=lambda: prov.png_with_chunks([prov.text_chunk("parameters", prov.A1111_PARAMETERS)]),
    ),
    SubmittedCase(
        "jpeg with iptc digital source type ai",
        "image",
        "verdict",
        image=lambda: prov.jpeg_with_xmp(prov.dst_resource(_AI)),
    ),
    SubmittedCase("c2pa-signed jpeg", "image", "verdict", image=lambda: prov.c2pa_fixture("jpeg")),
    SubmittedCase(
        "c2pa jpeg with pixels changed after signing",
        "image",
        "verdict",
        image=lambda: prov.tamper_pixels(prov.c2pa_fixture("jpeg")),
    ),
    SubmittedCase("malformed c2pa jumbf", "image", "verdict", image=hostile.malformed_jumbf_jpeg),
    SubmittedCase("xmp with a dtd (billion laughs)", "image", "verdict", image=hostile.billion_laughs_xmp),
    SubmittedCase("xmp nested 30000 deep", "image", "verdict", image=hostile.deep_xmp_png),
    SubmittedCase(
        "png ztxt bomb under pil's limit", "image", "verdict", image=lambda: hostile.text_bomb(900_000)
    ),
    SubmittedCase("png with 5000 text chunks", "image", "verdict", image=hostile.many_text_chunks),
    SubmittedCase("png text chunks of binary garbage", "image", "verdict", image=hostile.garbage_text_chunks),
]
IMAGE_CASES += PROVENANCE_CASES

CASES = MESSAGE_CASES + IMAGE_CASES
