"""Image bytes generated in code for the bad-input tables (decoder and streaming scorer)."""

from __future__ import annotations

import io
import struct
import zlib
from functools import cache

import numpy as np
from PIL import Image


def save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "LA": 2, "L": 1}[mode]
    a = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(a[..., 0] if channels == 1 else a, mode)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(w: int, h: int, depth: int, color_type: int, idat: bytes) -> bytes:
    """A PNG written by hand, for what PIL cannot write (16-bit RGBA) or should never decode (bombs)."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


@cache
def png_bomb() -> bytes:
    """A valid 20000x20000 1-bit PNG: ~50 KB on disk, 400 Mpx (1.2 GB as RGB) once decoded."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + 20000 // 8)  # filter byte + 2500 bytes of pixels
    body = b"".join(comp.compress(row) for _ in range(20000)) + comp.flush()
    return raw_png(20000, 20000, 1, 0, body)


def png16_rgba() -> bytes:
    w, h = 5, 4
    row = b"\x00" + struct.pack(">" + "H" * 4 * w, *([65535, 32768, 0, 30000] * w))
    return raw_png(w, h, 16, 6, zlib.compress(row * h))


GREY16 = np.array([[65535, 32768, 0, 257, 1000]] * 3, dtype=np.uint16)


def png16_grey() -> bytes:
    return save(Image.fromarray(GREY16), "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def palette_png_transparent() -> bytes:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.paste(1, (4, 0, 8, 8))
    return save(img, "PNG", transparency=0)


def jpeg_with_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    exif[0x010F] = "TestCam"
    return save(noise(60, 20), "JPEG", exif=exif.tobytes())


def png_bad_ihdr_crc() -> bytes:
    data = bytearray(save(noise(16, 16), "PNG"))
    data[29] ^= 0xFF  # last byte of the IHDR CRC
    return bytes(data)


def png_garbage_idat() -> bytes:
    data = bytearray(save(noise(40, 40), "PNG"))
    i = data.index(b"IDAT") + 4
    data[i : i + 64] = bytes(range(64))
    return bytes(data)


def png_header_only(w: int, h: int) -> bytes:
    # The IDAT is garbage: reaching load() would give "undecodable", so the pixel check must come first.
    return raw_png(w, h, 8, 2, b"not zlib at all")


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]
