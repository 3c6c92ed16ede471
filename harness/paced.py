"""Paced capacity: the highest rate one scorer keeps up with when the load arrives paced, as uploads do.

A backlog hands the scorer full micro-batches of 256; paced load arrives a few records at a time, so each
micro-batch is smaller and pays the same fixed costs (PostgreSQL commit, Kafka flush, offset commit) over
fewer images. What one scorer drains from a backlog is therefore more than it sustains under paced load,
and a soak offered 80% of the backlog figure ran near that edge. This module finds the edge instead.

A probe offers ``rate`` references per second for ``step_s`` seconds to one running scorer and then
waits for the verdicts: the scorer *kept up* when the last verdict arrived within ``KEEP_UP_S`` of the
last send (a scorer 7% short of the rate ends a 30 s probe about 2 s behind) and the probe's p99
end-to-end latency stayed within ``slo_ms`` (a queue that grows for the whole probe, but not by 2 s, shows
there: a first version without it called 372/s "kept up" at a p99 of 1.5 s). The search bisects between
a low and a high rate for a fixed number of probes; the capacity is the highest rate that kept up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from harness.pipeline_bench import Bench, VerdictCollector
from harness.wait import wait_until

logger = logging.getLogger(__name__)

KEEP_UP_S = 2.0
SLO_MS = 500.0  # default latency objective of a probe (p99, submit -> verdict message)
DRAIN_S = 300.0  # an overloaded probe leaves a backlog; the next probe starts once it is scored
WARM_UP = 512  # two full micro-batches before the first probe, as the soak does


@dataclass(frozen=True)
class Probe:
    rate: float
    offered_per_s: float
    kept_up: bool
    behind_s: float  # last verdict minus last send
    p99_ms: float | None


def bisect(kept_up: Callable[[float], bool], lo: float, hi: float, probes: int) -> float | None:
    """The highest rate in ``[lo, hi]`` for which ``kept_up`` held, to within ``(hi - lo) / 2**probes``
    (None when no probe kept up). The first probe is the midpoint."""
    best: float | None = None
    for _ in range(probes):
        mid = (lo + hi) / 2
        if kept_up(mid):
            best, lo = mid, mid
        else:
            hi = mid
    return best


def probe(
    bench: Bench,
    keys: list[str],
    collector: VerdictCollector,
    prefix: str,
    rate: float,
    step_s: float,
    slo_ms: float,
) -> Probe:
    sent: dict[str, float] = {}
    offered = bench.paced(prefix, keys, rate, max(1, int(rate * step_s)), sent, bench.producer)
    last_send = max(sent.values())
    got = collector.got
    try:
        wait_until(
            lambda: all(i in got for i in sent), DRAIN_S, f"the verdicts of the {rate:.0f}/s probe", 0.1
        )
    except TimeoutError:
        logger.warning("probe at %.1f/s: not every verdict arrived within %.0f s", rate, DRAIN_S)
    arrived = [got[i] for i in sent if i in got]
    behind = (max(arrived) - last_send) if len(arrived) == len(sent) else float("inf")
    latencies = [(got[i] - s) * 1e3 for i, s in sent.items() if i in got]
    p99 = round(float(np.percentile(latencies, 99)), 1) if latencies else None
    kept_up = behind <= KEEP_UP_S and p99 is not None and p99 <= slo_ms
    result = Probe(round(rate, 1), round(offered, 1), kept_up, round(behind, 2), p99)
    logger.info("paced probe: %s", result)
    return result


def paced_capacity(
    bench: Bench, keys: list[str], lo: float, hi: float, probes: int, step_s: float, slo_ms: float = SLO_MS
) -> tuple[float | None, list[dict[str, Any]]]:
    """(capacity, the probes in order) for one scorer on a fresh topic of the running stack."""
    bench.new_topic("P")
    prefix = f"bench-{bench.run_id}-P-"
    group = f"bench-{bench.run_id}-P"
    collector = VerdictCollector(bench.stack, prefix)
    procs = [bench.start_scorer(group, 256, None)]
    done: list[Probe] = []
    try:
        warm = bench.publish("P", keys, WARM_UP)
        wait_until(lambda: all(i in collector.got for i in warm), 300, "warm-up verdicts")
        pause = threading.Event()

        def kept_up(rate: float) -> bool:
            if procs[0].poll() is not None:
                raise RuntimeError("the scorer exited during the paced search")
            done.append(probe(bench, keys, collector, f"{prefix}{len(done)}-", rate, step_s, slo_ms))
            pause.wait(1.0)  # let the last micro-batch's commit settle before the next probe's clock
            return done[-1].kept_up

        t0 = time.monotonic()
        capacity = bisect(kept_up, lo, hi, probes)
        logger.info("paced capacity %s images/s (%d probes, %.0f s)", capacity, probes, time.monotonic() - t0)
    finally:
        collector.close()
        bench.stop(procs)
    return (None if capacity is None else round(capacity, 1)), [asdict(p) for p in done]
