"""``python -m scorer bench``: end-to-end throughput and latency of the streaming scorer on the real stack.

Phases, all in one run on the same machine (last stdout line is one JSON object):

1. raw model: the bare model at batch 256 and batch 1 on the scorer's device (``raw_images_per_s``);
2. backlog, one scorer: N references are published, then one ``scorer run`` process drains them;
   throughput is measured from the verdicts' ``scored_at`` span (``images_per_s``);
3. backlog, two scorers on a 2-partition topic (``two_scorers_images_per_s`` and how many each got);
4. backlog, one scorer with micro-batches of 1 (``batch1_images_per_s``): why batching matters;
5. fixed-rate load (``--rate``, default half of phase 2's throughput) for ``--duration`` seconds
   against a warm scorer; latency is submit time -> the verdict message arriving on images.verdicts.

Images are uploaded once to the ``images`` bucket; each phase publishes references under fresh image ids
on a topic of its own (2 partitions), so no phase re-reads another's records. Its verdicts are real rows.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from PIL import Image

from ingest.contracts import ImageSubmitted, Verdict, decode, encode, utcnow
from ingest.db import connect
from ingest.kafka import make_admin, make_producer
from ingest.settings import StackSettings, load
from ingest.storage import S3Store
from ingest.topics import IMAGES_VERDICTS
from scorer.offline import iter_sources

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]


def _generated_images(n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=75)
        out.append(buf.getvalue())
    return out


def prepare_images(n: int, data: str | None, seed: int) -> tuple[list[bytes], str]:
    if data:
        from ingest.decode import DecodeLimits

        imgs = []
        for src in iter_sources([data], DecodeLimits()):
            imgs.append(src.data)
            if len(imgs) >= n:
                break
        if imgs:
            return imgs, f"first {len(imgs)} images of {data}"
    return _generated_images(n, seed), f"{n} generated 32x32 JPEGs"


def upload(store: S3Store, images: list[bytes]) -> list[str]:
    keys = [hashlib.sha256(b).hexdigest() for b in images]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda kb: store.put("images", kb[0], kb[1], "image/jpeg"), zip(keys, images, strict=True)
            )
        )
    return keys


class Bench:
    def __init__(self, stack: StackSettings, args: argparse.Namespace) -> None:
        self.stack = stack
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.topic = ""
        self.topics: list[str] = []
        self.producer = make_producer(stack.kafka, linger_ms=20)

    def new_topic(self, phase: str) -> None:
        """Switch to a fresh 2-partition topic (and its .dlq) for ``phase``."""
        self.topic = f"bench.{self.run_id}.{phase}"
        admin = make_admin(self.stack.kafka)
        try:
            admin.create_topics([NewTopic(self.topic, 2, 1), NewTopic(self.topic + ".dlq", 1, 1)])
        finally:
            admin.close()
        self.topics += [self.topic, self.topic + ".dlq"]

    def delete_topics(self) -> None:
        admin = make_admin(self.stack.kafka)
        try:
            admin.delete_topics(self.topics)
        except Exception as e:  # leftover bench topics are harmless
            logger.warning("could not delete the bench topics: %s", e)
        finally:
            admin.close()

    def publish(
        self, phase: str, keys: list[str], n: int, submitted_at: Callable[[], Any] = utcnow
    ) -> list[str]:
        ids = []
        for i in range(n):
            image_id = f"bench-{self.run_id}-{phase}-{i}"
            msg = ImageSubmitted(
                image_id=image_id,
                ref=f"s3://images/{keys[i % len(keys)]}",
                submitted_at=submitted_at(),
                source="bench",
            )
            self.producer.send(self.topic, key=image_id.encode(), value=encode(msg))
            ids.append(image_id)
        self.producer.flush(timeout=60)
        return ids

    def start_scorer(self, group: str, max_batch: int, threads: int | None) -> subprocess.Popen[str]:
        env = {**os.environ, "CIFAKE_SCORER_FOLLOW_MODELS": "false", "PYTHONUNBUFFERED": "1"}
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

    def backlog(self, phase: str, keys: list[str], n: int, scorers: int, max_batch: int) -> dict[str, Any]:
        self.new_topic(phase)
        group = f"bench-{self.run_id}-{phase}"
        threads = 1 if scorers > 1 else None  # two processes on two cores: one thread each
        procs = [self.start_scorer(group, max_batch, threads) for _ in range(scorers)]
        if scorers > 1:
            # Wait until every scorer has joined, or the first would drain the backlog alone.
            self._wait_for(lambda: self._stable_members(group) >= scorers, 120, f"{scorers} group members")
        self.publish(phase, keys, n)
        deadline = time.monotonic() + self.args.timeout
        pause = threading.Event()
        try:
            while (done := self.verdict_stats(phase)[0]) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"phase {phase}: only {done}/{n} verdicts after {self.args.timeout}s")
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"phase {phase}: a scorer exited early")
                pause.wait(0.2)
        finally:
            split = self.stop(procs)
        n_rows, lo, hi, first = self.verdict_stats(phase)
        span = (hi - lo).total_seconds()
        rate = (n_rows - first) / span if span > 0 else float("nan")
        return {"images_per_s": rate, "split": split}

    def _stable_members(self, group: str) -> int:
        admin = make_admin(self.stack.kafka)
        try:
            info = admin.describe_groups([group]).get(group) or {}
        finally:
            admin.close()
        return len(info.get("members") or []) if info.get("group_state") == "Stable" else 0

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
        consumer = KafkaConsumer(**self.stack.kafka.client_kwargs(), enable_auto_commit=False)
        tps = [
            TopicPartition(IMAGES_VERDICTS, p)
            for p in sorted(consumer.partitions_for_topic(IMAGES_VERDICTS) or [])
        ]
        consumer.assign(tps)
        consumer.seek_to_end(*tps)
        for tp in tps:
            consumer.position(tp)
        proc = self.start_scorer(f"bench-{self.run_id}-L", 256, None)
        sent: dict[str, float] = {}
        got: dict[str, float] = {}
        stop = threading.Event()
        prefix = f"bench-{self.run_id}-"

        def collect() -> None:
            while not stop.is_set():
                for msgs in consumer.poll(timeout_ms=100).values():
                    now = time.time()
                    for m in msgs:
                        if m.key and m.key.decode().startswith(prefix):
                            got.setdefault(decode(Verdict, m.value).image_id, now)

        reader = threading.Thread(target=collect, daemon=True)
        reader.start()
        try:
            warm = self.publish("W", keys, 20)  # wait until the scorer has joined and scored something
            self._wait_for(lambda: all(i in got for i in warm), 120, "warm-up verdicts")
            n = int(rate * duration)
            t0 = time.monotonic()
            for i in range(n):
                target = t0 + i / rate
                delay = target - time.monotonic()
                if delay > 0:
                    stop.wait(delay)
                image_id = f"{prefix}R-{i}"
                sent[image_id] = time.time()
                msg = ImageSubmitted(
                    image_id=image_id,
                    ref=f"s3://images/{keys[i % len(keys)]}",
                    submitted_at=utcnow(),
                    source="bench",
                )
                self.producer.send(self.topic, key=image_id.encode(), value=encode(msg))
            self.producer.flush(timeout=60)
            offered = n / (time.monotonic() - t0)
            self._wait_for(lambda: all(i in got for i in sent), 120, "fixed-rate verdicts")
        finally:
            stop.set()
            reader.join(timeout=5)
            consumer.close()
            self.stop([proc])
        lat = np.array([(got[i] - sent[i]) * 1e3 for i in sent])
        p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99))
        return {"rate": round(offered, 1), "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "latency_n": len(lat)}

    @staticmethod
    def _wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while not pred():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            pause.wait(0.05)


def raw_model(weights: str, device: str) -> dict[str, Any]:
    from scorer.bench import bench_model
    from scorer.engine import ServingModel

    sm = ServingModel.load(weights, device)
    r = bench_model(sm.model, sm.device, sm.input_size, min_time=2.0)
    return {
        "raw": r["batch256_images_per_s"],
        "raw1": r["batch1_images_per_s"],
        "device": r["device"],
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
        rate = args.rate or max(1.0, 0.5 * one["images_per_s"])
        lat = bench.latency(keys, rate, args.duration)
    finally:
        bench.delete_topics()
    result = {
        "images_per_s": round(one["images_per_s"], 1),
        **{k: round(v, 1) if isinstance(v, float) else v for k, v in lat.items()},
        "raw_images_per_s": round(raw["raw"], 1),
        "ratio": round(one["images_per_s"] / raw["raw"], 3),
        "two_scorers_images_per_s": round(two["images_per_s"], 1),
        "two_scorers_split": two["split"],
        "batch1_images_per_s": round(b1["images_per_s"], 1),
        "raw_batch1_images_per_s": round(raw["raw1"], 1),
        "device": raw["device"],
        "model_version": raw["version"],
        "n": args.n,
        "images": described,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result), flush=True)
    return 0


def add_bench_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> Callable[[argparse.Namespace], int]:
    p = sub.add_parser("bench", help="end-to-end pipeline benchmark on the running stack (JSON last line)")
    p.add_argument("--n", type=int, default=5000, help="images per backlog phase")
    p.add_argument("--n-batch1", type=int, default=500, help="images for the batch-1 phase")
    p.add_argument("--rate", type=float, help="offered load for the latency phase (default: half of max)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of fixed-rate load")
    p.add_argument("--data", help="folder or zip of images to use (default: generated JPEGs)")
    p.add_argument("--weights", default="default")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per phase")
    return run_bench
