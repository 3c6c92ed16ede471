"""Safe decoding of untrusted image bytes.

``decode_image`` turns bytes into a loaded PIL image or raises ``PermanentError`` with one of the
codes in ``DECODE_ERROR_CODES``; given any bytes it raises nothing else (a Hypothesis fuzz test holds
it to that). The order of the checks is the point:

1. size of the bytes (``empty``, ``too_large``);
2. ``Image.open``, which parses headers only, restricted to the allowed formats, so no other format's
   decoder ever runs (other formats' header parsers run only on refused bytes, to name the format in
   the error) (``not_an_image``, ``format_not_allowed``, ``truncated``, ``undecodable``);
3. width x height against ``max_pixels`` *before* any pixel is decoded (``too_many_pixels``).
   PIL's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``, a process-wide global that we
   never mutate because decoding runs in threads) is mapped to the same code;
4. ``load()``, which decodes the first frame (``truncated``, ``undecodable``).

Everything here is safe to call from several threads at once: no global state is changed and every
call works on its own image object.
"""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ingest.errors import PermanentError

logger = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
DEFAULT_FORMATS: Final = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF"})
DECODE_ERROR_CODES: Final = frozenset(
    {
        "empty",
        "too_large",
        "not_an_image",
        "format_not_allowed",
        "too_many_pixels",
        "truncated",
        "undecodable",
    }
)
# PIL reports a JPEG that carries extra pictures (written by many cameras) as "MPO"; its first
# picture is an ordinary JPEG, so it is allowed whenever JPEG is.
_FORMAT_ALIASES: Final = {"MPO": "JPEG"}
_SIXTEEN_BIT_MODES: Final = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# Premultiplied or palette+alpha modes that the RGB conversion rules below do not know: made
# plain RGBA/LA so that their alpha is composited rather than dropped.
_ALPHA_MODES: Final = {"PA": "RGBA", "RGBa": "RGBA", "La": "LA"}

_plugins_lock = threading.Lock()
_plugins_ready = False


class DecodeLimits(BaseModel):
    """What an image may cost before we refuse it. Nest it in a service's settings."""

    model_config = ConfigDict(frozen=True)

    max_bytes: int = Field(default=10 * MiB, ge=1)
    max_pixels: int = Field(default=40_000_000, ge=1)
    allowed_formats: frozenset[str] = DEFAULT_FORMATS

    @field_validator("allowed_formats")
    @classmethod
    def _upper(cls, v: frozenset[str]) -> frozenset[str]:
        return frozenset(f.upper() for f in v)


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image.

    ``image`` is loaded, in any PIL mode except 16-bit/float ones (those are scaled to ``L``), and is
    the first frame of an animation, turned upright by its EXIF orientation when ``orient`` was set.
    ``format`` is PIL's format name; ``size`` is (width, height) as stored in the file, which is
    what a verdict records as the original size (``image.size`` differs after a JPEG draft or an
    EXIF rotation); ``frames`` is the number of frames (1 for a still image).
    """

    image: Image.Image
    format: str
    size: tuple[int, int]
    frames: int


def _fail(reason: str, code: str) -> PermanentError:
    return PermanentError(reason, code)


def _ensure_plugins() -> None:
    """Register every PIL plugin once, under a lock, before the first decode.

    ``Image.open`` otherwise initialises plugins lazily on first use, and two threads doing that at
    once may see a half-filled registry.
    """
    global _plugins_ready
    if _plugins_ready:
        return
    with _plugins_lock:
        if not _plugins_ready:
            Image.init()
            _plugins_ready = True


def _open(data: bytes, limits: DecodeLimits) -> Image.Image:
    allowed = [f for f in sorted(limits.allowed_formats) if f in Image.OPEN]
    try:
        return Image.open(io.BytesIO(data), formats=allowed)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _fail(f"too many pixels: {e}", "too_many_pixels") from None
    except UnidentifiedImageError:
        pass
    except Exception as e:  # an allowed parser claimed the bytes and then choked on them
        raise _classify_failure("header", e) from None
    if _claimed(data[:16], allowed):
        raise _fail("image header is corrupt", "undecodable")
    other = _identify_any(data)
    if other is not None:
        raise _fail(f"format {other} is not allowed", "format_not_allowed")
    raise _fail("not a recognised image", "not_an_image")


def _claimed(prefix: bytes, formats: list[str]) -> bool:
    """Whether one of ``formats`` recognises the magic bytes (so the file is a corrupt one of them)."""
    for f in formats:
        accept = Image.OPEN[f][1]
        try:
            # PIL's accept functions return True, False, or a str explaining a near miss.
            if accept is not None and accept(prefix) is True:
                return True
        except Exception:  # a magic-number check that fails is a "no"
            continue
    return False


def _identify_any(data: bytes) -> str | None:
    """Which format PIL sees in ``data`` (headers only, nothing decoded), for the error message."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return str(im.format)
    except Exception:  # any failure here just means "not an image we can name"
        return None


def _classify_failure(stage: str, e: BaseException) -> PermanentError:
    text = str(e)
    if isinstance(e, EOFError) or "truncat" in text.lower():
        return _fail(f"image data is truncated ({stage}: {text[:200]})", "truncated")
    return _fail(f"image cannot be decoded ({stage}: {type(e).__name__}: {text[:200]})", "undecodable")


def _count_frames(img: Image.Image) -> int:
    """Frames in the file; leaves ``img`` on frame 0.

    For GIF, PIL walks every frame's blocks in Python: about 2 s for a 10 MiB file made only of tiny
    frames. That is the same order as decoding a legitimate image at the pixel limit, so it is
    accepted rather than re-implementing GIF parsing.
    """
    n = int(getattr(img, "n_frames", 1))
    if n > 1:
        img.seek(0)
    return max(n, 1)


