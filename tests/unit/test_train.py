"""Training: a tiny synthetic run end to end with resume, and (with the real zip) a few hundred real steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrainer.__main__ import main as retrainer_main
from retrainer.synthetic import make_synthetic_cifake
from retrainer.train import TrainConfig, lr_at, train
from scorer.weights import load_weights, read_meta

REAL_ZIP = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "cifake-train.zip"


@pytest.fixture
def tiny_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CIFAKE_CACHE_DIR", str(tmp_path / "cache"))
    return make_synthetic_cifake(tmp_path / "data", n_per_class=80, n_duplicates=4, n_corrupt=1)


def _cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        data=str(data),
        arch="fastnet_s",
        out=str(out),
        epochs=2,
        batch_size=16,
        lr=0.05,
        val_fraction=0.25,
        jpeg_p=0.5,
        progress=False,
        threads=0,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_lr_schedule_warms_up_and_decays() -> None:
    cfg = TrainConfig(data="x", lr=0.2, warmup=0.1)
    assert lr_at(0.0, cfg) == 0.0
    assert lr_at(0.1, cfg) == pytest.approx(0.2)
    assert lr_at(0.55, cfg) == pytest.approx(0.1)
    assert lr_at(1.0, cfg) == pytest.approx(0.0, abs=1e-12)


def test_train_writes_a_self_describing_model(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(_cfg(tiny_data, out, version="t1"))
    assert result.weights == out / "model.safetensors"
    meta = read_meta(result.weights)
    assert meta.arch == "fastnet_s" and meta.version == "t1"
    assert meta.split == {"val_fraction": 0.25, "seed": 0}
    assert meta.data_fingerprint and 0.05 <= meta.threshold <= 0.95 and meta.temperature > 0
    for key in ("val_accuracy", "val_auroc", "val_ece", "epochs_run"):
        assert key in meta.metrics
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    model, _ = load_weights(result.weights)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_resume_continues_from_the_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_cfg(tiny_data, out, epochs=3, max_steps=12))  # stops early, leaving a checkpoint
    first = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    result = train(_cfg(tiny_data, out, epochs=3, resume=True))
    rows = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert rows[: len(first)] == first
    assert rows[-1]["epoch"] == 3 and rows[-1]["step"] > first[-1]["step"]
    assert result.meta.metrics["epochs_run"] == 3


def test_fine_tune_records_the_parent(tiny_data: Path, tmp_path: Path) -> None:
    parent = train(_cfg(tiny_data, tmp_path / "a", epochs=1, version="parent-v1"))
    child = train(_cfg(tiny_data, tmp_path / "b", epochs=1, init=str(parent.weights), version="child-v2"))
    assert child.meta.parent_version == "parent-v1"


def test_cli_train(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = retrainer_main(
        [
            "train",
            "--data",
            str(tiny_data),
            "--arch",
            "baseline",
            "--out",
            str(tmp_path / "cli"),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--val-fraction",
            "0.25",
            "--no-progress",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(last["weights"]).exists() and "val_accuracy" in last


@pytest.mark.slow
@pytest.mark.skipif(not REAL_ZIP.exists(), reason="../shared/datasets/cifake-train.zip not present")
def test_real_data_few_hundred_steps_beats_80_percent(tmp_path: Path) -> None:
    # Uses the normal decode cache: the first run ever decodes the 100k JPEGs (~1 min on 2 cores).
    result = train(
        TrainConfig(
            data=str(REAL_ZIP),
            arch="fastnet_s",
            out=str(tmp_path / "real"),
            epochs=100,
            max_steps=300,
            batch_size=128,
            lr=0.1,
            max_train=40_000,
            jpeg_p=0.0,
            progress=False,
            threads=2,
        )
    )
    assert result.meta.metrics["val_accuracy"] > 0.80
