"""Hostile metadata for the provenance reader: bombs, garbage, oversized boxes, structure that lies.

Built in memory from the container helpers of ``tests.provenance_fixtures``; each must give a result with
``unreadable``/``invalid`` findings, never an exception, and its image must still be scored.
"""

from __future__ import annotations

import struct
import zlib

from tests.imagegen import png_chunk
from tests.provenance_fixtures import (
    A1111_PARAMETERS,
    dst_attribute,
    itxt_chunk,
    jpeg_segment,
    jpeg_with_segments,
    jpeg_with_xmp,
    png_with_chunks,
    text_chunk,
)


def text_bomb(inflated: int = 50_000_000) -> bytes:
    """A zTXt chunk whose ~``inflated / 1000`` compressed bytes inflate to ``inflated`` zeros."""
    comp = zlib.compressobj(9)
    sizes = [1 << 20] * (inflated >> 20) + [inflated % (1 << 20)]
    body = b"".join(comp.compress(bytes(n)) for n in sizes) + comp.flush()
    return png_with_chunks([png_chunk(b"zTXt", b"prompt\x00\x00" + body)])


def many_text_chunks(n: int = 5000) -> bytes:
    return png_with_chunks([text_chunk(f"k{i}", "v") for i in range(n)])


def huge_xmp_png(size: int = 4_000_000) -> bytes:
    """A PNG iTXt XMP packet of ``size`` bytes (padding whitespace, as XMP writers add)."""
    packet = dst_attribute("trainedAlgorithmicMedia").decode()
    return png_with_chunks([itxt_chunk("XML:com.adobe.xmp", packet + " " * (size - len(packet)))])


def billion_laughs_xmp() -> bytes:
    lol = '<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8)
    )
    return jpeg_with_xmp((lol + ']><x:xmpmeta xmlns:x="adobe:ns:meta/">&i;</x:xmpmeta>').encode())


def deep_xmp_png(depth: int = 30_000) -> bytes:
    return png_with_chunks([itxt_chunk("XML:com.adobe.xmp", "<a>" * depth + "</a>" * depth)])


def garbage_text_chunks() -> bytes:
    junk = bytes(range(256)) * 8
    return png_with_chunks(
        [
            png_chunk(b"tEXt", junk),
            png_chunk(b"zTXt", b"prompt\x00\x00" + junk),
            png_chunk(b"iTXt", b"parameters\x00\x01\x00" + junk),
            png_chunk(b"iTXt", b"workflow"),
            png_chunk(b"tEXt", b"parameters\x00" + b"\xff\xfe" * 100),
        ]
    )


def png_bad_text_crc() -> bytes:
    chunk = bytearray(text_chunk("parameters", A1111_PARAMETERS))
    chunk[-1] ^= 0xFF
    return png_with_chunks([bytes(chunk)])


def png_length_past_end() -> bytes:
    chunk = bytearray(text_chunk("parameters", A1111_PARAMETERS))
    struct.pack_into(">I", chunk, 0, 0x7FFFFFF0)
    return png_with_chunks([bytes(chunk)])


def malformed_jumbf_jpeg() -> bytes:
    """An APP11 JUMBF segment labelled c2pa whose boxes are garbage."""
    jumd = b"\x00\x00\x00\x1ejumd" + bytes(16) + b"\x03c2pa\x00"
    box = struct.pack(">I", 0xFFFF) + b"jumb" + jumd + bytes(range(200))
    return jpeg_with_segments([jpeg_segment(0xEB, b"JP\x02\x11\x00\x00\x00\x01" + box)])


def oversized_jumbf_jpeg(segments: int = 40) -> bytes:
    """A C2PA store spread over ``segments`` full APP11 segments (~2.6 MB at 40), over the default limit."""
    first = b"JP\x02\x11\x00\x00\x00\x01\x00\x00\x00\x10jumb\x00\x00\x00\x1ejumdc2pa"
    pad = bytes(65_000)
    return jpeg_with_segments(
        [jpeg_segment(0xEB, first + pad)]
        + [jpeg_segment(0xEB, b"JP\x02\x11" + struct.pack(">I", i + 2) + pad) for i in range(segments - 1)]
    )
