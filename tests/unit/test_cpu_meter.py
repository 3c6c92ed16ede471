"""The benchmark's CPU accounting: process trees include live descendants; stack services come from pid
files. (An exited, reaped child's CPU is no longer in any /proc entry: the meter is read while the
processes it measures run, as the benchmark does.)"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import cpu_meter
from harness.cpu_meter import (
    CpuMeter,
    OthersMeter,
    machine_busy_seconds,
    per_call_cost,
    process_cpu_seconds,
    stack_services,
    tree_cpu_seconds,
)
from harness.wait import wait_until

# The grandchild burns 0.4 s of CPU, then waits on its stdin (inherited from the parent). The meter reads
# /proc's tick-sampled utime + stime, which can fall a tick or two short of the precise clock the spin loop
# uses: spinning exactly 0.3 s and waiting for 0.3 s timed out once in a full suite run.
SPIN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\ninput()\n"
PARENT = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {SPIN!r}])\n"


def test_a_live_grandchild_is_counted() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, text=True)
    meter = CpuMeter({"tree": [parent.pid], "nobody": [999_999_999]})
    meter.start()
    try:
        wait_until(lambda: tree_cpu_seconds([parent.pid]) >= 0.3, 30, "the grandchild to spend its 0.3 s")
        used = meter.stop()
    finally:
        parent.communicate("\n")
    assert used["tree"] >= 0.3 - 0.05  # the parent's own start-up may fall before start()
    assert used["nobody"] == 0.0
    assert tree_cpu_seconds([999_999_999]) == 0.0


def test_stack_services_from_pid_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name, pid in (("kafka-1", 11), ("kafka-2", 12), ("minio", 13), ("postgres", 14), ("intake", 15)):
        (run / f"{name}.pid").write_text(f"{pid}\n")
    (run / "kafka-3.pid").write_text("garbage")
    assert stack_services(str(tmp_path)) == {"kafka": [11, 12], "minio": [13], "postgres": [14]}
    assert stack_services(str(tmp_path / "missing")) == {}


def test_per_call_cost_counts_cpu_not_wall() -> None:
    def spin() -> None:
        end = time.process_time() + 0.004
        while time.process_time() < end:
            pass

    busy = per_call_cost(spin, items=4, min_time=0.05)
    idle = per_call_cost(lambda: time.sleep(0.004), items=4, min_time=0.05)
    assert busy["cpu_ms_per_image"] >= 0.9  # 4 ms of CPU per call of 4 items
    assert idle["cpu_ms_per_image"] < 0.2 < busy["cpu_ms_per_image"]
    assert 0 < busy["images_per_s"] <= 4 / 0.004 * 1.05


def test_machine_busy_includes_this_process() -> None:
    busy0, own0 = machine_busy_seconds(), process_cpu_seconds()
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    own = process_cpu_seconds() - own0
    # /proc/stat counts in clock ticks: allow two of them per core.
    assert machine_busy_seconds() - busy0 >= own - 4 / 100


def test_others_meter_leaves_out_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"busy": 100.0, "own": 10.0, "wall": 0.0}
    monkeypatch.setattr(cpu_meter, "machine_busy_seconds", lambda: clock["busy"])
    monkeypatch.setattr(cpu_meter, "process_cpu_seconds", lambda: clock["own"])
    monkeypatch.setattr(cpu_meter.time, "perf_counter", lambda: clock["wall"])
    monkeypatch.setattr(cpu_meter.os, "cpu_count", lambda: 2)
    meter = OthersMeter()
    meter.start()
    clock.update(busy=106.0, own=14.0, wall=4.0)  # 6 s busy in 4 s on 2 cores, 4 of them ours
    assert meter.stop() == pytest.approx(2.0 / 8.0)
