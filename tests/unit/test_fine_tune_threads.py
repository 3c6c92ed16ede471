"""``fine_tune`` honours a fixed thread count itself: the drift bench's first champion is trained through
it directly, and with torch's default (all cores) it fought the machine's other jobs for both cores."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from retrainer.data import CifakeSplit
from retrainer.retrain import fine_tune
from retrainer.settings import TrainBudget
from scorer.models import create_model, list_models


@pytest.fixture
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _split(n: int) -> CifakeSplit:
    rng = np.random.default_rng(0)
    return CifakeSplit(
        images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        labels=np.arange(n, dtype=np.int64) % 2,
        categories=np.zeros(n, np.int64),
        hashes=np.array([bytes([i]) * 32 for i in range(n)], dtype="S32"),
        names=np.array([f"{i}.jpg" for i in range(n)]),
        fingerprint="test",
    )


@pytest.mark.usefixtures("restore_threads")
def test_fixed_thread_count_is_applied() -> None:
    torch.set_num_threads(2)
    arch = "baseline" if "baseline" in list_models() else list_models()[0]
    empty = np.zeros((0, 32, 32, 3), np.uint8)
    budget = TrainBudget(steps=2, batch_size=4, threads=1)
    fine_tune(create_model(arch), empty, np.zeros(0, np.int64), _split(8), budget)
    assert torch.get_num_threads() == 1
