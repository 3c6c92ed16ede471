"""harness.model_compare's ensemble row: the models' mean p_fake scored on the report split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.model_compare import ensemble
from retrainer.synthetic import make_synthetic_cifake
from scorer.models import create_model, final_linear
from scorer.weights import ModelMeta, save_weights


def _constant(path: Path, fake_logit: float) -> str:
    """A detector whose p_fake is sigmoid(2 * fake_logit) for every image."""
    model = create_model("fastnet_s")
    head = final_linear(model)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([-fake_logit, fake_logit]))
    meta = ModelMeta(arch="fastnet_s", split={"val_fraction": 0.5, "seed": 0, "report_fraction": 0.5})
    return str(save_weights(path, model, meta))


def test_ensemble_scores_the_mean_p_fake_on_the_report_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIFAKE_CACHE_DIR", str(tmp_path / "cache"))
    data = str(make_synthetic_cifake(tmp_path / "data", n_per_class=40, n_duplicates=0, n_corrupt=0))
    fake = _constant(tmp_path / "fake.safetensors", 2.0)
    leaning_real = _constant(tmp_path / "real.safetensors", -1.0)
    # Mean p_fake 0.5 * (sigmoid(4) + sigmoid(-2)) = 0.55: every image called fake, so the accuracy is the
    # share of fakes in the report split (half, by its stratification); constant scores rank nothing.
    out = ensemble([leaning_real, fake], data, None)
    assert out["n"] > 0
    assert out["accuracy_at_0.5"] == pytest.approx(0.5, abs=0.1)
    assert out["auroc"] == pytest.approx(0.5)
    # The real-leaning model, first in the list, calls everything real alone: the mean is what is scored.
    alone = ensemble([leaning_real], data, None)
    assert alone["accuracy_at_0.5"] == pytest.approx(1 - out["accuracy_at_0.5"])
