"""``python -m scorer bench-model``: the last printed line is one JSON object with the agreed keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scorer.__main__ import main as scorer_main
from scorer.models import create_model
from scorer.weights import ModelMeta, save_weights


def test_bench_model_prints_one_json_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = save_weights(tmp_path / "w.safetensors", create_model("fastnet_s"), ModelMeta(arch="fastnet_s"))
    rc = scorer_main(["bench-model", "--weights", str(weights), "--device", "cpu", "--min-time", "0.01"])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last) == {
        "batch1_images_per_s",
        "batch32_images_per_s",
        "batch256_images_per_s",
        "device",
        "params",
        "runtime",
    }
    assert last["runtime"] == "onnxruntime"  # auto, on the CPU
    assert all(last[k] > 0 for k in ("batch1_images_per_s", "batch32_images_per_s", "batch256_images_per_s"))
    assert last["params"] == sum(p.numel() for p in create_model("fastnet_s").parameters())
