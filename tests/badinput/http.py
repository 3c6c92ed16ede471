"""Requests to the intake API and archives given to ``ingest submit``, each with its outcome.

HTTP cases expect a status and, for refusals, the ``error.code`` of the JSON body. ``auth`` is ``"valid"``
(a fresh key), ``"none"``, ``"revoked"`` or a literal header value. The intake under test runs with
``MAX_BYTES`` as its byte limit. Archive cases expect, per archive member, what ``submit`` did with it.
"""

from __future__ import annotations

import io
import json
import struct
import uuid
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.imagegen import half, noise, png_bomb, save

MAX_BYTES = 300_000

Body = tuple[bytes, str | None]  # (body, Content-Type)


@dataclass(frozen=True)
class HttpCase:
    name: str
    status: int
    code: str | None  # error.code of the JSON body; None when the request succeeds
    body: Callable[[], Body] | None = None
    method: str = "POST"
    path: str = "/v1/images"
    auth: str = "valid"
    chunked: bool = False  # send the body without a Content-Length


def png(seed: int = 0, size: tuple[int, int] = (32, 32)) -> bytes:
    return save(noise(*size, seed=seed), "PNG")


def fresh_png() -> bytes:
    """An image no earlier run has submitted (accepted cases must not come back as duplicates)."""
    return png(uuid.uuid4().int % 2**32)


def form(files: list[tuple[str, str, bytes]], fields: dict[str, str] | None = None) -> Callable[[], Body]:
    """multipart/form-data with ``files`` as (field, filename, bytes) and text ``fields``."""

    def build() -> Body:
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in (fields or {}).items()
        ]
        for field, filename, data in files:
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            )
            parts.append(head.encode() + data + b"\r\n")
        return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"

    return build


def upload(data: Callable[[], bytes], filename: str = "x.png") -> Callable[[], Body]:
    return lambda: form([("file", filename, data())])()


def body(data: bytes, ctype: str | None) -> Callable[[], Body]:
    return lambda: (data, ctype)


def as_json(doc: Any) -> Callable[[], Body]:
    return body(json.dumps(doc).encode(), "application/json")


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def zip_bomb() -> bytes:
    """One member that inflates 1000-fold (50 MB of zeros in ~50 kB)."""
    return zip_bytes({"bomb.png": bytes(50_000_000)})


def zip_lying_size(declared: int = 100) -> bytes:
    """A member of 5 MB whose headers claim ``declared`` bytes: the size check alone would let it in."""
    data = bytearray(zip_bytes({"liar.png": bytes(5_000_000)}))
    struct.pack_into("<I", data, data.index(b"PK\x03\x04") + 22, declared)
    struct.pack_into("<I", data, data.index(b"PK\x01\x02") + 24, declared)
    return bytes(data)


def zip_flagged(flag: int = 0, method: int | None = None) -> bytes:
    """A zip whose member claims to be encrypted (``flag`` bit 0) or to use an unknown ``method``."""
    data = bytearray(zip_bytes({"odd.png": png(5)}))
    lh, cd = data.index(b"PK\x03\x04"), data.index(b"PK\x01\x02")
    for off, flag_at, method_at in ((lh, 6, 8), (cd, 8, 10)):
        struct.pack_into("<H", data, off + flag_at, struct.unpack_from("<H", data, off + flag_at)[0] | flag)
        if method is not None:
            struct.pack_into("<H", data, off + method_at, method)
    return bytes(data)


def deflate_garbage() -> bytes:
    """A member whose compressed bytes are not a deflate stream (CRC and sizes made to match the header)."""
    good = zip_bytes({"junk.png": zlib.compress(b"x" * 1000)[2:-4]})
    data = bytearray(good)
    lh = data.index(b"PK\x03\x04")
    name_len, extra_len = struct.unpack_from("<HH", data, lh + 26)
    start = lh + 30 + name_len + extra_len
    size = struct.unpack_from("<I", data, lh + 18)[0]
    data[start : start + size] = bytes([0xFF]) * size  # 0xFF: reserved block type, an invalid stream
    return bytes(data)


