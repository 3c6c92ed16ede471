"""Signals without the stack: what decides a label, the reasons in words, and `scorer score --known`."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ingest.known_csv import CsvRow, csv_text
from ingest.signals import Finding, KnownMatch, Provenance, Signals, reasons
from scorer.pdq import dihedral, to_hex
from scorer.signals import ImageSignals, decide
from tests.conftest import ROOT
from tests.known_helpers import encode, picture, png_with_parameters, recompressed

AI = Provenance(declared_ai=True, findings=(Finding(kind="png_text", status="declared_ai", detail="A1111"),))
MATCH = KnownMatch(entry_id=3, label="real", distance=9, image_id="img-1", moderators=2)


def _found(provenance: Provenance | None = None) -> ImageSignals:
    hashes, quality = dihedral(np.asarray(picture(1)))
    return ImageSignals(provenance=provenance, hashes=hashes, quality=quality)


@pytest.mark.parametrize(
    "model, match, prov, decides, want",
    [
        ("fake", None, None, True, ("fake", "model")),
        ("uncertain", None, AI, True, ("fake", "provenance")),
        ("real", None, AI, False, ("real", "model")),  # policy: provenance recorded, not deciding
        ("fake", MATCH, AI, True, ("real", "known_content")),  # moderators looked at this content
        ("real", None, Provenance(), True, ("real", "model")),  # no metadata says nothing
    ],
)
def test_what_decides_the_label(
    model: str, match: KnownMatch | None, prov: Provenance | None, decides: bool, want: tuple[str, str]
) -> None:
    label, signals = decide(model, _found(prov), match, decides)  # type: ignore[arg-type]
    assert (label, signals.decided_by) == want
    assert signals.pdq is not None and len(signals.pdq.hash) == 64
    assert signals.known == match


def test_reasons_say_why_in_words() -> None:
    s = Signals(decided_by="known_content", known=MATCH, provenance=AI)
    assert reasons(s) == [
        "matches image img-1 labelled real by 2 moderators, PDQ distance 9",
        "png_text: declared ai: A1111",
        "label set by known content; p_fake is the model's",
    ]
    imported = KnownMatch(entry_id=5, label="fake", distance=0, source="import")
    assert reasons(Signals(decided_by="known_content", known=imported))[0] == (
        "matches list entry 5 on an imported known-fake list, PDQ distance 0"
    )
    assert reasons(None) == []


def test_signals_block_rejects_an_unknown_version() -> None:
    with pytest.raises(ValueError):
        Signals.model_validate({"version": 2, "decided_by": "model"})


def test_offline_score_matches_a_known_list_and_reads_provenance(tmp_path: Path) -> None:
    """``scorer score --known list.csv``: a re-upload of a listed picture is decided by the list, a PNG with
    generation parameters by its metadata, anything else by the model."""
    listed = picture(21)
    arr = np.asarray(Image.open(_png(listed, tmp_path)).convert("RGB"))
    (tmp_path / "list.csv").write_text(csv_text([CsvRow(to_hex(dihedral(arr)[0][0]), "fake", "shared")]))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_reupload.jpg").write_bytes(recompressed(listed, size=96))
    (folder / "b_declared.png").write_bytes(png_with_parameters(picture(22)))
    (folder / "c_plain.jpg").write_bytes(encode(picture(23), "JPEG", quality=90))
    cmd = [sys.executable, "-m", "scorer", "score", str(folder), "--known", str(tmp_path / "list.csv")]
    out = subprocess.run([*cmd, "--quiet"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    rows = {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}
    assert rows["a_reupload.jpg"]["signals"]["decided_by"] == "known_content"
    assert rows["a_reupload.jpg"]["label"] == "fake"
    assert rows["b_declared.png"]["signals"]["decided_by"] == "provenance"
    assert rows["c_plain.jpg"]["signals"]["decided_by"] == "model"
    bad = tmp_path / "bad.csv"
    bad.write_text("pdq,label\nnot-a-hash,fake\n")
    proc = subprocess.run([*cmd[:-1], str(bad), "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "line 2: pdq must be 64 hex digits" in proc.stderr
    assert "Traceback" not in proc.stderr


def _png(img: Image.Image, folder: Path) -> Path:
    path = folder / "listed.png"
    path.write_bytes(encode(img, "PNG"))
    return path


def test_without_dihedral_variants_a_mirror_is_not_looked_up() -> None:
    """``dihedral=False`` hashes the image as given only: recompressed re-uploads still match, mirrored ones
    do not (the documented price of the cheaper setting); with the variants both do."""
    from scorer.known_index import Entry, KnownIndex
    from scorer.pdq import single
    from scorer.signals import SignalReader, SignalSettings, lookup

    pic = picture(31)
    original = np.asarray(pic)
    assert (single(original)[0][0] == dihedral(original)[0][0]).all()
    index = KnownIndex()
    index.apply([Entry(1, dihedral(original)[0][0].tobytes(), "fake", True)])
    edits = {
        "recompressed": np.asarray(Image.open(io.BytesIO(recompressed(pic, size=32))).convert("RGB")),
        "mirrored": np.ascontiguousarray(original[:, ::-1]),
    }
    for variants, want in ((True, {"recompressed", "mirrored"}), (False, {"recompressed"})):
        reader = SignalReader(SignalSettings(dihedral=variants))
        found = [ImageSignals() for _ in edits]
        for f, arr in zip(found, edits.values(), strict=True):
            reader.hash(arr, f)
        matched = {k for k, m in zip(edits, lookup(index, found, 0), strict=True) if m is not None}
        assert matched == want, variants


def test_trust_anchors_can_come_from_a_file(tmp_path: Path) -> None:
    """Operators mount their C2PA trust list as a PEM file
    (``CIFAKE_SCORER_SIGNALS__PROVENANCE__TRUST_ANCHORS_FILE``)."""
    from pydantic import ValidationError

    from ingest.provenance import ProvenanceSettings, read_provenance
    from tests.provenance_fixtures import c2pa_fixture, signing_ca

    pem = tmp_path / "anchors.pem"
    pem.write_text(signing_ca().ca_pem)
    settings = ProvenanceSettings(trust_anchors_file=str(pem))
    prov = read_provenance(c2pa_fixture(), settings)
    assert prov.declared_ai and prov.c2pa is not None and prov.c2pa.validation_state == "Trusted"
    assert read_provenance(c2pa_fixture(), ProvenanceSettings()).c2pa.validation_state == "Valid"  # type: ignore[union-attr]
    with pytest.raises(ValidationError, match=r"nowhere\.pem"):
        ProvenanceSettings(trust_anchors_file=str(tmp_path / "nowhere.pem"))
    (tmp_path / "empty.pem").write_text("not a certificate")
    with pytest.raises(ValidationError, match="holds no PEM certificate"):
        ProvenanceSettings(trust_anchors_file=str(tmp_path / "empty.pem"))
