"""Signals beside the classifier, per micro-batch: PDQ hashes, known-content matches, provenance.

Per image (in the decode threads): provenance is read from the original bytes before they are decoded,
and the PDQ hash (with its 8 flip/rotation variants) from the decoded pixels. Per micro-batch (in the
scoring thread): every hashable image is looked up in the known-content index in one call. Then
``decide`` sets the label: a moderator-confirmed match first (people looked at that content), then a
declared-AI provenance signal (when the policy lets it decide), then the model. ``p_fake`` is always the
model's and is recorded as such; a missing signal never changes the model's label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ConfigDict, Field

from ingest.provenance import ProvenanceSettings, read_provenance
from ingest.signals import KnownMatch, Pdq, Provenance, Signals
from ingest.topics import KNOWN_CONTENT_UPDATES
from scorer.engine import Label
from scorer.known_index import KnownIndex
from scorer.pdq import dihedral, single, to_hex

# PDQ's usual match distance (Meta's HMA and ThreatExchange).
DEFAULT_MATCH_DISTANCE = 31


class SignalSettings(BaseModel):
    """Nested in ``ScorerSettings`` as ``signals`` (``CIFAKE_SCORER_SIGNALS__MATCH_DISTANCE=24``)."""

    model_config = ConfigDict(frozen=True)

    # False: no PDQ, provenance or matching at all; verdicts carry no signals (the model alone decides).
    enabled: bool = True
    known_content: bool = True
    known_topic: str = KNOWN_CONTENT_UPDATES
    match_distance: int = Field(default=DEFAULT_MATCH_DISTANCE, ge=0, le=128)
    # True: look up the image's 8 flip/rotation variants (flipped or rotated re-uploads match). False: only
    # the image as given, for somewhat less hashing CPU (the variants come from the same DCT: scorer/pdq.py).
    dihedral: bool = True
    # Images whose hash has less quality are not looked up. 0 by default: the quality floor that matters is
    # the lists' (the retrainer keeps hashes of quality < 50 off them, as featureless pictures hash alike),
    # and a re-upload's quality drops with recompression (57 -> 48 seen on a 32x32 CIFAKE fake at JPEG q50),
    # so a floor on queries loses re-uploads while a false match still needs a listed hash within distance.
    min_quality: int = Field(default=0, ge=0, le=100)
    # How long a starting scorer waits for the lists before it scores anyway (and says so).
    ready_timeout_s: float = Field(default=60.0, ge=0)
    provenance: ProvenanceSettings = ProvenanceSettings()
    # True: metadata declaring a generator makes the verdict "fake". False: recorded and shown only.
    provenance_decides: bool = True


@dataclass
class ImageSignals:
    """What the decode thread found for one image."""

    provenance: Provenance | None = None
    # uint8 [8, 32]: the image's PDQ and its 7 flip/rotation variants ([1, 32] without the variants)
    hashes: np.ndarray | None = None
    quality: int = 0


@dataclass
class SignalMetrics:
    signals: Counter
    decided: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry, app: str = "scorer") -> SignalMetrics:
        return cls(
            signals=Counter(
                f"{app}_signals_total",
                "Signals seen per scored image: known_content (match_fake, match_real, no_match, "
                "low_quality) and provenance (declared_ai, declared_other, invalid, unreadable, none)",
                ["signal", "outcome"],
                registry=registry,
            ),
            decided=Counter(
                f"{app}_verdicts_decided_total",
                "Verdicts by what set their label: model, known_content, provenance",
                ["decided_by"],
                registry=registry,
            ),
        )


class SignalReader:
    """The per-image half, safe to call from several decode threads at once."""

    def __init__(self, settings: SignalSettings) -> None:
        self.settings = settings

    def provenance(self, data: bytes) -> Provenance | None:
        if not self.settings.provenance.enabled:
            return None
        return read_provenance(data, self.settings.provenance)

    def hash(self, rgb: np.ndarray, out: ImageSignals) -> None:
        out.hashes, out.quality = dihedral(rgb) if self.settings.dihedral else single(rgb)


def lookup(index: KnownIndex | None, found: list[ImageSignals], min_quality: int) -> list[KnownMatch | None]:
    """One index call for the hashable images of a micro-batch; None for the others."""
    out: list[KnownMatch | None] = [None] * len(found)
    if index is None or len(index) == 0:
        return out
    rows = [i for i, s in enumerate(found) if s.hashes is not None and s.quality >= min_quality]
    if not rows:
        return out
    matches = index.lookup(np.stack([found[i].hashes for i in rows]))  # type: ignore[misc]
    for i, m in zip(rows, matches, strict=True):
        out[i] = m
    return out


def decide(
    model_label: Label, found: ImageSignals, match: KnownMatch | None, provenance_decides: bool
) -> tuple[Label, Signals]:
    pdq = None
    if found.hashes is not None:
        pdq = Pdq(hash=to_hex(found.hashes[0]), quality=found.quality)
    prov = found.provenance
    label: Label = model_label
    decided_by: str = "model"
    if match is not None:
        label, decided_by = match.label, "known_content"
    elif prov is not None and prov.declared_ai and provenance_decides:
        label, decided_by = "fake", "provenance"
    signals = Signals(
        decided_by=decided_by,  # type: ignore[arg-type]  # one of the three literals above
        pdq=pdq,
        known=match,
        provenance=prov if prov is not None and (prov.findings or prov.c2pa) else None,
    )
    return label, signals


def observe(metrics: SignalMetrics, found: ImageSignals, signals: Signals, min_quality: int) -> None:
    m = metrics.signals
    if signals.known is not None:
        m.labels("known_content", f"match_{signals.known.label}").inc()
    elif found.hashes is None or found.quality < min_quality:
        m.labels("known_content", "low_quality").inc()
    else:
        m.labels("known_content", "no_match").inc()
    m.labels("provenance", _provenance_outcome(found.provenance)).inc()
    metrics.decided.labels(signals.decided_by).inc()


def _provenance_outcome(prov: Provenance | None) -> str:
    if prov is None or not prov.findings:
        return "none"
    if prov.declared_ai:
        return "declared_ai"
    statuses = {f.status for f in prov.findings}
    for status in ("invalid", "unreadable", "declared_other"):
        if status in statuses:
            return status
    return "none"
