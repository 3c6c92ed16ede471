"""Provenance signals read from untrusted image bytes, before any pixel is decoded.

Contract of ``read_provenance(data, settings)``:

* it returns a ``Provenance`` for any bytes and never raises (a Hypothesis fuzz test holds it to that);
  what cannot be parsed within the limits becomes an ``unreadable`` finding with the reason;
* its work is bounded by ``ProvenanceSettings``: every length read from a header (PNG chunk, JPEG
  segment, RIFF chunk) is checked against the data and the limits *before* anything is copied,
  decompressed or parsed; zTXt/iTXt inflate with ``max_length``; XMP is parsed with defusedxml (no DTD,
  no entities); pixel data is only ever skipped over;
* ``declared_ai`` is true iff a finding has status ``declared_ai``; no metadata gives ``Provenance()``;
* it is thread-safe: no shared mutable state here; C2PA readers are per thread (``ingest.c2pa_reader``).

What is read: PNG tEXt/zTXt/iTXt (generation parameters of Automatic1111/Forge, ComfyUI, InvokeAI,
NovelAI; XMP), PNG eXIf and caBX (C2PA); JPEG APP1 (EXIF, XMP) and APP11 (JUMBF/C2PA) up to SOS; WebP
RIFF chunks EXIF, ``XMP `` and C2PA. From XMP: IPTC ``DigitalSourceType`` (attribute, element or
``rdf:resource``) and ``xmp:CreatorTool``; from EXIF: Software (0x0131) and the Exif IFD's UserComment
(0x9286). Other formats (GIF, BMP) give ``Provenance()``. Unsigned markers are forgeable by anyone; C2PA
says how far its signature validated (Trusted > Valid > Invalid), see ``ingest.c2pa_reader``.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ingest.c2pa_reader import read_c2pa
from ingest.provenance_fields import exif_findings, finding, matcher, text_findings, xmp_findings
from ingest.signals import C2pa, Finding, FindingKind, FindingStatus, Provenance

logger = logging.getLogger(__name__)

KiB: Final = 1024
MiB: Final = 1024 * KiB
# Names of image generators, matched case-insensitively as whole words. Chosen to stay clear of camera
# firmware and editors ("Adobe Photoshop", "Lightroom", "GIMP", "17.1"): "imagen" alone is Spanish for
# "image" and would hit localised editors, hence "google imagen".
DEFAULT_GENERATORS: Final = (
    "stable diffusion", "stablediffusion", "sdxl", "midjourney", "dall-e", "dall·e", "dalle", "firefly",
    "novelai", "comfyui", "automatic1111", "stable-diffusion-webui", "invokeai", "fooocus", "dreamstudio",
    "stability ai", "google imagen", "leonardo.ai", "leonardo ai", "ideogram", "flux", "openai", "chatgpt",
    "gpt-4o", "sora", "bing image creator", "craiyon", "nightcafe", "kandinsky", "playground ai",
    "artbreeder",
)  # fmt: skip


class ProvenanceSettings(BaseModel):
    """Limits and lists for ``read_provenance``; nest it in a service's settings."""

    model_config = ConfigDict(frozen=True)

    enabled: bool = True  # False: read nothing, return Provenance()
    c2pa: bool = True  # False: C2PA stores are reported "present" but never validated
    trust_anchors_pem: str | None = None  # CA roots for C2PA "Trusted"; None: at best "Valid"
    # A PEM file of CA roots, read when the settings are built (a service's main), for operators who mount
    # their trust list as a file rather than put certificates in an environment variable.
    trust_anchors_file: str | None = None
    max_scan_bytes: int = Field(default=16 * MiB, ge=64)  # bytes walked; a longer file is walked this far
    max_chunks: int = Field(default=4096, ge=1)  # PNG chunks / JPEG segments / RIFF chunks walked
    max_xmp_bytes: int = Field(default=256 * KiB, ge=1)  # one XMP packet, before parsing
    max_exif_bytes: int = Field(default=64 * KiB, ge=1)  # one EXIF block (a JPEG APP1 holds < 64 KiB)
    max_text_chunks: int = Field(default=64, ge=0)  # PNG text chunks read; the rest are skipped
    max_text_chunk_bytes: int = Field(default=64 * KiB, ge=1)  # one text chunk, stored and inflated
    max_c2pa_bytes: int = Field(default=2 * MiB, ge=1)  # the embedded C2PA manifest store
    generators: tuple[str, ...] = DEFAULT_GENERATORS

    @field_validator("trust_anchors_pem")
    @classmethod
    def _pem(cls, v: str | None) -> str | None:
        if v is not None and "-----BEGIN CERTIFICATE-----" not in v:
            raise ValueError("trust_anchors_pem must hold PEM certificates")
        return v or None

    @model_validator(mode="after")
    def _read_anchors_file(self) -> ProvenanceSettings:
        if self.trust_anchors_file is None:
            return self
        try:
            pem = Path(self.trust_anchors_file).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"trust_anchors_file {self.trust_anchors_file}: {e}") from None
        if "-----BEGIN CERTIFICATE-----" not in pem:
            raise ValueError(f"trust_anchors_file {self.trust_anchors_file} holds no PEM certificate")
        joined = "\n".join(p for p in (self.trust_anchors_pem, pem) if p)
        object.__setattr__(self, "trust_anchors_pem", joined)  # frozen model: set once, while validating
        return self


