"""Provenance read from image bytes (``ingest.provenance``): declared-AI markers are found, camera and
plain images are not declared, C2PA validation states are those of the library, hostile metadata costs
bounded work and memory, and no input makes it raise (Hypothesis, ``CIFAKE_FUZZ_EXAMPLES`` examples).

Pure unit tests: fixtures are built in memory (``tests/provenance_fixtures.py``), C2PA ones signed by a
throwaway CA. Nothing asserts on wall-clock time; the work is bounded through the limits instead.
"""

from __future__ import annotations

import logging
import os
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import ingest.provenance as provenance_module
from ingest.c2pa_reader import read_c2pa
from ingest.provenance import ProvenanceSettings, read_provenance
from ingest.provenance_fields import DST_PREFIX, matcher
from ingest.signals import Provenance
from tests import provenance_fixtures as fx
from tests.imagegen import noise, png_chunk, save

REAL_ZIP = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifake-train.zip"
EXAMPLES = int(os.environ.get("CIFAKE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@cache
def trusting() -> ProvenanceSettings:
    return ProvenanceSettings(trust_anchors_pem=fx.signing_ca().ca_pem)


def summary(p: Provenance) -> list[tuple[str, str, str]]:
    return [(f.kind, f.status, f.detail) for f in p.findings]


def has(p: Provenance, kind: str, status: str, part: str) -> bool:
    return any(f.kind == kind and f.status == status and part in f.detail for f in p.findings)


@contextmanager
def no_c2pa_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fails the test if the C2PA library is reached (counted, since read_provenance swallows errors)."""
    calls: list[object] = []

    def record(*args: object, **_: object) -> Any:
        calls.append(args)
        return [], None

    with monkeypatch.context() as m:
        m.setattr(provenance_module, "read_c2pa", record)
        yield
    assert not calls, "the C2PA library was called"


@contextmanager
def internal_errors() -> Iterator[list[logging.LogRecord]]:
    """Records of the last-resort guard in ``read_provenance``: each one is a bug, not an outcome."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.ERROR)
    provenance_module.logger.addHandler(handler)
    try:
        yield records
    finally:
        provenance_module.logger.removeHandler(handler)


# -- declared AI --------------------------------------------------------------------------------

CASES = fx.declared_ai_cases()


@pytest.mark.parametrize("name", list(CASES))
def test_declared_ai_fixture_is_detected_with_its_kind_and_detail(name: str) -> None:
    make, kind, part = CASES[name]
    p = read_provenance(make(), trusting())
    assert p.declared_ai, summary(p)
    assert has(p, kind, "declared_ai", part), summary(p)


def test_c2pa_is_trusted_with_the_ca_registered() -> None:
    p = read_provenance(fx.c2pa_fixture("jpeg"), trusting())
    assert p.c2pa is not None and p.c2pa.validation_state == "Trusted"
    assert p.c2pa.digital_source_type == DST_PREFIX + "trainedAlgorithmicMedia"
    assert p.c2pa.claim_generator == "Provenance Test Generator 1.0"
    assert p.c2pa.signer is not None and fx.signing_ca().leaf_cn in p.c2pa.signer
    assert "signingCredential.trusted" in p.c2pa.codes
    assert has(p, "c2pa", "declared_ai", f"signed by {fx.signing_ca().leaf_cn}")
    assert has(p, "c2pa", "declared_ai", "Trusted")


@pytest.mark.parametrize(
    "anchors", [None, "other CA"], ids=["no trust list", "a trust list without the signer's CA"]
)
def test_c2pa_is_only_valid_without_its_anchor(anchors: str | None) -> None:
    pem = fx.new_ca().ca_pem if anchors else None
    p = read_provenance(fx.c2pa_fixture("jpeg"), ProvenanceSettings(trust_anchors_pem=pem))
    assert p.c2pa is not None and p.c2pa.validation_state == "Valid"
    assert "signingCredential.untrusted" in p.c2pa.codes
    assert p.declared_ai and has(p, "c2pa", "declared_ai", "Valid")


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_pixels_changed_after_signing_are_invalid_and_the_claim_still_counts(fmt: str) -> None:
    p = read_provenance(fx.tamper_pixels(fx.c2pa_fixture(fmt)), trusting())
    assert p.c2pa is not None and p.c2pa.validation_state == "Invalid"
    assert "assertion.dataHash.mismatch" in p.c2pa.codes
    assert has(p, "c2pa", "invalid", "assertion.dataHash.mismatch")
    # The documented policy: a (possibly forged) claim of AI still declares AI; its state says Invalid.
    assert p.declared_ai and has(p, "c2pa", "declared_ai", "Invalid (assertion.dataHash.mismatch)")


def test_c2pa_capture_is_declared_other_and_disabling_c2pa_skips_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    capture = fx.c2pa_fixture("jpeg", "digitalCapture", "Camera Firmware 2.0")
    p = read_provenance(capture, trusting())
    assert not p.declared_ai and has(p, "c2pa", "declared_other", "C2PA: digitalCapture")
    with no_c2pa_calls(monkeypatch):
        off = read_provenance(fx.c2pa_fixture("jpeg"), ProvenanceSettings(c2pa=False))
    assert not off.declared_ai and off.c2pa is None and has(off, "c2pa", "present", "not validated")


# An address that never answers: a fetch attempt would hang rather than fail fast.
UNROUTABLE = "http://10.255.255.1/manifest.c2pa"


def test_a_remote_manifest_is_never_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    remote_only = fx.c2pa_fixture("jpeg", remote_url=UNROUTABLE)
    with no_c2pa_calls(monkeypatch):  # no embedded store: the walk does not even call the library
        assert not read_provenance(remote_only, trusting()).declared_ai
    # and the library itself, as configured, refuses to fetch instead of trying
    findings, record = read_c2pa(
        remote_only, "image/jpeg", trust_anchors_pem=None, max_manifest_bytes=2**20, generator=lambda _: None
    )
    assert record is None and findings[0].status == "unreadable"
    assert "must fetch remote manifests" in findings[0].detail


# -- not declared -------------------------------------------------------------------------------

CAMERA = fx.camera_fixtures()


@pytest.mark.parametrize("name", list(CAMERA))
def test_camera_and_editor_images_are_not_declared_ai(name: str) -> None:
    p = read_provenance(CAMERA[name], trusting())
    assert not p.declared_ai, summary(p)
    assert all(f.status != "declared_ai" for f in p.findings)


PLAIN = {
    "jpeg": lambda: fx.base_jpeg(),
    "png": lambda: fx.base_png(),
    "webp": lambda: save(noise(16, 16), "WEBP"),
    "gif": lambda: save(noise(8, 8).convert("P"), "GIF"),
    "bmp": lambda: save(noise(8, 8), "BMP"),
    "empty": lambda: b"",
    "text": lambda: b"not an image at all",
}


@pytest.mark.parametrize("name", list(PLAIN))
def test_no_metadata_gives_an_empty_provenance_without_touching_c2pa(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with no_c2pa_calls(monkeypatch):
        assert read_provenance(PLAIN[name](), trusting()) == Provenance()


def test_ordinary_metadata_never_reaches_the_c2pa_library(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = [data for name, data in CAMERA.items() if not name.startswith("c2pa")]
    samples += [make() for name, (make, _, _) in CASES.items() if not name.startswith("c2pa")]
    with no_c2pa_calls(monkeypatch):
        results = [read_provenance(data, trusting()) for data in samples]
    assert sum(p.declared_ai for p in results) == len(CASES) - 2  # the two C2PA cases were left out


def test_disabled_reads_nothing() -> None:
    assert read_provenance(fx.c2pa_fixture("jpeg"), ProvenanceSettings(enabled=False)) == Provenance()


@pytest.mark.parametrize(
    "software",
    [
        "Adobe Photoshop 25.0 (Macintosh)", "Adobe Photoshop Lightroom Classic 13.0 (Windows)", "GIMP 2.10",
        "17.1", "HDR+ 1.0.540104767zd", "Imagenomic Portraiture 4", "Editor de imagen", "f.lux",
        "Snapseed 2.0", "Picasa", "Microsoft Windows Photo Viewer 6.1", "Paint.NET 5.0", "darktable 4.6",
        "Capture One 23 Windows", "Luminar Neo", "Canon EOS R5 Firmware Version 1.8.1", "SM-S918B",
        "Sorapp 2", "Fluxus Editor", "Google", "Apple", "Instagram",
    ],
)  # fmt: skip
def test_camera_and_editor_software_names_no_generator(software: str) -> None:
    assert matcher(ProvenanceSettings().generators)(software) is None


@pytest.mark.parametrize(
    "software",
    [
        "Adobe Firefly Image 3", "DALL·E 3", "dall-e", "Midjourney v6", "Stable Diffusion XL 1.0", "NovelAI",
        "ComfyUI", "OpenAI API", "Leonardo.Ai", "Ideogram 2.0", "FLUX.1 [dev]", "Google Imagen 3",
    ],
)  # fmt: skip
def test_generator_software_is_named(software: str) -> None:
    assert matcher(ProvenanceSettings().generators)(software) is not None


def test_settings_are_frozen_and_refuse_a_trust_list_that_is_not_pem() -> None:
    with pytest.raises(ValidationError):
        ProvenanceSettings(trust_anchors_pem="not a certificate")
    with pytest.raises(ValidationError):
        ProvenanceSettings().enabled = False


# -- hostile metadata ---------------------------------------------------------------------------


def _cut_inside(data: bytes, needle: bytes) -> bytes:
    return data[: data.index(needle) + len(needle) + 5]


HOSTILE: dict[str, tuple[Callable[[], bytes], str, str, str]] = {
    # name: (builder, kind, status, piece of the detail)
    "ztxt bomb (50 MB of zeros)": (fx.text_bomb, "png_text", "unreadable", "inflates past the 65536-byte"),
    "5,000 text chunks": (fx.many_text_chunks, "png_text", "unreadable", "more than 4096 chunks"),
    "text chunks beyond the text limit": (fx.many_text_chunks, "png_text", "unreadable", "over 64 text"),
    "4 MB XMP in iTXt": (fx.huge_xmp_png, "png_text", "unreadable", "exceeds the 262144-byte limit"),
    "xmp with a DTD": (fx.billion_laughs_xmp, "iptc_xmp", "unreadable", "DTDForbidden"),
    "xmp not well-formed": (
        lambda: fx.jpeg_with_xmp(b"<x:xmpmeta><unclosed></x:xmpmeta>"),
        "iptc_xmp",
        "unreadable",
        "not well-formed",
    ),
    "binary garbage in text chunks": (fx.garbage_text_chunks, "png_text", "unreadable", "decompressing"),
    "itxt header cut short": (fx.garbage_text_chunks, "png_text", "unreadable", "header is truncated"),
    "text chunk with a bad crc": (fx.png_bad_text_crc, "png_text", "unreadable", "bad CRC"),
    "chunk length past the end": (fx.png_length_past_end, "png_text", "unreadable", "past the end"),
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
    "malformed jumbf": (fx.malformed_jumbf_jpeg, "c2pa", "unreadable", "C2PA manifest unreadable"),
    "oversized jumbf": (fx.oversized_jumbf_jpeg, "c2pa", "unreadable", "manifest store over 2097152 bytes"),
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
    p = read_provenance(fx.png_bad_text_crc(), trusting())
    assert not p.declared_ai and not has(p, "png_text", "declared_ai", "")


def test_deeply_nested_xmp_is_parsed_without_harm() -> None:
    with internal_errors() as errors:
        p = read_provenance(fx.deep_xmp_png(), trusting())
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
        (fx.text_bomb, 2),
        (lambda: fx.huge_xmp_png(8_000_000), 1),
        (fx.oversized_jumbf_jpeg, 1),
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


# -- threads ------------------------------------------------------------------------------------


def test_concurrent_reads_agree_with_serial_ones() -> None:
    """Decode threads share nothing: C2PA contexts are per thread and per configuration."""
    inputs = [
        (fx.c2pa_fixture("jpeg"), trusting()),
        (fx.c2pa_fixture("png"), ProvenanceSettings()),
        (fx.tamper_pixels(fx.c2pa_fixture("jpeg")), trusting()),
        (fx.declared_ai_fixtures()["png tEXt parameters (A1111)"], trusting()),
        (fx.base_jpeg(), trusting()),
    ]
    expected = [read_provenance(d, s) for d, s in inputs]
    jobs = inputs * 12
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda job: read_provenance(*job), jobs))
    assert got == expected * 12


# -- fuzz ---------------------------------------------------------------------------------------


@cache
def seeds() -> list[bytes]:
    return [
        *fx.declared_ai_fixtures().values(),
        *fx.camera_fixtures().values(),
        fx.malformed_jumbf_jpeg(),
        fx.garbage_text_chunks(),
        fx.c2pa_fixture("webp"),
    ]


def _check(data: bytes) -> None:
    with internal_errors() as errors:
        p = read_provenance(data, trusting())
    assert not errors, errors[0].getMessage()
    assert isinstance(p, Provenance) and len(p.findings) <= 16
    assert p.declared_ai == any(f.status == "declared_ai" for f in p.findings)
    assert Provenance.model_validate(p.model_dump()) == p


@FUZZ
@given(
    seed=st.integers(min_value=0),
    edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=8),
    cut=st.none() | st.integers(min_value=0),
    insert=st.none() | st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=64)),
)
def test_fuzz_mutated_fixtures(
    seed: int, edits: list[tuple[int, int]], cut: int | None, insert: tuple[int, bytes] | None
) -> None:
    data = bytearray(seeds()[seed % len(seeds())])
    for pos, value in edits:
        data[pos % len(data)] = value
    if insert is not None:
        data[insert[0] % len(data) : insert[0] % len(data)] = insert[1]
    if cut is not None:
        del data[cut % len(data) :]
    _check(bytes(data))


@FUZZ
@given(
    head=st.sampled_from(
        [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"\xff\xd8\xff\xe1", b"RIFF\x00\x01\x00\x00WEBP"]
    ),
    body=st.binary(max_size=2048),
)
def test_fuzz_arbitrary_bytes(head: bytes, body: bytes) -> None:
    _check(head + body)


# -- CIFAKE-like images -------------------------------------------------------------------------


def _cifake_jpegs(n: int) -> list[bytes]:
    """``n`` JPEGs of CIFAKE's training split (both classes) when ``../shared/datasets`` has it; else
    generated 32x32 JPEGs like them."""
    if REAL_ZIP.exists():
        with zipfile.ZipFile(REAL_ZIP) as zf:
            names = [name for name in zf.namelist() if name.endswith(".jpg")]
            step = max(1, len(names) // n)
            return [zf.read(name) for name in names[::step][:n]]
    return [fx.base_jpeg(seed=i) for i in range(n // 10)]


def test_cifake_images_are_not_declared_ai() -> None:
    images = _cifake_jpegs(2000)
    results = [read_provenance(data, trusting()) for data in images]
    assert images and not any(p.declared_ai for p in results)
    assert all(p == Provenance() for p in results)  # CIFAKE's JPEGs carry no metadata at all
