"""Safe decoding: a bad-input table generated in code, conversion rules, threads, and a fuzz test."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ingest.decode import (
    DECODE_ERROR_CODES,
    DecodedImage,
    DecodeLimits,
    decode_image,
    to_rgb_array,
)
from ingest.errors import PermanentError
from scorer.preprocess import to_model_rgb
from tests.imagegen import (
    GREY16,
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

# -- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], bytes]
    code: str | None = None  # expected PermanentError code; None means "decodes"
    fmt: str | None = None
    size: tuple[int, int] | None = None
    frames: int = 1
    mode: str | None = None
    limits: DecodeLimits = field(default_factory=DecodeLimits)


CASES = [
    Case("zero_bytes", lambda: b"", code="empty"),
    Case("text_file", lambda: b"just some text, not an image\n" * 20, code="not_an_image"),
    Case(
        "svg",
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        code="not_an_image",
    ),
    Case("pdf", lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + b"0" * 200, code="not_an_image"),
    Case("truncated_jpeg", lambda: half(save(noise(80, 64), "JPEG")), code="truncated"),
    Case("truncated_jpeg_header", lambda: save(noise(80, 64), "JPEG")[:30], code="truncated"),
    Case("truncated_png", lambda: half(save(noise(80, 64), "PNG")), code="truncated"),
    Case("truncated_gif", lambda: half(save(noise(40, 40).convert("P"), "GIF")), code="truncated"),
    Case("truncated_bmp", lambda: save(noise(80, 64), "BMP")[:500], code="truncated"),
    Case("png_bomb_20000x20000", png_bomb, code="too_many_pixels"),
    Case("png_header_8000x6000", lambda: png_header_only(8000, 6000), code="too_many_pixels"),
    Case(
        "over_configured_pixels",
        lambda: save(noise(40, 40), "PNG"),
        code="too_many_pixels",
        limits=DecodeLimits(max_pixels=1599),
    ),
    Case(
        "oversized_file",
        lambda: save(noise(64, 64), "PNG"),
        code="too_large",
        limits=DecodeLimits(max_bytes=4096),
    ),
    Case("oversized_default", lambda: b"\x89PNG\r\n\x1a\n" + bytes(10 * 1024 * 1024), code="too_large"),
    Case("tiff", lambda: save(noise(16, 16), "TIFF"), code="format_not_allowed"),
    Case("ico", lambda: save(noise(16, 16), "ICO"), code="format_not_allowed"),
    Case(
        "png_when_only_jpeg_allowed",
        lambda: save(noise(16, 16), "PNG"),
        code="format_not_allowed",
        limits=DecodeLimits(allowed_formats=frozenset({"jpeg"})),
    ),
    Case("png_bad_ihdr_crc", png_bad_ihdr_crc, code="undecodable"),
    Case("png_garbage_in_idat", png_garbage_idat, code="undecodable"),
    Case("animated_gif", animated_gif, fmt="GIF", size=(20, 10), frames=3, mode="P"),
    Case(
        "cmyk_jpeg",
        lambda: save(noise(30, 20).convert("CMYK"), "JPEG"),
        fmt="JPEG",
        size=(30, 20),
        mode="CMYK",
    ),
    Case("png16_rgba", png16_rgba, fmt="PNG", size=(5, 4), mode="RGBA"),
    Case("png16_grey", png16_grey, fmt="PNG", size=(5, 3), mode="L"),
    Case("one_by_one_png", lambda: save(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), fmt="PNG", size=(1, 1)),
    Case("one_by_one_gif", lambda: save(Image.new("P", (1, 1)), "GIF"), fmt="GIF", size=(1, 1)),
    Case("palette_png_transparent", palette_png_transparent, fmt="PNG", size=(8, 8), mode="P"),
    Case("webp", lambda: save(noise(33, 17), "WEBP"), fmt="WEBP", size=(33, 17), mode="RGB"),
    Case("webp_alpha", lambda: save(noise(12, 9, "RGBA"), "WEBP", lossless=True), fmt="WEBP", mode="RGBA"),
    Case("bmp", lambda: save(noise(31, 7), "BMP"), fmt="BMP", size=(31, 7), mode="RGB"),
    Case("large_jpeg_1000x700", lambda: save(noise(1000, 700), "JPEG"), fmt="JPEG", size=(1000, 700)),
    Case("jpeg_with_exif_orientation", jpeg_with_exif, fmt="JPEG", size=(60, 20), mode="RGB"),
    Case("grey_la_png", lambda: save(noise(6, 6, "LA"), "PNG"), fmt="PNG", size=(6, 6), mode="LA"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_table(case: Case) -> None:
    data = case.make()
    if case.code is not None:
        with pytest.raises(PermanentError) as info:
            decode_image(data, case.limits)
        assert info.value.code == case.code, info.value.reason
        assert info.value.code in DECODE_ERROR_CODES
        return
    out = decode_image(data, case.limits)
    assert out.format == case.fmt
    if case.size is not None:
        assert out.size == case.size
    assert out.frames == case.frames
    if case.mode is not None:
        assert out.image.mode == case.mode
    assert to_rgb_array(out, 32).shape == (32, 32, 3)


def test_table_covers_the_issue() -> None:
    assert len(CASES) >= 15
    assert {c.code for c in CASES} >= DECODE_ERROR_CODES


# -- conversions --------------------------------------------------------------------------------


def test_sixteen_bit_grey_is_scaled_by_bit_depth_not_clipped() -> None:
    out = decode_image(png16_grey())
    assert out.image.mode == "L"
    assert list(np.asarray(out.image)[0]) == [255, 128, 0, 1, 4]


def test_palette_transparency_is_kept_and_composited_on_white() -> None:
    out = decode_image(palette_png_transparent())
    assert "transparency" in out.image.info
    arr = to_rgb_array(out, 8)
    assert arr[0, 0].tolist() == [255, 255, 255]  # index 0 is transparent
    assert arr[0, 7].tolist() == [200, 100, 50]


def test_exif_orientation_turns_the_image_upright_and_keeps_the_stored_size() -> None:
    assert decode_image(jpeg_with_exif()).image.size == (20, 60)
    unrotated = decode_image(jpeg_with_exif(), orient=False)
    assert unrotated.image.size == (60, 20) and unrotated.size == (60, 20)


def test_animated_gif_uses_the_first_frame() -> None:
    arr = to_rgb_array(decode_image(animated_gif()), 4)
    assert arr[..., 0].min() > 200 and arr[..., 1].max() < 50  # red, not green or blue


def test_jpeg_draft_decodes_smaller_but_close_to_a_full_decode() -> None:
    data = save(Image.fromarray(np.kron(np.asarray(noise(10, 7)), np.ones((100, 100, 1), np.uint8))), "JPEG")
    full = decode_image(data)
    fast = decode_image(data, target_size=32)
    assert fast.size == full.size == (1000, 700)
    assert full.image.size == (1000, 700)
    assert min(fast.image.size) >= 32 and fast.image.size[0] < 1000
    diff = np.abs(to_rgb_array(full, 32).astype(int) - to_rgb_array(fast, 32).astype(int))
    assert diff.mean() < 4


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.code is None], ids=[c.name for c in CASES if c.code is None]
)
def test_rgb_rules_match_the_scorer(case: Case) -> None:
    img = decode_image(case.make(), case.limits).image
    for size in (32, 7):
        assert np.array_equal(to_rgb_array(img, size), np.asarray(to_model_rgb(img, size)))


@pytest.mark.parametrize("mode", ["1", "L", "LA", "RGBA", "RGB", "CMYK", "YCbCr", "PA", "I;16"])
def test_rgb_rules_match_the_scorer_for_every_mode(mode: str) -> None:
    img = noise(9, 5, "RGBA").convert(mode) if mode != "I;16" else Image.fromarray(GREY16)
    out = to_rgb_array(DecodedImage(img, "PNG", img.size, 1), 16)
    assert out.dtype == np.uint8 and out.shape == (16, 16, 3) and out.flags.writeable
    assert np.array_equal(out, np.asarray(to_model_rgb(img, 16)))


# -- PIL's own bomb guard ----------------------------------------------------------------------


def test_pil_bomb_error_and_warning_map_to_too_many_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run one at a time, so patching PIL's global here cannot race with a decode elsewhere.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(PermanentError) as info:
        decode_image(save(noise(20, 20), "PNG"))  # 400 px > 2 x 100: PIL raises
    assert info.value.code == "too_many_pixels"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # how a service started with -W error sees the warning
        with pytest.raises(PermanentError) as info:
            decode_image(save(noise(15, 10), "PNG"))  # 150 px > 100: PIL warns
    assert info.value.code == "too_many_pixels"


# -- limits and threads ------------------------------------------------------------------------


def test_limits_normalise_formats() -> None:
    limits = DecodeLimits(allowed_formats=frozenset({"png", "Jpeg"}))
    assert limits.allowed_formats == {"PNG", "JPEG"}
    assert DecodeLimits().max_bytes == 10 * 1024 * 1024 and DecodeLimits().max_pixels == 40_000_000


def _outcome(case: Case) -> tuple[str, object]:
    try:
        out = decode_image(case.make(), case.limits)
    except PermanentError as e:
        return ("error", e.code)
    return ("ok", (out.format, out.size, out.frames, to_rgb_array(out, 8).tobytes()))


def test_concurrent_decoding_gives_the_serial_results() -> None:
    cases = [c for c in CASES if c.name not in {"oversized_default", "png_bomb_20000x20000"}] * 4
    serial = [_outcome(c) for c in cases]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(_outcome, cases))
    assert parallel == serial


# -- fuzz ---------------------------------------------------------------------------------------


@cache
def seeds() -> list[bytes]:
    return [
        save(noise(12, 10), "PNG"),
        save(noise(12, 10), "JPEG"),
        save(noise(12, 10), "WEBP"),
        save(noise(12, 10), "BMP"),
        animated_gif(),
        palette_png_transparent(),
        png16_rgba(),
        jpeg_with_exif(),
    ]


def _decode_only_permanent(data: bytes) -> None:
    try:
        out = decode_image(data, DecodeLimits(max_pixels=4_000_000))
    except PermanentError as e:
        assert e.code in DECODE_ERROR_CODES
        return
    assert isinstance(out, DecodedImage)
    to_rgb_array(out, 8)  # a decoded image must also convert


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes_only_raise_permanent_errors(data: bytes) -> None:
    _decode_only_permanent(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(min_value=0, max_value=7),
    edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=8),
    cut=st.one_of(st.none(), st.integers(min_value=0)),
)
def test_fuzz_mutated_images_only_raise_permanent_errors(
    seed: int, edits: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(seeds()[seed])
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        del data[cut % len(data) :]
    _decode_only_permanent(bytes(data))
