"""Rendering (map PNG, overlay PNG, sidecar), map statistics, object keys, and the offline --explain flag."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from explainer.__main__ import main as explainer_main
from explainer.render import (
    BORDER_FRACTION,
    OVERLAY_SIZE,
    border_mask,
    map_png,
    map_stats,
    overlay_array,
    render,
)
from explainer.sink import object_keys
from tests.scorer_helpers import jpeg, make_weights


def _img(seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_map_png_is_8bit_grayscale_at_input_resolution() -> None:
    m = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    with Image.open(io.BytesIO(map_png(m))) as im:
        assert im.format == "PNG" and im.mode == "L" and im.size == (32, 32)
        px = np.asarray(im)
    assert px[0, 0] == 0 and px[-1, -1] == 255
    assert np.abs(px.astype(int) - np.rint(m * 255)).max() == 0


def test_overlay_is_nearest_neighbour_enlarged_rgb() -> None:
    image, m = _img(1), np.random.default_rng(2).random((32, 32)).astype(np.float32)
    out = overlay_array(image, m)
    assert out.shape == (OVERLAY_SIZE, OVERLAY_SIZE, 3) and out.dtype == np.uint8
    block = OVERLAY_SIZE // 32
    # Every model pixel is a uniform block: nothing interpolated, no legend drawn over the image.
    tiles = out.reshape(32, block, 32, block, 3)
    assert (tiles == tiles[:, :1, :, :1, :]).all()
    # The blend moves with the map: a hotter map pixel over the same image pixel is brighter (inferno).
    flat = np.full((32, 32), 0.0, np.float32)
    hot = flat.copy()
    hot[5, 7] = 1.0
    grey = np.full((32, 32, 3), 128, np.uint8)
    a, b = overlay_array(grey, flat), overlay_array(grey, hot)
    assert b[5 * block, 7 * block].sum() > a[5 * block, 7 * block].sum()
    assert np.array_equal(a[0, 0], b[0, 0])


def test_sidecar_fields_and_mass_shares() -> None:
    m = np.zeros((32, 32), np.float32)
    m[0, 0] = 1.0  # all mass in the border ring, peak at the corner
    m[16, 20] = 0.5
    r = render(
        _img(), m, method="gradcam", layer="features.4", target="fake", model_version="v7", p_fake=0.93
    )
    doc = json.loads(r.sidecar_bytes)
    for key in (
        "method",
        "layer",
        "target",
        "model_version",
        "p_fake",
        "border_share",
        "centre_share",
        "peak",
    ):
        assert key in doc, key
    assert doc["method"] == "gradcam" and doc["layer"] == "features.4" and doc["target"] == "fake"
    assert doc["model_version"] == "v7" and doc["p_fake"] == pytest.approx(0.93)
    assert doc["border_share"] == pytest.approx(1.0 / 1.5, abs=1e-6)
    assert doc["centre_share"] == pytest.approx(0.5 / 1.5, abs=1e-6)
    assert doc["border_area_share"] == pytest.approx(1 - (24 / 32) ** 2)
    assert doc["peak"] == {"row": 0, "col": 0}
    # No timestamp: a replay writes byte-identical objects.
    again = render(
        _img(), m, method="gradcam", layer="features.4", target="fake", model_version="v7", p_fake=0.93
    )
    assert again.sidecar_bytes == r.sidecar_bytes and again.overlay_png == r.overlay_png


def test_all_zero_map_has_no_shares_but_valid_json() -> None:
    doc = json.loads(
        render(
            _img(),
            np.zeros((32, 32), np.float32),
            method="gradcam",
            layer="l",
            target="fake",
            model_version="v",
            p_fake=0.1,
        ).sidecar_bytes
    )
    assert doc["border_share"] is None and doc["centre_share"] is None


@settings(max_examples=50, deadline=None)
@given(st.integers(8, 64), st.integers(0, 2**31 - 1))
def test_uniform_map_puts_the_area_share_on_the_border(size: int, seed: int) -> None:
    ring = border_mask(size)
    assert ring.mean() == pytest.approx(map_stats(np.ones((size, size))).border_share)
    w = max(1, round(size * BORDER_FRACTION))
    assert ring[w - 1, size // 2] and not ring[w, size // 2]  # the ring is w pixels wide
    m = np.random.default_rng(seed).random((size, size))
    s = map_stats(m)
    assert 0.0 <= s.border_share <= 1.0 and s.border_share + s.centre_share == pytest.approx(1.0)
    assert m[s.peak_row, s.peak_col] == m.max()


@pytest.mark.parametrize(
    "image_id", ["abc", "a" * 64, "x.y:z-1", "..", "../etc/passwd", "a/b", "", ".hidden", "a..b", "é"]
)
def test_object_keys_stay_under_their_image_prefix(image_id: str) -> None:
    keys = object_keys(image_id, "v1", "gradcam")
    assert set(keys) == {"map", "overlay", "sidecar"}
    prefixes = {k.split("/")[0] for k in keys.values()}
    assert len(prefixes) == 1
    for k in keys.values():
        parts = k.split("/")
        assert len(parts) == 4 and not k.startswith("/")
        assert all(p and p not in {".", ".."} and ".." not in p for p in parts)
    assert keys["map"].endswith("/v1/gradcam/map.png") and keys["sidecar"].endswith("sidecar.json")
    assert object_keys(image_id, "v1", "gradcam") == keys  # derived, stable
    assert object_keys(image_id, "v2", "gradcam") != keys and object_keys(image_id, "v1", "hirescam") != keys


def test_scorer_score_explain_writes_overlays_and_sidecars(tmp_path: Path) -> None:
    weights = make_weights(tmp_path / "w.safetensors", "offline-v1", seed=3)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        (src / f"{i}.jpg").write_bytes(jpeg(100 + i))
    (src / "broken.png").write_bytes(b"not an image")
    out, expl = tmp_path / "scores.jsonl", tmp_path / "expl"
    rc = explainer_main(
        [
            "score",
            str(src),
            "--weights",
            str(weights),
            "--device",
            "cpu",
            "--out",
            str(out),
            "--explain",
            str(expl),
            "--quiet",
            "--batch",
            "2",
        ]
    )
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    scored = [r for r in rows if "label" in r]
    assert len(scored) == 5 and len(rows) == 6
    for r in scored:
        sidecar = Path(r["explanation"]["gradcam"])
        doc = json.loads(sidecar.read_text())
        assert doc["model_version"] == "offline-v1" and doc["image_id"] == r["image_id"]
        assert doc["p_fake"] == pytest.approx(r["p_fake"], abs=1e-5)
        with Image.open(sidecar.parent / "overlay.png") as im:
            assert im.size == (OVERLAY_SIZE, OVERLAY_SIZE) and im.mode == "RGB"
        with Image.open(sidecar.parent / "map.png") as im:
            assert im.size == (32, 32) and im.mode == "L"
    assert len(list(expl.rglob("*.png"))) == 10 and len(list(expl.rglob("*.json"))) == 5
