"""Provenance read from image bytes (``ingest.provenance``): declared-AI markers are found, camera and
plain images are not declared, C2PA validation states are those of the library, and no input makes it raise
(Hypothesis, ``CIFAKE_FUZZ_EXAMPLES`` examples). Hostile metadata: ``tests/unit/test_provenance_hostile.py``.

Pure unit tests: fixtures are built in memory (``tests/provenance_fixtures.py``), C2PA ones signed by a
throwaway CA. Nothing asserts on wall-clock time; the work is bounded through the limits instead.
"""

from __future__ import annotations

import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ingest.c2pa_reader import read_c2pa
from ingest.provenance import ProvenanceSettings, read_provenance
from ingest.provenance_fields import DST_PREFIX, matcher
from ingest.signals import Provenance
from tests import provenance_fixtures as fx
from tests import provenance_hostile as hostile
from tests.imagegen import noise, save
from tests.provenance_checks import has, internal_errors, no_c2pa_calls, summary, trusting

REAL_ZIP = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "cifake-train.zip"
EXAMPLES = int(os.environ.get("CIFAKE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


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
        hostile.malformed_jumbf_jpeg(),
        hostile.garbage_text_chunks(),
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
