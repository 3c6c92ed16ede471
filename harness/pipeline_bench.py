"""``python -m harness.pipeline``: end-to-end throughput and latency of the streaming scorer, real stack.

Phases, all in one run on the same machine (last stdout line is one JSON object):

1. raw model: the bare model at batch 256 and batch 1 on the scorer's device (``raw_images_per_s``);
2. backlog, one scorer: N references are published, then one ``scorer run`` process drains them;
   throughput is measured from the verdicts' ``scored_at`` span (``images_per_s``);
3. backlog, two scorers on a 2-partition topic (``two_scorers_images_per_s`` and how many each got);
4. backlog, one scorer with micro-batches of 1 (``batch1_images_per_s``): why batching matters;
5. backlog, one scorer, the same images inline in the messages (``inline_images_per_s``), storing every
   image (the default), then storing none (``inline_unstored_images_per_s``);
6. fixed-rate load (``--rate``, default half of phase 2's throughput) for ``--duration`` seconds
   against a warm scorer; latency is submit time -> the verdict message arriving on images.verdicts.

``--soak SECONDS`` runs a long fixed-rate load instead (memory, p99, lag over time): see ``harness/soak.py``.

Images are uploaded once to the ``images`` bucket; each phase publishes references under fresh image ids
on a topic of its own (2 partitions), so no phase re-reads another's records. Its verdicts are real rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from harness.bench_inputs import inline_message, prepare_images, reference_message, upload
from harness.cpu_meter import CpuMeter, stack_services
from harness.machine import publish
from harness.topics import create_topics
from harness.wait import wait_until
from ingest.contracts import encode
from ingest.db import connect
from ingest.kafka import make_admin, make_producer
from ingest.settings import KafkaSettings, StackSettings, load
from ingest.storage import S3Store
from ingest.topics import IMAGES_VERDICTS

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]


def stable_members(kafka: KafkaSettings, group: str) -> int:
    """Members of ``group`` once it is Stable (0 while it rebalances or does not exist)."""
    admin = make_admin(kafka)
    try:
        info = admin.describe_groups([group]).get(group) or {}
    finally:
        admin.close()
    return len(info.get("members") or []) if info.get("group_state") == "Stable" else 0


class VerdictCollector:
    """Reads ``images.verdicts`` from its current end on a thread and records, per image id starting with
    ``prefix``, the wall-clock time its first verdict message arrived (``got``)."""

    def __init__(self, stack: StackSettings, prefix: str) -> None:
        self.prefix = prefix
        self.got: dict[str, float] = {}
        self._consumer = KafkaConsumer(**stack.kafka.client_kwargs(), enable_auto_commit=False)
        tps = [
            TopicPartition(IMAGES_VERDICTS, p)
            for p in sorted(self._consumer.partitions_for_topic(IMAGES_VERDICTS) or [])
        ]
        self._consumer.assign(tps)
        self._consumer.seek_to_end(*tps)
        for tp in tps:
            self._consumer.position(tp)  # resolve "end" now, before anything is published
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True, name="verdict-collector")
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            for msgs in self._consumer.poll(timeout_ms=100).values():
                now = time.time()
                for m in msgs:
                    # The bench keys every reference by its image id and the scorer keys the verdict by the
                    # reference's key: no need to parse each verdict (the collector shares the cores).
                    if m.key and (image_id := m.key.decode()).startswith(self.prefix):
                        self.got.setdefault(image_id, now)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()


class Bench:
    def __init__(self, stack: StackSettings, args: argparse.Namespace) -> None:
        self.stack = stack
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.topic = ""
        self.topics: list[str] = []
        # Backlogs are published as fast as possible (batches of 20 ms); fixed-rate load goes through the
        # service's default producer (5 ms linger, as the intake sends), because the linger of the producer
        # is part of every latency the bench measures from the moment of ``send``.
        self.producer = make_producer(stack.kafka, linger_ms=20)
        self.paced_producer = make_producer(stack.kafka)

    def new_topic(self, phase: str) -> None:
        """Switch to a fresh 2-partition topic (and its .dlq) for ``phase``."""
        self.topic = f"bench.{self.run_id}.{phase}"
        names = [self.topic, self.topic + ".dlq"]
        create_topics(self.stack.kafka, {names[0]: 2, names[1]: 1})
        self.topics += names

    def delete_topics(self) -> None:
        admin = make_admin(self.stack.kafka)
        try:
            admin.delete_topics(self.topics)
        except Exception as e:  # leftover bench topics are harmless
            logger.warning("could not delete the bench topics: %s", e)
        finally:
            admin.close()

    def publish(self, phase: str, keys: list[str], n: int, inline: list[bytes] | None = None) -> list[str]:
        """Publish ``n`` records: references to ``keys``, or with ``inline`` the image bytes themselves."""
        ids = []
        for i in range(n):
            image_id = f"bench-{self.run_id}-{phase}-{i}"
            if inline is not None:
                msg = inline_message(image_id, inline[i % len(inline)])
            else:
                msg = reference_message(image_id, keys[i % len(keys)])
            self.producer.send(self.topic, key=image_id.encode(), value=encode(msg))
            ids.append(image_id)
        self.producer.flush(timeout=60)
        return ids

    def paced(
        self,
        prefix: str,
        keys: list[str],
        rate: float,
        n: int,
        sent: dict[str, float],
        producer: KafkaProducer | None = None,
    ) -> float:
        """Publish ``n`` references at ``rate``/s (ids ``prefix<i>``), recording each send time in ``sent``;
        returns the rate actually offered. ``producer`` defaults to the intake-like 5 ms linger one."""
        producer = producer or self.paced_producer
        pause = threading.Event()
        t0 = time.monotonic()
        for i in range(n):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                pause.wait(delay)
            image_id = f"{prefix}{i}"
            sent[image_id] = time.time()
            msg = reference_message(image_id, keys[i % len(keys)])
            producer.send(self.topic, key=image_id.encode(), value=encode(msg))
        producer.flush(timeout=60)
        return n / max(1e-9, time.monotonic() - t0)

    def start_scorer(
        self, group: str, max_batch: int, threads: int | None, env_extra: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        env = {
            **os.environ,
            "CIFAKE_SCORER_FOLLOW_MODELS": "false",
            "PYTHONUNBUFFERED": "1",
            **(env_extra or {}),
        }
        if threads:
            env["CIFAKE_SCORER_THREADS"] = str(threads)
        cmd = [
            sys.executable,
            "-m",
            "scorer",
            "--log-level",
            "WARNING",
            "run",
            "--topic",
            self.topic,
            "--group",
            group,
            "--metrics-port",
            "0",
            "--max-batch",
            str(max_batch),
            "--weights",
            self.args.weights,
            "--device",
            self.args.device,
        ]
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)

    def verdict_stats(self, phase: str) -> tuple[int, Any, Any, int]:
        """(rows, min scored_at, max scored_at, rows in the first batch) for a phase's image ids."""
        with connect(self.stack.pg) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(*), min(scored_at), max(scored_at) FROM verdicts WHERE image_id LIKE %s",
                (f"bench-{self.run_id}-{phase}-%",),
            )
            n, lo, hi = cur.fetchone() or (0, None, None)
            first = 0
            if lo is not None:
                cur.execute(
                    "SELECT count(*) FROM verdicts WHERE image_id LIKE %s AND scored_at = %s",
                    (f"bench-{self.run_id}-{phase}-%", lo),
                )
                first = (cur.fetchone() or (0,))[0]
        return int(n), lo, hi, int(first)

    def backlog(
        self,
        phase: str,
        keys: list[str],
        n: int,
        scorers: int,
        max_batch: int,
        inline: list[bytes] | None = None,
        env_extra: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        self.new_topic(phase)
        group = f"bench-{self.run_id}-{phase}"
        threads = 1 if scorers > 1 else None  # two processes on two cores: one thread each
        procs = [self.start_scorer(group, max_batch, threads, env_extra) for _ in range(scorers)]
        # Wait until every scorer has joined (after its warm-up), or the first would drain the backlog
        # alone, and the CPU it spent starting would count against the images.
        wait_until(lambda: self._stable_members(group) >= scorers, 120, f"{scorers} group members")
        meter = CpuMeter({"scorer": [p.pid for p in procs], **stack_services()})
        meter.start()
        own = time.process_time()
        self.publish(phase, keys, n, inline)

        def all_scored() -> bool:
            if self.verdict_stats(phase)[0] >= n:
                return True
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"phase {phase}: a scorer exited early")
            return False

        try:
            wait_until(all_scored, self.args.timeout, f"{n} verdicts in phase {phase}", 0.2)
            cpu = {**meter.stop(), "bench": time.process_time() - own}
        except TimeoutError as e:
            raise TimeoutError(f"{e} (got {self.verdict_stats(phase)[0]})") from None
        finally:
            split = self.stop(procs)
        n_rows, lo, hi, first = self.verdict_stats(phase)
        span = (hi - lo).total_seconds()
        rate = (n_rows - first) / span if span > 0 else float("nan")
        return {
            "images_per_s": rate,
            "split": split,
            "cpu_ms_per_image": {k: 1e3 * v / n for k, v in cpu.items()},
        }

    def _stable_members(self, group: str) -> int:
        return stable_members(self.stack.kafka, group)

    @staticmethod
    def stop(procs: list[subprocess.Popen[str]]) -> list[int]:
        counts = []
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            out, _ = p.communicate(timeout=120)
            last = [line for line in out.splitlines() if line.startswith("{")]
            counts.append(int(json.loads(last[-1]).get("processed", 0)) if last else -1)
        return counts

    def latency(self, keys: list[str], rate: float, duration: float) -> dict[str, Any]:
        """Offer ``rate`` images/s to a warm scorer; latency = submit -> verdict message received."""
        self.new_topic("L")
        prefix = f"bench-{self.run_id}-"
        collector = VerdictCollector(self.stack, prefix)
        proc = self.start_scorer(f"bench-{self.run_id}-L", 256, None)
        sent: dict[str, float] = {}
        got = collector.got
        try:
            warm = self.publish("W", keys, 20)  # wait until the scorer has joined and scored something
            wait_until(lambda: all(i in got for i in warm), 120, "warm-up verdicts")
            offered = self.paced(f"{prefix}R-", keys, rate, int(rate * duration), sent)
            wait_until(lambda: all(i in got for i in sent), 120, "fixed-rate verdicts")
        finally:
            collector.close()
            self.stop([proc])
        lat = np.array([(got[i] - sent[i]) * 1e3 for i in sent])
        p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99))
        return {"rate": round(offered, 1), "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "latency_n": len(lat)}


def raw_model(weights: str, device: str) -> dict[str, Any]:
    import torch

    from scorer.bench import bench_serving
    from scorer.engine import ServingModel

    sm = ServingModel.load(weights, device)
    r = bench_serving(sm, min_time=2.0)
    return {
        "raw": r["batch256_images_per_s"],
        "raw1": r["batch1_images_per_s"],
        "device": r["device"],
        "threads": torch.get_num_threads() if sm.device.type == "cpu" else 1,
        "runtime": r["runtime"],
        "version": sm.version,
    }


def run_bench(args: argparse.Namespace) -> int:
    stack = load(StackSettings)
    images, described = prepare_images(args.n, args.data, args.seed)
    keys = upload(S3Store(stack.s3), images)
    logger.info("uploaded %s", described)
    raw = raw_model(args.weights, args.device)
    bench = Bench(stack, args)
    try:
        one = bench.backlog("A", keys, args.n, scorers=1, max_batch=256)
        logger.info("one scorer: %.0f images/s", one["images_per_s"])
        two = bench.backlog("B", keys, args.n, scorers=2, max_batch=256)
        logger.info("two scorers: %.0f images/s, split %s", two["images_per_s"], two["split"])
        b1 = bench.backlog("C", keys, args.n_batch1, scorers=1, max_batch=1)
        inl = bench.backlog("I", keys, args.n, scorers=1, max_batch=256, inline=images)
        logger.info("one scorer, inline images: %.0f images/s", inl["images_per_s"])
        unstored = {"CIFAKE_SCORER_PERSIST_INLINE": "none"}
        inl_n = bench.backlog("J", keys, args.n, scorers=1, max_batch=256, inline=images, env_extra=unstored)
        logger.info("inline, storing none: %.0f images/s", inl_n["images_per_s"])
        rate = args.rate or max(1.0, 0.5 * one["images_per_s"])
        lat = bench.latency(keys, rate, args.duration)
    finally:
        bench.delete_topics()
    total_ms = sum(one["cpu_ms_per_image"].values())
    result = {
        "images_per_s": round(one["images_per_s"], 1),
        **{k: round(v, 1) if isinstance(v, float) else v for k, v in lat.items()},
        "raw_images_per_s": round(raw["raw"], 1),
        "ratio": round(one["images_per_s"] / raw["raw"], 3),
        "two_scorers_images_per_s": round(two["images_per_s"], 1),
        "two_scorers_split": two["split"],
        "batch1_images_per_s": round(b1["images_per_s"], 1),
        # The same images sent in the messages (base64) instead of by reference, one scorer; it stores
        # each one in the object store for the explainer and the console (CIFAKE_SCORER_PERSIST_INLINE).
        "inline_images_per_s": round(inl["images_per_s"], 1),
        "inline_cpu_ms_per_image": {k: round(v, 3) for k, v in inl["cpu_ms_per_image"].items()},
        "inline_cpu_ms_per_image_total": round(sum(inl["cpu_ms_per_image"].values()), 3),
        # The same with CIFAKE_SCORER_PERSIST_INLINE=none: no object store on the way (``flagged`` lies
        # between the two, by the share of images not labelled real).
        "inline_unstored_images_per_s": round(inl_n["images_per_s"], 1),
        "inline_unstored_cpu_ms_per_image": {k: round(v, 3) for k, v in inl_n["cpu_ms_per_image"].items()},
        "inline_unstored_cpu_ms_per_image_total": round(sum(inl_n["cpu_ms_per_image"].values()), 3),
        "raw_batch1_images_per_s": round(raw["raw1"], 1),
        # Where one scorer's backlog phase spent CPU, per image, by process tree ("bench" is this process:
        # publishing and polling PostgreSQL); the bare model needs threads * 1000 / raw_images_per_s.
        "cpu_ms_per_image": {k: round(v, 3) for k, v in one["cpu_ms_per_image"].items()},
        "cpu_ms_per_image_total": round(total_ms, 3),
        # What one core does when every process's CPU is counted: 1000 / cpu_ms_per_image_total.
        "images_per_core_s": round(1e3 / total_ms, 1),
        "model_cpu_ms_per_image": round(raw["threads"] * 1e3 / raw["raw"], 3),
        "device": raw["device"],
        "runtime": raw["runtime"],
        "model_version": raw["version"],
        "n": args.n,
        "images": described,
        "cpus": os.cpu_count(),
    }
    return publish(args.out, result, "harness.pipeline")


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=5000, help="images per backlog phase")
    p.add_argument("--n-batch1", type=int, default=500, help="images for the batch-1 phase")
    p.add_argument("--rate", type=float, help="offered load for the latency phase (default: half of max)")
    # 30 s at half load is ~5,000 latencies: enough that p99 is not decided by a dozen images.
    p.add_argument("--duration", type=float, default=30.0, help="seconds of fixed-rate load")
    p.add_argument("--data", help="folder or zip of images to use (default: generated JPEGs)")
    p.add_argument("--weights", default="default")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per phase")
    p.add_argument(
        "--out",
        default="benchmarks/pipeline/pipeline.json",
        help="result file (a soak run writes benchmarks/pipeline/soak.json unless --out is given)",
    )