def _orient(img: Image.Image) -> None:
    """Apply the EXIF orientation in place; a malformed EXIF block is ignored, not fatal."""
    try:
        if img.getexif().get(0x0112, 1) in (None, 1):
            return
        ImageOps.exif_transpose(img, in_place=True)
    except Exception as e:  # EXIF is metadata: a broken block must not cost us the pixels
        logger.debug("ignoring unreadable EXIF orientation: %s", e)


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit greyscale -> ``L`` scaled by the bit depth, not clipped (PIL's own
    ``convert("L")`` clips everything above 255 to white).

    ``I;16*``: 16 bits, round(v * 255 / 65535). ``I``: 16 bits when every value is in 0..65535 (how PIL
    represents a 16-bit file), else a min..max stretch. ``F``: values in [0, 1] are taken as
    normalised, else a min..max stretch.
    """
    if img.mode in _SIXTEEN_BIT_MODES:
        # round(v / 257) in uint16 arithmetic: no float copy of a possibly 40 Mpx image.
        a = np.asarray(img).astype(np.uint16)
        q = a // 257
        q += a % 257 > 128
        return Image.fromarray(q.astype(np.uint8), "L")
    if img.mode in ("I", "F"):
        f = np.nan_to_num(np.asarray(img).astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        full = 1.0 if img.mode == "F" else 65535.0
        lo, hi = float(f.min()), float(f.max())
        if lo >= 0 and hi <= full:
            lo, hi = 0.0, full
        f -= lo
        f *= 255.0 / (hi - lo if hi > lo else 1.0)
        # Metadata such as a 16-bit tRNS value means nothing for the 8-bit image, so none is kept.
        return Image.fromarray(np.clip(np.rint(f), 0, 255).astype(np.uint8), "L")
    if img.mode in _ALPHA_MODES:
        return img.convert(_ALPHA_MODES[img.mode])
    return img


def decode_image(
    data: bytes, limits: DecodeLimits | None = None, *, target_size: int | None = None, orient: bool = True
) -> DecodedImage:
    """Decode ``data`` under ``limits``; raise ``PermanentError`` (code in ``DECODE_ERROR_CODES``).

    ``target_size``: the square size the caller will resize to. For JPEG it lets libjpeg decode at
    1/2, 1/4 or 1/8 scale (``Image.draft``) while staying at least ``target_size`` on both sides:
    several times faster for large photos, at the cost of slightly different pixels than a full
    decode followed by the same resize. Callers that must agree (streaming and offline scoring) pass
    the same value. ``max_pixels`` applies to the stored size either way.

    ``orient``: turn the image upright by its EXIF orientation tag (phone photos), as viewers do.
    """
    limits = limits or DecodeLimits()
    if not data:
        raise _fail("image is empty (0 bytes)", "empty")
    if len(data) > limits.max_bytes:
        raise _fail(f"image is {len(data)} bytes, more than {limits.max_bytes}", "too_large")
    _ensure_plugins()
    img = _open(data, limits)
    try:
        return _decode_opened(img, limits, target_size, orient)
    except PermanentError:
        img.close()
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        img.close()
        raise _fail(f"too many pixels: {e}", "too_many_pixels") from None
    except Exception as e:  # untrusted bytes reach C decoders: any failure is the image's fault
        img.close()
        raise _classify_failure("decode", e) from None


def _decode_opened(
    img: Image.Image, limits: DecodeLimits, target_size: int | None, orient: bool
) -> DecodedImage:
    fmt = str(img.format)
    if _FORMAT_ALIASES.get(fmt, fmt) not in limits.allowed_formats:
        raise _fail(f"format {fmt} is not allowed", "format_not_allowed")
    w, h = img.size
    if w <= 0 or h <= 0:
        raise _fail(f"image has no pixels ({w}x{h})", "undecodable")
    if w * h > limits.max_pixels:
        raise _fail(f"image is {w}x{h} = {w * h} pixels, more than {limits.max_pixels}", "too_many_pixels")
    frames = _count_frames(img)
    if target_size is not None and fmt in ("JPEG", "MPO"):
        img.draft("RGB", (target_size, target_size))
    img.load()
    if orient:
        _orient(img)
    return DecodedImage(image=_to_8bit(img), format=fmt, size=(w, h), frames=frames)


def to_rgb_image(img: Image.Image, size: int, resize: Image.Resampling = Image.Resampling.BOX) -> Image.Image:
    """RGB ``size x size`` version of ``img``.

    The rules are kept identical to ``scorer.preprocess.to_model_rgb`` (ingest may not import the
    scorer; tests/unit/test_decode.py checks that both give the same pixels): alpha (RGBA, LA, palette
    with transparency) is composited on white, every other mode is converted to RGB, and an image
    that is not already ``size x size`` is resized straight to it with ``resize`` (BOX by default:
    an area average; the aspect ratio is not kept).
    """
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), resize)
    return img


def to_rgb_array(
    decoded: DecodedImage | Image.Image, size: int, resize: Image.Resampling = Image.Resampling.BOX
) -> np.ndarray:
    """uint8 ``[size, size, 3]`` array (writable) of ``decoded`` under the ``to_rgb_image`` rules."""
    img = decoded.image if isinstance(decoded, DecodedImage) else decoded
    return np.array(to_rgb_image(img, size, resize), dtype=np.uint8)
