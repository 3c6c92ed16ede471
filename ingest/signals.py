"""The ``signals`` block of a verdict: evidence beside the classifier, and which of it decided the label.

Two kinds of signal can decide a verdict before the model's ``p_fake`` does:

- ``known``: the image's PDQ perceptual hash (or one of its flips/rotations) is within the configured
  Hamming distance of an entry on a moderator-fed known-content list;
- ``provenance``: the bytes declare that a generator made them (C2PA content credentials, IPTC
  ``DigitalSourceType`` in XMP, generation parameters in PNG text chunks or EXIF).

``p_fake`` is always computed and recorded; ``decided_by`` says what set the label. Absence of a signal
says nothing: no metadata never lowers ``p_fake`` or turns a verdict ``real``.

The block carries its own ``version`` so that it can evolve without a new ``Verdict`` schema version;
consumers refuse a version they do not know (pydantic rejects the unknown literal).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

SIGNALS_VERSION = 1
PDQ_HEX = r"^[0-9a-f]{64}$"

Detail = Annotated[str, Field(max_length=300)]
DecidedBy = Literal["model", "known_content", "provenance"]
ListLabel = Literal["real", "fake"]
FindingKind = Literal["c2pa", "iptc_xmp", "png_text", "exif_software", "exif_comment"]
# declared_ai: the metadata says a generator made the image; declared_other: it names a source that is not
# a generator (e.g. digitalCapture); present: metadata of this kind exists and says neither; unreadable:
# it exists but could not be parsed within the limits; invalid: a C2PA manifest that fails validation
# (e.g. its hash no longer matches the pixels).
FindingStatus = Literal["declared_ai", "declared_other", "present", "unreadable", "invalid"]
C2paState = Literal["Invalid", "Valid", "Trusted"]


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pdq(_Block):
    """PDQ of the decoded pixels (hex of the 256 bits) and its quality (0-100; < 50: featureless)."""

    hash: str = Field(pattern=PDQ_HEX)
    quality: int = Field(ge=0, le=100)


class KnownMatch(_Block):
    """The nearest active known-content entry within the match distance."""

    entry_id: int = Field(ge=1)
    label: ListLabel
    distance: int = Field(ge=0, le=256)
    image_id: str | None = Field(default=None, max_length=128)  # the labelled image, for moderation entries
    moderators: int = Field(default=0, ge=0)  # how many moderators agree on the label (0: imported entry)
    source: Literal["moderation", "import"] = "moderation"


class Finding(_Block):
    kind: FindingKind
    status: FindingStatus
    detail: Detail = ""


class C2pa(_Block):
    """What a C2PA manifest store says, read from the original bytes (never fetched remotely)."""

    validation_state: C2paState | None = None
    digital_source_type: str | None = Field(default=None, max_length=200)
    claim_generator: str | None = Field(default=None, max_length=200)
    signer: str | None = Field(default=None, max_length=200)
    codes: tuple[Annotated[str, Field(max_length=100)], ...] = Field(default=(), max_length=16)


class Provenance(_Block):
    """Everything read from the metadata; ``declared_ai`` is true when any finding declares a generator."""

    declared_ai: bool = False
    findings: tuple[Finding, ...] = Field(default=(), max_length=16)
    c2pa: C2pa | None = None


class Signals(_Block):
    version: Literal[1] = 1
    decided_by: DecidedBy = "model"
    pdq: Pdq | None = None
    known: KnownMatch | None = None
    provenance: Provenance | None = None


def reasons(signals: Signals | None) -> list[str]:
    """One sentence per signal, for moderators: why the label is what it is, and what else was seen."""
    if signals is None:
        return []
    out = []
    k = signals.known
    if k is not None:
        who = (
            f"labelled {k.label} by {k.moderators} moderator{'s' if k.moderators != 1 else ''}"
            if k.source == "moderation"
            else f"on an imported known-{k.label} list"
        )
        what = f"image {k.image_id}" if k.image_id else f"list entry {k.entry_id}"
        out.append(f"matches {what} {who}, PDQ distance {k.distance}")
    p = signals.provenance
    if p is not None:
        out += [f"{f.kind}: {f.status.replace('_', ' ')}: {f.detail}".rstrip(": ") for f in p.findings]
    if signals.decided_by == "model":
        out.append("label from the model's p_fake")
    else:
        out.append(f"label set by {signals.decided_by.replace('_', ' ')}; p_fake is the model's")
    return out
