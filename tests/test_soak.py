"""A short soak (``python -m scorer bench --soak 40 --interval 10 --rate 20``) on the running stack: the
report has its keys, the scorer's memory is flat after the first interval and the consumer lag stays bounded.
The long soak (600 s at 80% of the measured maximum) is documented in the README's "Guarantees"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.settings import StackSettings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


def test_short_soak_has_flat_memory_and_bounded_lag(stack: StackSettings) -> None:
    cmd = [sys.executable, "-m", "scorer", "--log-level", "WARNING", "bench", "--n", "200"]
    cmd += ["--soak", "40", "--interval", "10", "--rate", "20"]
    result = subprocess.run(
        cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=600, check=False
    )
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output (exit {result.returncode}):\n{result.stderr[-4000:]}"
    report = json.loads(lines[-1])
    context = f"{json.dumps(report)}\n--- stdout\n{result.stdout[-2000:]}"
    assert {
        "rss_growth_pct",
        "p99_ms_per_interval",
        "max_lag",
        "final_lag",
        "flat_memory",
        "bounded_lag",
        "stable_p99",
    } <= set(report), context
    assert isinstance(report["stable_p99"], bool), context
    assert len(report["p99_ms_per_interval"]) == 4, context
    assert sum(line.startswith("soak: t=") for line in lines) == 4, context  # one line per interval
    assert report["offered"] == 800 and report["drained"], context
    assert report["flat_memory"] and report["rss_growth_pct"] < 5, context
    assert report["bounded_lag"] and report["max_lag"] <= report["lag_bound"], context
    assert result.returncode == 0, context