_MAX_NOTES: Final = 64
_MAX_BLOCKS: Final = 4  # EXIF blocks and XMP packets interpreted per image


class _Broken(Exception):
    """The container structure is broken at this point: stop walking, record why."""

    def __init__(self, kind: FindingKind, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


@dataclass
class _Walk:
    """What a container walk found, before the metadata in it is interpreted."""

    settings: ProvenanceSettings
    mime: str
    findings: list[Finding] = field(default_factory=list)
    exif: list[bytes] = field(default_factory=list)
    xmp: list[bytes] = field(default_factory=list)
    c2pa_bytes: int = 0  # size of the embedded C2PA manifest store (0: none)
    c2pa_refused: bool = False  # the store is over the limit: never handed to the library
    texts: int = 0

    def note(self, kind: FindingKind, status: FindingStatus, detail: str) -> None:
        if len(self.findings) < _MAX_NOTES:  # a file of 4,000 bad chunks needs only a few words
            self.findings.append(finding(kind, status, detail))

    def take(self, kind: FindingKind, what: str, body: memoryview, limit: int) -> bytes | None:
        """A copy of ``body`` when it is within ``limit``; else an ``unreadable`` note."""
        if len(body) > limit:
            self.note(kind, "unreadable", f"{what} of {len(body)} bytes exceeds the {limit}-byte limit")
            return None
        return bytes(body)

    def keep(self, into: list[bytes], kind: FindingKind, what: str, body: memoryview, limit: int) -> None:
        """Keep a copy of an EXIF/XMP block for interpretation: the first few only, so that a file of
        hundreds of them costs no more than one with a few."""
        if len(into) < _MAX_BLOCKS and (block := self.take(kind, what, body, limit)) is not None:
            into.append(block)


# -- entry point --------------------------------------------------------------------------------


def read_provenance(data: bytes, settings: ProvenanceSettings) -> Provenance:
    """Provenance findings of the image ``data``; see the module docstring for the contract."""
    if not settings.enabled:
        return Provenance()
    try:
        return _read(data, settings)
    except Exception:  # a bug here must not cost the image its verdict: no findings, logged
        logger.exception("provenance reader failed on %d bytes", len(data))
        return Provenance()


_PNG_SIG: Final = b"\x89PNG\r\n\x1a\n"


def _read(data: bytes, s: ProvenanceSettings) -> Provenance:
    mime = _sniff(data[:16])
    if mime is None:
        return Provenance()
    view = memoryview(data)[: s.max_scan_bytes]
    walk = _Walk(settings=s, mime=mime)
    try:
        _WALKERS[mime](view, walk)
    except _Broken as e:
        walk.note(e.kind, "unreadable", e.reason)
    if len(view) < len(data):
        walk.note(_container_kind(mime), "unreadable", f"only the first {len(view)} bytes were scanned")
    findings = list(walk.findings)
    for block in walk.exif:
        findings += _guard("exif_software", exif_findings, block, s.generators)
    for packet in walk.xmp:
        findings += _guard("iptc_xmp", xmp_findings, packet, s.generators)
    more, c2pa_record = _c2pa(data, walk, whole=len(view) == len(data))
    return _assemble(findings + more, c2pa_record)


def _c2pa(data: bytes, walk: _Walk, *, whole: bool) -> tuple[list[Finding], C2pa | None]:
    """Validate the embedded store, if the walk found one within the limits in a fully scanned file."""
    s = walk.settings
    if not walk.c2pa_bytes or walk.c2pa_refused:
        return [], None
    if not (s.c2pa and whole):
        return [finding("c2pa", "present", "C2PA manifest store not validated")], None
    return read_c2pa(
        bytes(data),
        walk.mime,
        trust_anchors_pem=s.trust_anchors_pem,
        max_manifest_bytes=s.max_c2pa_bytes,
        generator=matcher(s.generators),
    )


def _sniff(head: bytes) -> str | None:
    if head.startswith(_PNG_SIG):
        return "image/png"
    if head.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def _container_kind(mime: str) -> FindingKind:
    # Signals has no "container" kind: a broken PNG is reported against its text chunks, the others
    # against EXIF, the metadata every JPEG/WebP writer puts first.
    return "png_text" if mime == "image/png" else "exif_software"


_RANK: Final[dict[str, int]] = {"declared_ai": 0, "invalid": 1, "declared_other": 2, "unreadable": 3}
_MAX_FINDINGS: Final = 16


def _assemble(findings: list[Finding], c2pa_record: C2pa | None) -> Provenance:
    """Deduplicated, most telling first, within the contract's 16 findings."""
    unique = list(dict.fromkeys(findings))
    unique.sort(key=lambda f: _RANK.get(f.status, 4))
    kept = tuple(unique[:_MAX_FINDINGS])
    return Provenance(
        declared_ai=any(f.status == "declared_ai" for f in kept),
        findings=kept,
        c2pa=c2pa_record,
    )


def _guard(
    kind: FindingKind,
    fn: Callable[[bytes, tuple[str, ...]], list[Finding]],
    arg: bytes,
    generators: tuple[str, ...],
) -> list[Finding]:
    """Run one interpreter; a failure of it is an ``unreadable`` finding, not a lost image."""
    try:
        return fn(arg, generators)
    except Exception as e:  # hostile metadata may reach a path the parsers did not foresee
        logger.debug("provenance %s interpreter failed: %r", kind, e)
        return [finding(kind, "unreadable", f"{type(e).__name__}: {e}")]


# -- container walks ----------------------------------------------------------------------------

_TEXT_CHUNKS: Final = frozenset({b"tEXt", b"zTXt", b"iTXt"})
_XMP_KEY: Final = "XML:com.adobe.xmp"


def _walk_png(view: memoryview, walk: _Walk) -> None:
    """Every chunk up to IEND (text may follow IDAT), checking each length before touching its body."""
    pos, s = len(_PNG_SIG), walk.settings
    for _ in range(s.max_chunks):
        if pos + 12 > len(view):
            if pos < len(view):
                raise _Broken("png_text", f"PNG ends inside a chunk header at byte {pos}")
            return
        length, ctype = struct.unpack_from(">I4s", view, pos)
        end = pos + 12 + length
        name = ctype.decode("latin-1")
        if end > len(view):
            raise _Broken("png_text", f"PNG chunk {name!r} at byte {pos} claims {length} bytes past the end")
        if ctype == b"IEND":
            return
        body = view[pos + 8 : pos + 8 + length]
        if ctype in _TEXT_CHUNKS or ctype in (b"eXIf", b"caBX"):
            if zlib.crc32(view[pos + 4 : end - 4]) != struct.unpack_from(">I", view, end - 4)[0]:
                walk.note("png_text", "unreadable", f"PNG chunk {name!r} at byte {pos} has a bad CRC")
            elif ctype == b"eXIf":
                walk.keep(walk.exif, "exif_software", "PNG eXIf chunk", body, s.max_exif_bytes)
            elif ctype == b"caBX":
                _add_c2pa(walk, "PNG caBX chunk", body)
            else:
                _png_text(ctype, body, walk)
        pos = end
    raise _Broken("png_text", f"PNG has more than {s.max_chunks} chunks; the rest was not read")


def _add_c2pa(walk: _Walk, what: str, body: memoryview) -> None:
    """Count a piece of the embedded C2PA store; past the limit the whole store is refused."""
    walk.c2pa_bytes += len(body)
    if walk.c2pa_bytes > walk.settings.max_c2pa_bytes and not walk.c2pa_refused:
        walk.c2pa_refused = True
        walk.note("c2pa", "unreadable", f"{what}: manifest store over {walk.settings.max_c2pa_bytes} bytes")


_XMP_PREFIX: Final = b"http://ns.adobe.com/xap/1.0/\x00"


def _walk_jpeg(view: memoryview, walk: _Walk) -> None:
    """Marker segments from SOI to SOS; a broken structure elsewhere is the decoder's business."""
    pos, s = 2, walk.settings
    for _ in range(s.max_chunks):
        while pos + 1 < len(view) and view[pos] == 0xFF and view[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 4 > len(view) or view[pos] != 0xFF or view[pos + 1] in (0xD9, 0xDA):
            return
        marker = view[pos + 1]
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:
            pos += 2  # markers without a length
            continue
        end = pos + 2 + struct.unpack_from(">H", view, pos + 2)[0]
        if end > len(view) and marker in (0xE1, 0xEB):
            kind = _app_kind(marker, bytes(view[pos + 4 : pos + 4 + len(_XMP_PREFIX)]))
            raise _Broken(kind, f"JPEG APP{marker - 0xE0} segment at byte {pos} runs past the end")
        if end > len(view) or end < pos + 4:
            return
        _jpeg_segment(marker, view[pos + 4 : end], walk)
        pos = end
    walk.note("exif_software", "unreadable", f"JPEG has more than {s.max_chunks} segments before SOS")


def _app_kind(marker: int, head: bytes) -> FindingKind:
    if marker == 0xEB:
        return "c2pa"
    return "iptc_xmp" if head.startswith(_XMP_PREFIX) else "exif_software"


def _jpeg_segment(marker: int, body: memoryview, walk: _Walk) -> None:
    head = bytes(body[:64])
    if marker == 0xE1 and head.startswith(b"Exif\x00\x00"):
        walk.keep(walk.exif, "exif_software", "JPEG EXIF", body[6:], walk.settings.max_exif_bytes)
    elif marker == 0xE1 and head.startswith(_XMP_PREFIX):
        xmp = body[len(_XMP_PREFIX) :]
        walk.keep(walk.xmp, "iptc_xmp", "JPEG XMP packet", xmp, walk.settings.max_xmp_bytes)
    elif marker == 0xEB and head.startswith(b"JP") and (walk.c2pa_bytes or b"c2pa" in head):
        # JPEG XT boxes: "JP", instance, sequence, then the JUMBF; only the first packet carries the
        # "c2pa" label, continuation packets count towards the same store.
        _add_c2pa(walk, "JPEG APP11", body)


_WEBP_KINDS: Final[dict[bytes, FindingKind]] = {
    b"EXIF": "exif_software",
    b"XMP ": "iptc_xmp",
    b"C2PA": "c2pa",
}


def _walk_webp(view: memoryview, walk: _Walk) -> None:
    """RIFF chunks of a WebP file (simple or extended)."""
    pos, s = 12, walk.settings
    end_of_riff = min(len(view), 8 + struct.unpack_from("<I", view, 4)[0])
    for _ in range(s.max_chunks):
        if pos + 8 > end_of_riff:
            return
        fourcc, size = struct.unpack_from("<4sI", view, pos)
        end = pos + 8 + size
        if end > len(view):
            if fourcc in _WEBP_KINDS:
                raise _Broken(_WEBP_KINDS[fourcc], f"WebP chunk {fourcc!r} at byte {pos} runs past the end")
            return
        body = view[pos + 8 : end]
        if fourcc == b"EXIF":
            walk.keep(walk.exif, "exif_software", "WebP EXIF", body, s.max_exif_bytes)
        elif fourcc == b"XMP ":
            walk.keep(walk.xmp, "iptc_xmp", "WebP XMP packet", body, s.max_xmp_bytes)
        elif fourcc == b"C2PA":
            _add_c2pa(walk, "WebP C2PA chunk", body)
        pos = end + (size & 1)
    walk.note("exif_software", "unreadable", f"WebP has more than {s.max_chunks} chunks")


_WALKERS: Final[dict[str, Callable[[memoryview, _Walk], None]]] = {
    "image/png": _walk_png,
    "image/jpeg": _walk_jpeg,
    "image/webp": _walk_webp,
}


# -- PNG text chunks ----------------------------------------------------------------------------


def _png_text(ctype: bytes, body: memoryview, walk: _Walk) -> None:
    s = walk.settings
    walk.texts += 1
    if walk.texts > s.max_text_chunks:
        if walk.texts == s.max_text_chunks + 1:
            walk.note("png_text", "unreadable", f"over {s.max_text_chunks} text chunks; the rest skipped")
        return
    key = bytes(body[:80]).partition(b"\x00")[0].decode("latin-1")
    if key == _XMP_KEY and len(walk.xmp) >= _MAX_BLOCKS:
        return
    limit = s.max_xmp_bytes if key == _XMP_KEY else s.max_text_chunk_bytes
    raw = walk.take("png_text", f"PNG {ctype.decode()} {key[:40]!r}", body, limit)
    if raw is None:
        return
    try:
        text = _decode_text(ctype, raw[len(key) + 1 :], limit)
    except (ValueError, zlib.error) as e:
        walk.note("png_text", "unreadable", f"PNG {ctype.decode()} {key[:40]!r}: {e}")
        return
    if key == _XMP_KEY:
        walk.xmp.append(text.encode("utf-8"))
    else:
        walk.findings += text_findings(key, text, s.generators)


def _decode_text(ctype: bytes, rest: bytes, limit: int) -> str:
    """The text of a tEXt/zTXt/iTXt chunk after its keyword; compressed text inflates to ``limit``."""
    if ctype == b"tEXt":
        return rest.decode("latin-1")
    if ctype == b"zTXt":
        return _inflate(rest[1:], limit).decode("latin-1")
    if len(rest) < 2:
        raise ValueError("iTXt header is truncated")
    compressed, parts = rest[0] == 1, rest[2:].split(b"\x00", 2)
    if len(parts) < 3:
        raise ValueError("iTXt header is truncated")
    payload = _inflate(parts[2], limit) if compressed else parts[2]
    return payload.decode("utf-8", errors="replace")


def _inflate(raw: bytes, limit: int) -> bytes:
    out = zlib.decompressobj().decompress(raw, limit + 1)  # stops producing at limit + 1 bytes
    if len(out) > limit:
        raise ValueError(f"compressed text inflates past the {limit}-byte limit")
    return out
