"""The shared consumer loop against the real Kafka broker started by deploy/stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from harness.wait import wait_until
from ingest.contracts import DeadLetter, ImageSubmitted, decode, encode, utcnow
from ingest.errors import TransientError
from ingest.loop import Batch, ConsumerLoop
from ingest.metrics import LoopMetrics, new_registry, serve_metrics
from ingest.settings import StackSettings
from tests.conftest import ROOT
from tests.kafka_helpers import committed, end_offsets, make_loop, produce, read_all

pytestmark = pytest.mark.integration


def values(n: int, prefix: str = "r") -> list[tuple[bytes, bytes]]:
    return [(f"k{i}".encode(), f"{prefix}{i}".encode()) for i in range(n)]


def test_round_trip_processes_everything_and_commits(stack: StackSettings, topic: str, group: str) -> None:
    produce(stack, topic, values(120))
    seen: list[bytes] = []
    registry = new_registry()
    metrics = LoopMetrics.create("looptest", registry)
    _server, port = serve_metrics(registry, "127.0.0.1", 0)

    stats = make_loop(
        stack, topic, group, lambda b: seen.extend(r.value or b"" for r in b.records), metrics=metrics
    ).run(max_records=120, idle_timeout=60)
    assert stats.processed == 120 and stats.stopped_by == "max_records"
    assert sorted(seen) == sorted(v for _, v in values(120))
    assert committed(stack, group, topic) == end_offsets(stack, topic)

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert f'looptest_records_total{{outcome="processed",topic="{topic}"}} 120.0' in body
    assert "looptest_batch_size_records_bucket" in body


def test_poison_records_go_to_dlq_with_reason_and_the_rest_is_processed(
    stack: StackSettings, topic: str, group: str
) -> None:
    good = [
        ImageSubmitted(image_id=f"img{i}", ref=f"s3://images/img{i}", submitted_at=utcnow(), source="test")
        for i in range(18)
    ]
    items = [(m.image_id.encode(), encode(m)) for m in good]
    items.insert(5, (b"bad1", b"{not json"))
    items.insert(12, (b"bad2", b'{"image_id":"x","submitted_at":"2026-01-01T00:00:00Z","source":"s"}'))
    produce(stack, topic, items)
    processed: list[str] = []

    def handle(batch: Batch) -> None:
        # Raising (not batch.fail) on purpose: the loop must isolate the poison record itself.
        parsed = [decode(ImageSubmitted, r.value) for r in batch.records]
        processed.extend(m.image_id for m in parsed)

    stats = make_loop(stack, topic, group, handle).run(max_records=20, idle_timeout=60)
    assert sorted(processed) == sorted(m.image_id for m in good)
    assert stats.dead_lettered == 2

    letters = [decode(DeadLetter, v) for *_, v in read_all(stack, topic + ".dlq", expect=2)]
    assert sorted(dl.key_b64 or "" for dl in letters) == ["YmFkMQ==", "YmFkMg=="]  # b"bad1", b"bad2"
    by_key = {dl.key_b64: dl for dl in letters}
    assert by_key["YmFkMQ=="].payload() == b"{not json"
    assert "invalid ImageSubmitted" in by_key["YmFkMQ=="].reason
    assert "exactly one of ref or inline" in by_key["YmFkMg=="].reason
    assert all(
        dl.topic == topic and dl.error_class == "InvalidMessage" and dl.service == "test" for dl in letters
    )
    assert committed(stack, group, topic) == end_offsets(stack, topic)


def test_transient_failure_commits_nothing_and_a_restart_processes_the_records(
    stack: StackSettings, topic: str, group: str
) -> None:
    produce(stack, topic, values(10))
    calls = 0
    loop: ConsumerLoop

    def failing(batch: Batch) -> None:
        nonlocal calls
        calls += 1
        if calls >= 3:
            loop.stop()
        raise TransientError("database unavailable")

    loop = make_loop(stack, topic, group, failing)
    stats = loop.run(idle_timeout=60)
    assert calls >= 3 and stats.retries >= 3 and stats.processed == 0
    assert committed(stack, group, topic) == {}

    seen: list[bytes] = []
    make_loop(stack, topic, group, lambda b: seen.extend(r.value or b"" for r in b.records)).run(
        max_records=10, idle_timeout=60
    )
    assert sorted(seen) == sorted(v for _, v in values(10))
    assert committed(stack, group, topic) == end_offsets(stack, topic)


def _start_worker(topic: str, group: str, out: Path, work: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.loop_worker",
            topic,
            group,
            str(out),
            "--batch",
            "10",
            "--work",
            str(work),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _drain_rest(stack: StackSettings, topic: str, group: str) -> list[str]:
    """Everything after the group's committed offsets: run until that many records came, not for a fixed idle
    time (joining the group can take longer than any idle timeout on a loaded machine)."""
    done, end = committed(stack, group, topic), end_offsets(stack, topic)
    pending = sum(off - done.get(p, 0) for p, off in end.items())
    rest: list[str] = []
    if pending:
        loop = make_loop(
            stack, topic, group, lambda b: rest.extend((r.value or b"").decode() for r in b.records)
        )
        loop.run(max_records=pending, idle_timeout=120)
    return rest


def test_sigterm_mid_batch_finishes_commits_and_loses_nothing(
    stack: StackSettings, topic: str, group: str, tmp_path: Path
) -> None:
    produce(stack, topic, values(300))
    out = tmp_path / "processed.txt"
    proc = _start_worker(topic, group, out, work=0.3)
    try:
        wait_until(lambda: len(_lines(out)) >= 30, 90, "the worker to process 30 records")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert '"stopped_by": "signal"' in output
    first = _lines(out)
    assert 30 <= len(first) < 300  # it stopped in the middle of the stream

    rest = _drain_rest(stack, topic, group)
    counts = Counter(first + rest)
    assert set(counts) == {f"r{i}" for i in range(300)}  # nothing lost
    assert max(counts.values()) == 1  # graceful stop committed its last batch: nothing repeated
    assert committed(stack, group, topic) == end_offsets(stack, topic)


def test_second_signal_exits_at_once_and_the_batch_is_redelivered(
    stack: StackSettings, topic: str, group: str, tmp_path: Path
) -> None:
    produce(stack, topic, values(60))
    out = tmp_path / "processed.txt"
    proc = _start_worker(topic, group, out, work=30)  # a batch that would take 30 s
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_until(lambda: len(_lines(out)) >= 10, 90, "the first batch to be written")
        proc.send_signal(signal.SIGTERM)
        # Two signals sent back to back can coalesce into one, so wait until the first was seen.
        wait_until(lambda: any("finishing the current batch" in line for line in log), 20, "the first signal")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        reader.join(timeout=5)
    finally:
        proc.kill()
    output = "".join(log)
    assert proc.returncode == 128 + signal.SIGTERM, output
    first = _lines(out)
    rest = _drain_rest(stack, topic, group)
    # The interrupted batch was written but never committed, so it comes again: at least once.
    assert set(first + rest) == {f"r{i}" for i in range(60)}
    assert set(first) <= set(rest)
