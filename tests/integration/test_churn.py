"""Rebalance churn against the real broker (issue #15), the short form of ``python -m harness.churn``.

Two real ``python -m scorer run`` processes of one group, on a private input topic: for 25 s one
joins or one leaves every 1.5-3 s (SIGTERM, every third leave a SIGKILL) while images are published; the
scorers left then drain the backlog. The group's committed offsets are sampled every 0.5 s throughout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.churn import ChurnConfig, run_churn, summary
from ingest.settings import StackSettings

pytestmark = pytest.mark.integration


def test_scorers_joining_and_leaving_lose_nothing_double_nothing_and_never_commit_backwards(
    stack: StackSettings, tmp_path: Path
) -> None:
    config = ChurnConfig(
        duration_s=25,
        scorers=2,
        images=330,
        min_gap_s=1.5,
        max_gap_s=3.0,
        drain_timeout_s=120,
        log_dir=tmp_path,
    )
    result = run_churn(stack, config)
    print(summary(result))
    counts, offsets, members = result["counts"], result["offsets"], result["membership"]
    assert counts["lost"] == 0, f"records committed but never scored: {offsets['lost_records']}"
    assert counts["duplicate_rows"] == 0
    assert counts["images_with_verdict"] == counts["submitted"] == config.images
    assert counts["images_without_verdict_message"] == 0
    assert counts["dlq"] == 0
    assert offsets["samples"] >= 20, "the committed offsets were sampled throughout"
    assert offsets["decreases"] == [], "a committed offset went back"
    assert offsets["not_drained"] == {}, "every partition committed up to its end"
    assert members["kills"] >= 1 and members["graceful_leaves"] >= 1 and members["joins"] >= 3, members
    assert not members["unexpected_exits"] and not members["failed_graceful_stops"], members
    assert result["failed"] == []
