"""``python -m ingest submit``: bad inputs give clear messages; non-zero exit only when nothing went in."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import pytest

from ingest.__main__ import main
from ingest.settings import StackSettings
from tests.intake_helpers import random_png
from tests.kafka_helpers import end_offsets
from tests.scorer_helpers import ScorerThread, make_weights, scorer_settings

pytestmark = pytest.mark.integration


def _submit(capsys: pytest.CaptureFixture[str], topic: str, *args: str) -> tuple[int, str, str]:
    code = main(["--log-level", "WARNING", "submit", "--topic", topic, "--no-progress", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_zip_with_non_images_submits_the_rest(
    stack: StackSettings, topic: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good.png", random_png())
        zf.writestr("readme.txt", "not an image")
        zf.writestr("liar.jpg", "text pretending to be a JPEG")
    code, _out, err = _submit(capsys, topic, str(archive), str(tmp_path / "missing.png"))
    assert code == 0, err
    assert f"{archive}!readme.txt: skipped, not an image file" in err
    assert f"{archive}!liar.jpg: refused, not_an_image" in err
    assert f"{tmp_path / 'missing.png'}: no such file or folder" in err
    assert "1 submitted, 0 already known, 1 refused" in err
    assert sum(end_offsets(stack, topic).values()) == 1


@pytest.mark.parametrize("kind", ["missing", "empty-folder", "only-bad"])
def test_nothing_submitted_exits_non_zero(
    stack: StackSettings, topic: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    if kind == "missing":
        path, expect = tmp_path / "nope", f"{tmp_path / 'nope'}: no such file or folder"
    elif kind == "empty-folder":
        path, expect = tmp_path / "empty", f"{tmp_path / 'empty'}: no images found (empty folder)"
        path.mkdir()
    else:
        path, expect = tmp_path / "bad.png", "bad.png: refused, not_an_image"
        path.write_text("nope")
    code, _out, err = _submit(capsys, topic, str(path))
    assert code == 1
    assert expect in err and "nothing could be submitted" in err
    assert sum(end_offsets(stack, topic).values()) == 0


def test_wait_prints_table_and_writes_csv(
    stack: StackSettings, topic: str, group: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(random_png())
    (folder / "sub" / "b.png").write_bytes(random_png())
    weights = make_weights(tmp_path / "w.safetensors", "submit-test-v1", seed=5)
    scorer = ScorerThread(stack, scorer_settings(topic, group, weights), max_records=2)
    out_csv = tmp_path / "out.csv"
    code, out, err = _submit(capsys, topic, str(folder), "--wait", "--timeout", "90", "--csv", str(out_csv))
    scorer.join()
    assert code == 0, err
    assert "inputs: submitted=2" in out and "submit-test-v1" in out
    rows = list(csv.DictReader(out_csv.open()))
    assert [Path(r["name"]).name for r in rows] == ["a.png", "b.png"]
    assert all(r["model_version"] == "submit-test-v1" and r["label"] for r in rows)
