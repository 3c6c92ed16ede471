"""``scorer score`` reports every input it was given: a file it will not read gets a line with a reason."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from PIL import Image

from ingest.decode import DecodeLimits
from scorer.engine import ServingModel
from scorer.offline import iter_sources, score_sources
from tests.scorer_helpers import jpeg, make_weights


def _tiff() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, "TIFF")
    return buf.getvalue()


def test_every_input_gets_a_line(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg(1))
    (folder / "b.tiff").write_bytes(_tiff())  # a real image, but not a name the scorer reads
    (folder / "c.txt").write_text("notes")
    (folder / "d.png").write_bytes(_tiff())  # an image name with a format that is not allowed
    archive = tmp_path / "in.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("x.jpg", jpeg(2))
        zf.writestr("y.tif", _tiff())
    model = ServingModel.load(make_weights(tmp_path / "w.safetensors", "offline-inputs", seed=1), "cpu")
    limits = DecodeLimits(max_bytes=1 << 20)
    rows = list(score_sources(iter_sources([folder, archive], limits), model, limits, band=0.1))
    by_name = {Path(r["path"].split("!")[-1]).name: r for r in rows}
    assert sorted(by_name) == ["a.jpg", "b.tiff", "c.txt", "d.png", "x.jpg", "y.tif"]
    assert "p_fake" in by_name["a.jpg"] and "p_fake" in by_name["x.jpg"]
    for skipped in ("b.tiff", "c.txt", "y.tif"):
        assert by_name[skipped]["error"] == "skipped_suffix", by_name[skipped]
        assert "not an image file name" in by_name[skipped]["reason"]
    assert by_name["d.png"]["error"] == "format_not_allowed"