HTTP_CASES = [
    HttpCase("no api key", 401, "missing_api_key", upload(png), auth="none"),
    HttpCase("unknown api key", 401, "invalid_api_key", upload(png), auth="ck_0123456789ab_nope"),
    HttpCase("key without the prefix", 401, "invalid_api_key", upload(png), auth="Bearer abc"),
    HttpCase("revoked api key", 401, "invalid_api_key", upload(png), auth="revoked"),
    HttpCase("10 kB api key", 401, "invalid_api_key", upload(png), auth="ck_" + "a" * 10_000),
    HttpCase("sql in the api key", 401, "invalid_api_key", upload(png), auth="ck_x' OR '1'='1"),
    HttpCase("text/plain body", 415, "unsupported_media_type", body(b"x", "text/plain")),
    HttpCase("no content type", 415, "unsupported_media_type", body(png(), None)),
    HttpCase(
        "html form encoding", 415, "unsupported_media_type", body(b"a=b", "application/x-www-form-urlencoded")
    ),
    HttpCase("json that does not parse", 422, "invalid_request", body(b'{"ref": ', "application/json")),
    HttpCase("json without ref", 422, "invalid_request", as_json({"nope": 1})),
    HttpCase("json with an extra field", 422, "invalid_request", as_json({"ref": "s3://images/a", "x": 1})),
    HttpCase("json array", 422, "invalid_request", as_json(["s3://images/a"])),
    HttpCase(
        "ref in a bucket not allowed", 422, "bucket_not_allowed", as_json({"ref": "s3://models/whatever"})
    ),
    HttpCase("ref escaping its bucket", 422, "invalid_ref", as_json({"ref": "s3://images/../models/x"})),
    HttpCase("file:// ref", 422, "invalid_ref", as_json({"ref": "file:///etc/passwd"})),
    HttpCase("link-local ref", 422, "invalid_ref", as_json({"ref": "http://169.254.169.254/latest/"})),
    HttpCase("missing object ref", 422, "missing_object", as_json({"ref": "s3://images/corpus/none"})),
    HttpCase(
        "ref metadata too large",
        422,
        "invalid_request",
        as_json({"ref": "s3://images/a", "metadata": {"k": "v" * 2000}}),
    ),
    HttpCase("multipart without a file", 422, "missing_file", form([], {"metadata": "{}"})),
    HttpCase("file under another field name", 422, "missing_file", form([("upload", "x.png", png())])),
    HttpCase("two files", 400, "error", form([("file", "a.png", png(1)), ("file", "b.png", png(2))])),
    HttpCase(
        "metadata not json", 422, "invalid_metadata", form([("file", "x.png", png(3))], {"metadata": "{nope"})
    ),
    HttpCase(
        "metadata values not strings",
        422,
        "invalid_metadata",
        form([("file", "x.png", png(3))], {"metadata": '{"k": 1}'}),
    ),
    HttpCase(
        "metadata with nul",
        422,
        "invalid_metadata",
        form([("file", "x.png", png(3))], {"metadata": '{"k": "\\u0000"}'}),
    ),
    HttpCase("multipart without a boundary", 400, "error", body(b"--x\r\n", "multipart/form-data")),
    HttpCase(
        "oversized upload (declared)",
        413,
        "too_large",
        upload(lambda: b"\x89PNG" + bytes(MAX_BYTES + 70_000)),
    ),
    HttpCase(
        "oversized upload (chunked)",
        413,
        "too_large",
        body(bytes(MAX_BYTES + 70_000), "image/png"),
        chunked=True,
    ),
    HttpCase("oversized file in a small form", 413, "too_large", upload(lambda: bytes(MAX_BYTES + 10))),
    HttpCase("empty image body", 415, "empty", body(b"", "image/png")),
    HttpCase("text named .png", 415, "not_an_image", upload(lambda: b"hello, I am text", "notes.png")),
    HttpCase("zip archive", 415, "not_an_image", upload(lambda: zip_bytes({"a.png": png()}), "a.zip")),
    HttpCase("zip bomb", 415, "not_an_image", upload(zip_bomb, "bomb.zip")),
    HttpCase("truncated png", 422, "truncated", upload(lambda: half(png(4)))),
    HttpCase("png bomb", 413, "too_many_pixels", upload(png_bomb)),
    HttpCase("tiff", 415, "format_not_allowed", body(save(noise(16, 16), "TIFF"), "image/tiff")),
    HttpCase("path traversal in the file name", 202, None, upload(fresh_png, "../../../etc/passwd.png")),
    HttpCase("raw image/png body", 202, None, lambda: (fresh_png(), "image/png")),
    HttpCase(
        "status of an id with sql", 422, "invalid_request", method="GET", path="/v1/images/x'%20OR%20'1'='1"
    ),
    HttpCase(
        "status of an id with path steps", 404, "not_found", method="GET", path="/v1/images/..%2F..%2Fetc"
    ),
    HttpCase("status of an unknown id", 404, "not_found", method="GET", path="/v1/images/" + "0" * 64),
    HttpCase(
        "status without a key", 401, "missing_api_key", method="GET", path="/v1/images/abc", auth="none"
    ),
    HttpCase("delete an image", 405, "error", method="DELETE", path="/v1/images/abc"),
    HttpCase("unknown route", 404, "not_found", method="GET", path="/v1/../../etc/passwd"),
]


# -- archives for ``ingest submit`` ------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveCase:
    name: str
    archive: Callable[[], bytes]
    expect: dict[str, str]  # member -> submitted | refused:<code> | unreadable | skipped; "" = the archive
    problem: str = ""  # a line the run must print for the archive as a whole


ARCHIVE_CASES = [
    ArchiveCase("not a zip", lambda: b"PK\x03\x04 not really a zip", {}, "not a readable zip archive"),
    ArchiveCase("zip bomb", zip_bomb, {"bomb.png": "skipped"}, "bytes uncompressed (limit"),
    ArchiveCase("member lying about its size", zip_lying_size, {"liar.png": "unreadable"}),
    ArchiveCase("encrypted member", lambda: zip_flagged(flag=1), {"odd.png": "unreadable"}),
    ArchiveCase("unknown compression method", lambda: zip_flagged(method=99), {"odd.png": "unreadable"}),
    ArchiveCase("corrupt deflate stream", deflate_garbage, {"junk.png": "unreadable"}),
    ArchiveCase(
        "path traversal in member names",
        lambda: zip_bytes({"../../../../tmp/evil.png": fresh_png(), "/etc/abs.png": fresh_png()}),
        {"../../../../tmp/evil.png": "submitted", "/etc/abs.png": "submitted"},
    ),
    ArchiveCase(
        "text named .jpg", lambda: zip_bytes({"liar.jpg": b"text"}), {"liar.jpg": "refused:not_an_image"}
    ),
    ArchiveCase("nothing but text", lambda: zip_bytes({"a.txt": b"x"}), {}, "no images found in the archive"),
]
