"""The serving model pads batches to a few sizes (bounded CPU-kernel memory) without changing any output."""

from __future__ import annotations

import numpy as np
import pytest

from scorer.engine import ServingModel, padded_batch_size


@pytest.mark.parametrize(
    ("n", "padded"),
    [
        (1, 1),
        (2, 2),
        (3, 4),
        (9, 16),
        (17, 24),
        (32, 32),
        (33, 40),
        (64, 64),
        (65, 96),
        (250, 256),
        (256, 256),
        (300, 320),
    ],
)
def test_padded_batch_sizes(n: int, padded: int) -> None:
    assert padded_batch_size(n) == padded


def test_only_a_few_distinct_sizes_up_to_256() -> None:
    # 1, 2, 4, 8, then 16, 24, ..., 64, then 96, ..., 256
    assert len({padded_batch_size(n) for n in range(1, 257)}) == 17


def test_padding_does_not_change_predictions() -> None:
    model = ServingModel.load("default", "cpu")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 32, 32, 3), dtype=np.uint8)  # runs at 40
    together = model.predict(images)
    alone = np.concatenate([model.predict(images[i : i + 1]) for i in range(len(images))])
    assert together.shape == (37,)
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_warm_up_runs_each_padded_size_once() -> None:
    from scorer.engine import warm_up

    model = ServingModel.load("default", "cpu")
    assert warm_up(model, 256) == 17
    assert warm_up(model, 40) == 8  # 1, 2, 4, 8, 16, 24, 32, 40


def test_cpu_threads_default_to_half_the_cores_and_respect_the_setting() -> None:
    from scorer.service import cpu_threads

    assert cpu_threads(None, cpus=2) == 1  # the fetch threads and the stack need the other core
    assert cpu_threads(None, cpus=16) == 8
    assert cpu_threads(None, cpus=1) == 1
    assert cpu_threads(3, cpus=2) == 3  # CIFAKE_SCORER_THREADS wins
