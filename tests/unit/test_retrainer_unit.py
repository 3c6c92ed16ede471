"""Retrainer logic that needs no stack: the gate, the hold-out split, weight interpolation, time windows."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

from ingest.contracts import utcnow
from ingest.times import parse_since
from retrainer.retrain import gate, in_holdout, interpolate
from retrainer.settings import GateSettings
from scorer.models import create_model


def test_gate_rule() -> None:
    g = GateSettings(delta=0.02, epsilon=0.01, min_holdout=10)
    ok = {"n_holdout": 50, "holdout_gain": 0.05, "base_val_drop": 0.005}
    assert gate(ok, g)[0]
    assert gate(ok | {"holdout_gain": 0.02, "base_val_drop": 0.01}, g)[0]  # both bounds inclusive
    assert not gate(ok | {"holdout_gain": 0.01}, g)[0]
    assert "epsilon" in gate(ok | {"base_val_drop": 0.02}, g)[1][0]
    assert "min_holdout" in gate(ok | {"n_holdout": 3}, g)[1][0]
    assert not gate(ok | {"holdout_gain": None}, g)[0]


def test_holdout_split_is_stable_per_image() -> None:
    ids = [f"img-{i}" for i in range(2000)]
    first = [in_holdout(i, 0.2, 0) for i in ids]
    assert first == [in_holdout(i, 0.2, 0) for i in ids]
    assert 0.15 < sum(first) / len(ids) < 0.25
    assert first != [in_holdout(i, 0.2, 1) for i in ids]  # the seed picks another hold-out


def test_interpolate_averages_weights_and_keeps_integer_buffers() -> None:
    torch.manual_seed(0)
    a, b = create_model("fastnet_s"), create_model("fastnet_s")
    sd_a = {k: v.clone() for k, v in a.state_dict().items()}
    sd_b = {k: v.clone() for k, v in b.state_dict().items()}
    mixed = interpolate(a, b, 0.25).state_dict()
    for k, v in mixed.items():
        if v.dtype.is_floating_point:
            assert torch.allclose(v, 0.25 * sd_a[k] + 0.75 * sd_b[k], atol=1e-6), k
        else:
            assert torch.equal(v, sd_a[k]), k


def test_parse_since() -> None:
    assert abs((utcnow() - parse_since("2h")) - timedelta(hours=2)) < timedelta(seconds=5)
    assert parse_since("2026-11-27T01:00:00+00:00").hour == 1
    with pytest.raises(ValueError):
        parse_since("2026-11-27T01:00:00")
