"""CPU seconds per component of the stack during a benchmark phase: where does each image's CPU go?

On a machine where the scorer shares its cores with Kafka, MinIO and PostgreSQL, the pipeline can never
reach the bare model's throughput; these figures say by how much each part costs. Components are process
trees: the scorer processes, and the stack's services found through the pid files of ``deploy/stack``
(``$CIFAKE_STACK_DIR/run/*.pid``; PostgreSQL's backends are children of its postmaster). A service whose
pid file is missing (a remote stack) is simply not reported.
"""

from __future__ import annotations

import os
import resource
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system CPU seconds) of ``pid``, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU seconds used so far by ``roots`` and all their living descendants."""
    stats = {}
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = st
            children[st[0]].append(int(entry.name))
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo += children.get(pid, [])
    return total


def stack_services(state_dir: str | None = None) -> dict[str, list[int]]:
    """Pids of the local stack's services by name (kafka brokers grouped), from its pid files."""
    run = (
        Path(state_dir or os.environ.get("CIFAKE_STACK_DIR") or Path(__file__).parents[1] / ".stack") / "run"
    )
    out: dict[str, list[int]] = defaultdict(list)
    for pidfile in sorted(run.glob("*.pid")) if run.is_dir() else []:
        try:
            pid = int(pidfile.read_text().strip())
        except ValueError:
            continue
        name = pidfile.stem.split("-")[0]  # kafka-2.pid -> kafka
        if name in ("kafka", "minio", "postgres"):
            out[name].append(pid)
    return dict(out)


class CpuMeter:
    """``start()`` then ``stop()``: CPU seconds each component used in between."""

    def __init__(self, components: dict[str, list[int]]) -> None:
        self.components = components
        self._before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {name: tree_cpu_seconds(pids) for name, pids in self.components.items()}

    def start(self) -> None:
        self._before = self._now()

    def stop(self) -> dict[str, float]:
        after = self._now()
        return {name: max(0.0, after[name] - self._before.get(name, 0.0)) for name in after}


def process_cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def per_call_cost(
    call: Callable[[], object], items: int, min_time: float, warmup: int = 3, min_calls: int = 5
) -> dict[str, float]:
    """Items per second and this process's CPU-ms per item of ``call``, which handles ``items`` items:
    ``warmup`` calls first, then at least ``min_calls`` calls and ``min_time`` seconds."""
    for _ in range(warmup):
        call()
    n, c0, t0 = 0, process_cpu_seconds(), time.perf_counter()
    while n < min_calls or time.perf_counter() - t0 < min_time:
        call()
        n += 1
    wall, cpu = time.perf_counter() - t0, process_cpu_seconds() - c0
    return {"images_per_s": round(n * items / wall, 1), "cpu_ms_per_image": round(1e3 * cpu / (n * items), 4)}


def machine_busy_seconds() -> float:
    """CPU seconds all cores of this machine have spent busy since boot (``/proc/stat``: everything but
    idle and iowait), to tell how much else ran beside a measurement."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK_TCK  # user nice system idle iowait irq softirq steal


class OthersMeter:
    """``start()`` then ``stop()``: the share of the machine's cores that processes other than this one
    kept busy in between (0.0 = nothing else ran, 1.0 = every core busy with something else)."""

    def start(self) -> None:
        self._t0, self._busy0, self._own0 = time.perf_counter(), machine_busy_seconds(), process_cpu_seconds()

    def stop(self) -> float:
        wall = time.perf_counter() - self._t0
        others = (machine_busy_seconds() - self._busy0) - (process_cpu_seconds() - self._own0)
        return max(0.0, others) / (wall * (os.cpu_count() or 1))
