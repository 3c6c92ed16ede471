"""What provenance metadata says, once ``ingest.provenance`` has pulled it out of the container.

Pure functions over bounded inputs (the container walk checked every size first): PNG text keys of
generation tools, XMP (IPTC ``DigitalSourceType``, ``xmp:CreatorTool``), EXIF (Software, UserComment),
and the generator-name matcher shared with ``ingest.c2pa_reader``. Each returns findings; none keeps state,
so all are safe to call from several threads at once.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from functools import lru_cache
from typing import Final
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from ingest.signals import Finding, FindingKind, FindingStatus

DST_PREFIX: Final = "http://cv.iptc.org/newscodes/digitalsourcetype/"
AI_SOURCE_TYPES: Final = frozenset(
    {"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia", "algorithmicMedia"}
)


def clip(text: str, n: int) -> str:
    """``text`` made printable and cut to ``n`` characters, for a record a moderator reads."""
    clean = "".join(c if c.isprintable() else " " for c in text[: n * 2])
    return clean if len(clean) <= n else clean[: n - 1] + "…"


def finding(kind: FindingKind, status: FindingStatus, detail: str) -> Finding:
    return Finding(kind=kind, status=status, detail=clip(detail, 300))


_A1111_MARKERS: Final = ("Steps: ", "Sampler: ", "CFG scale: ", "Seed: ")


def _a1111(text: str) -> bool:
    return "Steps: " in text and sum(m in text for m in _A1111_MARKERS) >= 2


# key -> (test on the text, what it is). The keys are those the tools write; the tests keep a chunk
# that merely reuses a common key ("prompt", "Comment") from being read as a generator's.
_TEXT_KEYS: Final[dict[str, tuple[Callable[[str], bool], str]]] = {
    "parameters": (_a1111, "Automatic1111 generation parameters"),
    "prompt": (lambda t: '"class_type"' in t, "ComfyUI prompt graph"),
    "workflow": (lambda t: '"nodes"' in t and '"links"' in t, "ComfyUI workflow"),
    "Dream": (lambda t: bool(t.strip()), "InvokeAI generation parameters"),
    "sd-metadata": (lambda t: bool(t.strip()), "InvokeAI generation metadata"),
    "invokeai_metadata": (lambda t: bool(t.strip()), "InvokeAI generation metadata"),
    "Comment": (lambda t: '"uc"' in t and '"steps"' in t, "NovelAI generation parameters"),
}


def text_findings(key: str, text: str, generators: tuple[str, ...]) -> list[Finding]:
    if key in ("Software", "Source"):
        named = matcher(generators)(text)
        if named:
            return [finding("png_text", "declared_ai", f"PNG text {key!r} names {named}")]
        return []
    rule = _TEXT_KEYS.get(key)
    if rule is None:
        return []
    test, what = rule
    if test(text):
        return [finding("png_text", "declared_ai", f"PNG text {key!r} ({what})")]
    return [finding("png_text", "present", f"PNG text {key!r} without generation markers")]


# -- generator names ----------------------------------------------------------------------------


@lru_cache(maxsize=8)
def matcher(names: tuple[str, ...]) -> Callable[[str], str | None]:
    """A function naming the first generator in a text (whole words, any case); cached per list."""
    alternatives = "|".join(re.escape(n.lower()) for n in sorted(names, key=len, reverse=True) if n)
    pattern = re.compile(rf"(?<![a-z0-9])(?:{alternatives or '(?!)'})(?![a-z0-9])")

    def match(text: str) -> str | None:
        text = text[:1000]
        lower = text.lower()
        m = pattern.search(lower)
        if m is None:
            return None
        # Report the name as written; a few characters change length when lowered, then it can't be.
        return text[m.start() : m.end()] if len(lower) == len(text) else m.group(0)

    return match


# -- XMP ----------------------------------------------------------------------------------------

_IPTC_DST: Final = "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}DigitalSourceType"
_RDF_RESOURCE: Final = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}resource"
_CREATOR_TOOL: Final = "{http://ns.adobe.com/xap/1.0/}CreatorTool"
_MAX_XMP_VALUES: Final = 8


def xmp_findings(packet: bytes, generators: tuple[str, ...]) -> list[Finding]:
    """DigitalSourceType and CreatorTool from one XMP packet (size already checked by the walk)."""
    try:
        root = fromstring(packet.rstrip(b"\x00 \t\r\n"), forbid_dtd=True)
    except DefusedXmlException as e:
        return [finding("iptc_xmp", "unreadable", f"XMP refused: {type(e).__name__} (DTD or entities)")]
    except ParseError as e:
        return [finding("iptc_xmp", "unreadable", f"XMP is not well-formed XML: {e}")]
    sources, tools = _xmp_values(root)
    findings = [_source_finding(v) for v in sources[:_MAX_XMP_VALUES]]
    named = matcher(generators)
    for tool in tools[:_MAX_XMP_VALUES]:
        if (gen := named(tool)) is not None:
            findings.append(
                finding("iptc_xmp", "declared_ai", f"XMP CreatorTool {clip(tool, 60)!r} names {gen}")
            )
    return findings


def _xmp_values(root: Element) -> tuple[list[str], list[str]]:
    """DigitalSourceType and CreatorTool values, written as attributes, element text or rdf:resource."""
    sources: list[str] = []
    tools: list[str] = []
    for el in root.iter():
        for name, into in ((_IPTC_DST, sources), (_CREATOR_TOOL, tools)):
            if name in el.attrib:
                into.append(el.attrib[name])
            if el.tag == name:
                into.append(el.get(_RDF_RESOURCE) or el.text or "")
    return [v.strip() for v in sources if v.strip()], [v.strip() for v in tools if v.strip()]


def _source_finding(value: str) -> Finding:
    code = value[len(DST_PREFIX) :] if value.startswith(DST_PREFIX) else value.rsplit("/", 1)[-1]
    if code in AI_SOURCE_TYPES:
        return finding("iptc_xmp", "declared_ai", f"IPTC DigitalSourceType {code}")
    if value.startswith(DST_PREFIX) and code.isalnum():
        return finding("iptc_xmp", "declared_other", f"IPTC DigitalSourceType {code}")
    return finding("iptc_xmp", "present", f"IPTC DigitalSourceType {clip(value, 80)!r} (not an IPTC code)")


# -- EXIF ---------------------------------------------------------------------------------------

_TYPE_SIZES: Final = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_SOFTWARE, _EXIF_IFD, _USER_COMMENT = 0x0131, 0x8769, 0x9286
_MAX_IFD_ENTRIES: Final = 1024


def exif_findings(block: bytes, generators: tuple[str, ...]) -> list[Finding]:
    """Software and UserComment from a TIFF-structured EXIF block; only IFD0 and the Exif IFD are read."""
    block = block.removeprefix(b"Exif\x00\x00")
    order = {b"II": "<", b"MM": ">"}.get(block[:2])
    if order is None or len(block) < 8 or struct.unpack_from(order + "H", block, 2)[0] != 42:
        return [finding("exif_software", "unreadable", "EXIF block has no TIFF header")]
    ifd0 = _ifd(block, order, struct.unpack_from(order + "I", block, 4)[0])
    findings: list[Finding] = []
    # EXIF says ASCII; writers put UTF-8 there ("DALL·E"), which ASCII text decodes as well.
    software = ifd0.get(_SOFTWARE, b"").split(b"\x00")[0].decode("utf-8", errors="replace").strip()
    if software:
        gen = matcher(generators)(software)
        status: FindingStatus = "declared_ai" if gen else "present"
        findings.append(finding("exif_software", status, f"EXIF Software {clip(software, 60)!r}"))
    pointer = ifd0.get(_EXIF_IFD, b"")
    if len(pointer) == 4:
        comment = _ifd(block, order, struct.unpack(order + "I", pointer)[0]).get(_USER_COMMENT, b"")
        if any(_a1111(text) for text in _comment_texts(comment)):
            findings.append(
                finding("exif_comment", "declared_ai", "EXIF UserComment (Automatic1111 parameters)")
            )
    return findings


def _ifd(block: bytes, order: str, offset: int) -> dict[int, bytes]:
    """The raw values of the tags this module reads, from the IFD at ``offset`` (bounds-checked)."""
    if offset + 2 > len(block):
        return {}
    count = min(struct.unpack_from(order + "H", block, offset)[0], _MAX_IFD_ENTRIES)
    values: dict[int, bytes] = {}
    for i in range(count):
        at = offset + 2 + 12 * i
        if at + 12 > len(block):
            break
        tag, typ, n = struct.unpack_from(order + "HHI", block, at)
        if tag not in (_SOFTWARE, _EXIF_IFD, _USER_COMMENT):
            continue
        size = n * _TYPE_SIZES.get(typ, 1)
        start = at + 8 if size <= 4 else struct.unpack_from(order + "I", block, at + 8)[0]
        if start + size <= len(block):
            values[tag] = block[start : start + size]
    return values


def _comment_texts(comment: bytes) -> list[str]:
    """UserComment decoded under its 8-byte character code; UNICODE's byte order is not recorded."""
    code, body = comment[:8], comment[8:]
    if code.startswith(b"UNICODE"):
        return [body.decode("utf-16-be", errors="replace"), body.decode("utf-16-le", errors="replace")]
    return [body.decode("latin-1")]
