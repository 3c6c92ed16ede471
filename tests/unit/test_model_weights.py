"""Weights files: round trip, metadata, no pickle, atomic write, default resolution, preprocessing."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scorer.models import create_model
from scorer.preprocess import preprocess, preprocess_batch, to_model_rgb
from scorer.weights import (
    DEFAULT_WEIGHTS,
    META_KEY,
    ModelMeta,
    load_weights,
    read_meta,
    resolve_weights,
    save_weights,
)


def _meta() -> ModelMeta:
    return ModelMeta(
        arch="fastnet_s",
        threshold=0.42,
        temperature=1.3,
        data_fingerprint="abc123",
        split={"val_fraction": 0.1, "seed": 0},
        metrics={"val_accuracy": 0.9},
        version="v2",
        parent_version="v1",
    )


def test_round_trip_preserves_outputs_and_metadata(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("fastnet_s")
    # Give BatchNorm non-trivial running stats, so the test sees buffers travel too.
    model.train()
    model(torch.randn(16, 3, 32, 32))
    model.eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        expected = model(x)
    path = save_weights(tmp_path / "m.safetensors", model, _meta())
    loaded, meta = load_weights(path)
    with torch.inference_mode():
        got = loaded(x)
    torch.testing.assert_close(got, expected)
    assert meta == _meta() or (
        meta.to_json() == _meta().to_json().replace(_meta().created_at, meta.created_at)
    )
    assert meta.threshold == 0.42 and meta.parent_version == "v1" and meta.arch == "fastnet_s"
    assert not loaded.training


def test_file_is_plain_safetensors_with_json_metadata(tmp_path: Path) -> None:
    path = save_weights(tmp_path / "m.safetensors", create_model("baseline"), _meta())
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert json.loads(header["__metadata__"][META_KEY])["arch"] == "fastnet_s"
    assert b"\x80\x04" not in raw[:2]  # not a pickle stream
    assert read_meta(path).data_fingerprint == "abc123"
    assert not list(tmp_path.glob("*.tmp"))  # the temp file was renamed away


def test_meta_ignores_unknown_fields() -> None:
    raw = json.loads(_meta().to_json())
    raw["future_field"] = 1
    assert ModelMeta.from_json(json.dumps(raw)).version == "v2"


def test_resolve_weights() -> None:
    assert resolve_weights("default") == DEFAULT_WEIGHTS
    assert resolve_weights(None) == DEFAULT_WEIGHTS
    with pytest.raises(FileNotFoundError):
        resolve_weights("/nonexistent/weights.safetensors")


@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="default model not shipped yet")
def test_default_model_loads_and_is_small() -> None:
    assert DEFAULT_WEIGHTS.stat().st_size <= 5 * 1024 * 1024
    model, meta = load_weights("default")
    assert meta.input_size == 32 and 0.0 < meta.threshold < 1.0
    out = model(torch.randn(2, 3, meta.input_size, meta.input_size))
    assert out.shape == (2, 2) and torch.isfinite(out).all()


def test_preprocess_handles_modes_and_sizes() -> None:
    rgba = Image.new("RGBA", (64, 48), (10, 20, 30, 0))
    grey = Image.new("L", (32, 32), 128)
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for img in (rgba, grey, rgb):
        t = preprocess(img)
        assert t.shape == (3, 32, 32) and t.dtype == torch.float32
    # A transparent pixel becomes white, not black.
    assert to_model_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    # 32x32 RGB input is used as is.
    assert np.array_equal(np.asarray(to_model_rgb(rgb)), np.asarray(rgb))
    assert preprocess_batch([rgb, grey]).shape == (2, 3, 32, 32)
    assert preprocess_batch([]).shape == (0, 3, 32, 32)
