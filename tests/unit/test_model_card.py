"""The model card: the training command it prints reproduces the stored config, and the targets table says
"not met" when a figure misses."""

from __future__ import annotations

import dataclasses
import shlex
from types import SimpleNamespace
from typing import Any

import pytest

import retrainer.train
from harness.model_card import render, split_models, targets_section, train_command
from retrainer.__main__ import main as retrainer_main
from retrainer.train import TrainConfig
from scorer.weights import ModelMeta


def _config() -> TrainConfig:
    return TrainConfig(
        data="/somewhere/cifake-train.zip",
        out="/root/.cache/runs/v4",
        arch="fastnet",
        width=24,
        epochs=110,
        jpeg_p=0.3,
        report_fraction=0.5,
        tta_flip=True,
        resume=True,
        teachers=["/x/v3.safetensors"],
        distill=0.25,
        version="v4",
        progress=False,
    )


def test_train_command_round_trips_through_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config()
    stored = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"}
    command = train_command(stored)
    assert "/somewhere" not in command and "/root" not in command  # no machine paths
    assert "--lr" not in command  # defaults are left out
    seen: list[TrainConfig] = []

    def fake_train(c: TrainConfig) -> Any:
        seen.append(c)
        return SimpleNamespace(weights="w", wall_s=0.0, meta=SimpleNamespace(metrics={}))

    monkeypatch.setattr(retrainer.train, "train", fake_train)
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "retrainer"]
    assert retrainer_main(argv[3:]) == 0
    parsed = dataclasses.asdict(seen[0])
    differ = {k for k in stored if parsed[k] != stored[k]}
    # Only what the card deliberately rewrites: paths, --resume and the progress bar.
    assert differ == {"data", "out", "resume", "teachers"}
    assert parsed["teachers"] == ["v3.safetensors"] and parsed["out"] == "runs/v4"


def _row(version: str, sha: str, acc: float, auroc: float, speed: float) -> dict[str, Any]:
    return {
        "version": version,
        "sha256": sha,
        "params": 165_490,
        "accuracy": acc,
        "accuracy_at_0.5": acc,
        "accuracy_dedup": acc,
        "threshold": 0.5,
        "auroc": auroc,
        "ece": 0.004,
        "counts": {"n": 10, "real": 5, "fake": 5, "unique": 10},
        "robustness_drop_points": {"jpeg_q50": 1.0},
        "bench_model": {
            "runtime": "onnxruntime",
            "device": "cpu (2 threads)",
            **{f"batch{b}_images_per_s": speed for b in (1, 32, 256)},
            "batch256_images_per_s_runs": [speed] * 3,
        },
    }


def test_targets_say_not_met_when_a_figure_misses() -> None:
    shipped = _row("v4", "a", 0.986, 0.9985, 990.0)
    table = "\n".join(targets_section(shipped, [_row("v3", "b", 0.98, 0.998, 1000.0)]))
    assert "| accuracy at 0.5 >= 98.5% | 98.60% | met |" in table
    assert "| AUROC >= 0.999 | 0.99850 | **not met** |" in table
    assert "| batch-256 throughput >= `v3`'s | 0.99x | **not met** |" in table


def test_render_puts_the_shipped_model_first_and_needs_its_row() -> None:
    compare = {
        "command": "python -m harness.model_compare ...",
        "machine": {"cpu": "AMD EPYC", "cores": 2},
        "models": {
            "old.safetensors": _row("", "b", 0.98, 0.998, 1000.0),
            "default": _row("v4", "a", 0.99, 0.9991, 1000.0),
        },
    }
    report = {
        "counts": {"n": 5},
        "accuracy": 0.99,
        "threshold": 0.4,
        "accuracy_at_0.5": 0.99,
        "auroc": 0.999,
        "average_precision": 0.999,
        "ece": 0.003,
        "precision": 0.99,
        "recall": 0.99,
        "f1": 0.99,
    }
    cfg = {k: v for k, v in dataclasses.asdict(_config()).items() if k != "progress"}
    meta = ModelMeta(
        arch="fastnet", arch_kwargs={"width": 24}, version="v4", train_config=cfg, metrics={"steps": 1}
    )
    card = render(meta, "a", compare, report)
    assert "| metric | `v4` | `old.safetensors` |" in card
    assert "| accuracy at threshold 0.5 | 99.00% | 98.00% |" in card
    with pytest.raises(SystemExit, match="no row for the shipped weights"):
        split_models(compare, "c")
