"""Distillation (retrainer.distill): the targets mix labels and teacher probabilities as documented, and a
student trained with --teacher follows the teacher where it disagrees with the labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from retrainer.data import load_split
from retrainer.distill import soft_targets, teacher_p_fake
from retrainer.synthetic import make_synthetic_cifake
from retrainer.train import TrainConfig, train
from scorer.infer import p_fake_from_logits, predict_logits
from scorer.models import create_model, final_linear
from scorer.weights import ModelMeta, load_weights, save_weights


def test_soft_targets_mix_one_hot_labels_and_teacher_probabilities() -> None:
    labels = torch.tensor([0, 1, 1])
    p = torch.tensor([0.2, 0.9, 0.1])
    assert torch.equal(soft_targets(labels, p, 0.0), torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))
    assert torch.allclose(soft_targets(labels, p, 1.0), torch.tensor([[0.8, 0.2], [0.1, 0.9], [0.9, 0.1]]))
    mixed = soft_targets(labels, p, 0.5)
    assert torch.allclose(mixed[2], torch.tensor([0.45, 0.55]))
    assert torch.allclose(mixed.sum(1), torch.ones(3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        soft_targets(labels, p, 1.5)


def _always_fake_teacher(path: Path) -> Path:
    """A teacher that calls every image fake (p_fake ~ 0.993), whatever the label says."""
    model = create_model("fastnet_s")
    head = final_linear(model)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([-2.5, 2.5]))
    return save_weights(path, model, ModelMeta(arch="fastnet_s", version="always-fake"))


def test_teacher_p_fake_averages_the_teachers(tmp_path: Path) -> None:
    teacher = _always_fake_teacher(tmp_path / "t.safetensors")
    images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    p = teacher_p_fake([str(teacher), str(teacher)], images, torch.device("cpu"))
    assert p.shape == (10,) and np.allclose(p, 1 / (1 + np.exp(-5.0)), atol=1e-5)
    with pytest.raises(ValueError, match="at least one"):
        teacher_p_fake([], images, torch.device("cpu"))


def test_student_follows_the_teacher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFAKE_CACHE_DIR", str(tmp_path / "cache"))
    data = make_synthetic_cifake(tmp_path / "data", n_per_class=80, n_duplicates=4, n_corrupt=1)
    teacher = _always_fake_teacher(tmp_path / "teacher.safetensors")
    ds = load_split(str(data), "train")
    real = ds.images[ds.labels == 0]

    def real_called_fake(teachers: list[str], out: str) -> float:
        cfg = TrainConfig(
            data=str(data),
            arch="fastnet_s",
            out=str(tmp_path / out),
            epochs=3,
            batch_size=16,
            lr=0.05,
            val_fraction=0.25,
            jpeg_p=0.0,
            progress=False,
            threads=1,
            teachers=teachers,
            distill=1.0,
        )
        result = train(cfg)
        assert result.meta.train_config["teachers"] == teachers
        model, meta = load_weights(result.weights)
        return float((p_fake_from_logits(predict_logits(model, real, meta.mean, meta.std)) >= 0.5).mean())

    # Labels alone teach the student to call most real images real; a teacher that says fake for every
    # image, at full weight, overrules them.
    assert real_called_fake([], "labels") < 0.5
    assert real_called_fake([str(teacher)], "student") == 1.0
