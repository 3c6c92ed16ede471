"""harness.paced.bisect: the paced capacity search finds the edge of a scorer that keeps up below it."""

from __future__ import annotations

import pytest

from harness.paced import bisect


@pytest.mark.parametrize("edge", [150.0, 333.3, 590.0])
def test_bisect_finds_the_highest_rate_kept_up_within_its_resolution(edge: float) -> None:
    tried: list[float] = []

    def kept_up(rate: float) -> bool:
        tried.append(rate)
        return rate <= edge

    best = bisect(kept_up, 100.0, 600.0, probes=6)
    assert best is not None
    assert best <= edge < best + 500.0 / 2**6 + 1e-9
    assert len(tried) == 6 and tried[0] == 350.0


def test_bisect_reports_none_when_nothing_kept_up() -> None:
    assert bisect(lambda rate: False, 100.0, 600.0, probes=4) is None
