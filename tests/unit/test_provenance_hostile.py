"""Hostile metadata (``tests/provenance_hostile.py``): each is reported ``unreadable``/``invalid`` with a
reason, within the reader's limits (checked before anything is parsed or inflated) and bounded memory."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import pytest

from ingest.provenance import ProvenanceSettings, read_provenance
from tests import provenance_fixtures as fx
from tests import provenance_hostile as hx
from tests.imagegen import png_chunk
from tests.provenance_checks import has, internal_errors, no_c2pa_calls, summary, trusting


def _cut_inside(data: bytes, needle: bytes) -> bytes:
    return data[: data.index(needle) + len(needle) + 5]


HOSTILE: dict[str, tuple[Callable[[], bytes], str, str, str]] = {
    # name: (builder, kind, status, piece of the detail)
    "ztxt bomb (50 MB of zeros)": (hx.text_bomb, "png_text", "unreadable", "inflates past the 65536-byte"),
    "5,000 text chunks": (hx.many_text_chunks, "png_text", "unreadable", "more than 4096 chunks"),
    "text chunks beyond the text limit": (hx.many_text_chunks, "png_text", "unreadable", "over 64 text"),
    "4 MB XMP in iTXt": (hx.huge_xmp_png, "png_text", "unreadable", "exceeds the 262144-byte limit"),
    "xmp with a DTD": (hx.billion_laughs_xmp, "iptc_xmp", "unreadable", "DTDForbidden"),
    "xmp not well-formed": (
        lambda: fx.jpeg_with_xmp(b"<x:xmpmeta><unclosed></x:xmpmeta>"),
        "iptc_xmp",
        "unreadable",
        "not well-formed",
    ),
    "binary garbage in text chunks": (hx.garbage_text_chunks, "png_text", "unreadable", "decompressing"),
    "itxt header cut short": (hx.garbage_text_chunks, "png_text", "unreadable", "header is truncated"),
    "text chunk with a bad crc": (hx.png_bad_text_crc, "png_text", "unreadable", "bad CRC"),
    "chunk length past the end": (hx.png_length_past_end, "png_text", "unreadable", "past the end"),
    "png cut inside a text chunk": (
        lambda: _cut_inside(fx.png_with_chunks([fx.text_chunk("parameters", fx.A1111_PARAMETERS)]), b"tEXt"),
        "png_text",
        "unreadable",
        "past the end",
    ),
    "jpeg cut inside its xmp": (
        lambda: _cut_inside(fx.jpeg_with_xmp(fx.dst_attribute("trainedAlgorithmicMedia")), b"xap/1.0/"),
        "iptc_xmp",
        "unreadable",
        "runs past the end",
    ),
    "jpeg cut inside its c2pa store": (
        lambda: _cut_inside(fx.c2pa_fixture("jpeg"), b"jumb"),
        "c2pa",
        "unreadable",
        "runs past the end",
    ),
    "webp cut inside its xmp": (
        lambda: _cut_inside(fx.webp_with(xmp=fx.dst_attribute("trainedAlgorithmicMedia")), b"XMP "),
        "iptc_xmp",
        "unreadable",
        "runs past the end",
    ),
    "malformed jumbf": (hx.malformed_jumbf_jpeg, "c2pa", "unreadable", "C2PA manifest unreadable"),
    "oversized jumbf": (hx.oversized_jumbf_jpeg, "c2pa", "unreadable", "manifest store over 2097152 bytes"),
    "exif without a tiff header": (
        lambda: fx.jpeg_with_segments([fx.jpeg_segment(0xE1, b"Exif\x00\x00garbage")]),
        "exif_software",
        "unreadable",
        "no TIFF header",
    ),
    "oversized exif in png": (
        lambda: fx.png_with_chunks([png_chunk(b"eXIf", b"MM\x00*" + bytes(70_000))]),
        "exif_software",
        "unreadable",
        "exceeds the 65536-byte limit",
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_metadata_is_reported_unreadable_with_a_reason(name: str) -> None:
    make, kind, status, part = HOSTILE[name]
    with internal_errors() as errors:
        p = read_provenance(make(), trusting())
    assert has(p, kind, status, part), summary(p)
    assert not p.declared_ai and not errors


def test_a_bad_crc_hides_the_chunk_it_protects() -> None:
    """A text chunk that fails its CRC is not believed, even when it reads as generation parameters."""
    p = read_provenance(hx.png_bad_text_crc(), trusting())
    assert not p.declared_ai and not has(p, "png_text", "declared_ai", "")


def test_deeply_nested_xmp_is_parsed_without_harm() -> None:
    with internal_errors() as errors:
        p = read_provenance(hx.deep_xmp_png(), trusting())
    assert not p.declared_ai and not errors


def test_an_oversized_store_is_never_handed_to_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    small = ProvenanceSettings(max_c2pa_bytes=1000)
    with no_c2pa_calls(monkeypatch):
        p = read_provenance(fx.c2pa_fixture("jpeg"), small)
    assert has(p, "c2pa", "unreadable", "manifest store over 1000 bytes") and p.c2pa is None


def test_the_walk_stops_at_the_chunk_and_scan_limits() -> None:
    text = fx.text_chunk("parameters", fx.A1111_PARAMETERS)
    late = fx.png_with_chunks([fx.text_chunk(f"k{i}", "v") for i in range(30)] + [text])
    assert read_provenance(late, ProvenanceSettings()).declared_ai
    assert not read_provenance(late, ProvenanceSettings(max_chunks=20)).declared_ai
    assert not read_provenance(late, ProvenanceSettings(max_text_chunks=10)).declared_ai
    cut = read_provenance(late, ProvenanceSettings(max_scan_bytes=200))
    assert not cut.declared_ai and has(cut, "png_text", "unreadable", "only the first 200 bytes")


def test_findings_are_capped_with_the_declarations_kept() -> None:
    bad = [bytearray(fx.text_chunk(f"key{i}", "v")) for i in range(40)]
    for chunk in bad:
        chunk[-1] ^= 0xFF
    good = fx.text_chunk("parameters", fx.A1111_PARAMETERS)
    p = read_provenance(fx.png_with_chunks([*map(bytes, bad), good]), trusting())
    assert len(p.findings) == 16 and p.declared_ai and p.findings[0].status == "declared_ai"


XMP_SEGMENT = b"http://ns.adobe.com/xap/1.0/\x00" + fx.dst_attribute("digitalCapture") + b" " * 60_000


@pytest.mark.parametrize(
    ("make", "limit_mib"),
    [
        (hx.text_bomb, 2),
        (lambda: hx.huge_xmp_png(8_000_000), 1),
        (hx.oversized_jumbf_jpeg, 1),
        (lambda: fx.jpeg_with_segments([fx.jpeg_segment(0xE1, XMP_SEGMENT)] * 200), 2),
    ],
    ids=["ztxt bomb", "8 MB xmp", "2.6 MB jumbf", "200 xmp segments of 60 kB"],
)
def test_hostile_metadata_costs_little_memory(make: Callable[[], bytes], limit_mib: int) -> None:
    data = make()
    tracemalloc.start()
    try:
        read_provenance(data, trusting())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit_mib * 2**20, peak
