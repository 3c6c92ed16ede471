"""How long a moderator's label takes to reach every running scorer's known-content index, end to end.

    python -m harness.label_latency_bench [--labels 100] [--scorers 2] [--out benchmarks/known_content]

On the running stack (`deploy/stack up`), in a schema and topics of its own (dropped afterwards): it starts
``--scorers`` real scorer processes and one feedback consumer (``retrainer run --no-worker``), stores
``--labels`` images with a PDQ hash, then labels them one at a time: for each label it publishes a
``Feedback`` on the feedback topic and measures, per scorer, the time until that scorer's
``scorer_known_content_updates_total{outcome="applied"}`` has counted it (polled every 10 ms over HTTP).
That path is the product's: Kafka -> feedback consumer -> PostgreSQL -> ``known_content.updates`` ->
every scorer. With ``--backlog N`` the scorers are busy scoring N queued images meanwhile (the usual case).
Writes ``label_latency[_busy].json`` and prints it as one line.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2
from psycopg2 import sql

from deploy.provision import apply_migrations, discover_migrations
from harness.machine import machine_info, write_json
from harness.topics import create_topics
from harness.wait import wait_until
from ingest.contracts import Feedback, ImageSubmitted, encode, utcnow
from ingest.kafka import make_admin, make_producer
from ingest.settings import StackSettings, load
from ingest.storage import S3Store

ROOT = Path(__file__).resolve().parents[1]
_APPLIED = re.compile(r'^scorer_known_content_updates_total\{outcome="applied"\} ([0-9.e+]+)$', re.M)
_READY = re.compile(r"^scorer_known_content_ready ([0-9.e+]+)$", re.M)


def _metric(url: str, pattern: re.Pattern[str]) -> float | None:
    try:
        body = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return None
    m = pattern.search(body)
    return float(m.group(1)) if m else 0.0


@contextmanager
def own_schema(dsn: str) -> Iterator[str]:
    """A schema with every migration applied; yields a DSN whose search_path points at it."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    sep = "&" if "?" in dsn else "?"
    own = f"{dsn}{sep}options=-c%20search_path%3D{schema}"
    apply_migrations(own, discover_migrations())
    try:
        yield own
    finally:
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@contextmanager
def own_topics(stack: StackSettings, names: list[str]) -> Iterator[None]:
    admin = make_admin(stack.kafka)
    try:
        create_topics(stack.kafka, dict.fromkeys(names, 1))
        yield
    finally:
        admin.delete_topics(names)
        admin.close()


@contextmanager
def processes(cmds: list[tuple[list[str], dict[str, str], Path]]) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = []
    try:
        for cmd, env, log in cmds:
            with open(log, "w") as out:
                procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


def _seed_images(dsn: str, ids: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = [(i, rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex()) for i in ids]
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for image_id, pdq in rows:
            cur.execute(
                "INSERT INTO images (id, source, submitted_at, pdq, pdq_quality)"
                " VALUES (%s, 'bench', now(), %s, 90)",
                (image_id, pdq),
            )


def _ready(url: str) -> bool:
    return _metric(url, _READY) == 1.0


def _count_verdicts(dsn: str) -> int:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM verdicts")
        row = cur.fetchone()
        return int(row[0]) if row else 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    stack = load(StackSettings)
    tag = uuid.uuid4().hex[:8]
    inp, fb, kt = f"bench.in.{tag}", f"bench.feedback.{tag}", f"bench.known.{tag}"
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ports = [args.base_port + i for i in range(args.scorers)]
    with (
        own_schema(stack.pg.dsn.get_secret_value()) as dsn,
        own_topics(stack, [inp, inp + ".dlq", fb, fb + ".dlq", kt]),
    ):
        ids = [f"bench-{tag}-{i}" for i in range(args.labels)]
        _seed_images(dsn, ids, args.seed)
        env = {**os.environ, "CIFAKE_PG__DSN": dsn, "PYTHONUNBUFFERED": "1"}
        scorer_env = {**env, "CIFAKE_SCORER_FOLLOW_MODELS": "false", "CIFAKE_SCORER_SIGNALS__KNOWN_TOPIC": kt}
        cmds = [
            (
                [
                    sys.executable,
                    "-m",
                    "scorer",
                    "run",
                    "--topic",
                    inp,
                    "--group",
                    f"bench-{tag}",
                    "--metrics-port",
                    str(port),
                    "--device",
                    "cpu",
                ],
                scorer_env,
                out_dir / f"label_latency_scorer{n}.log",
            )
            for n, port in enumerate(ports)
        ]
        cmds.append(
            (
                [
                    sys.executable,
                    "-m",
                    "retrainer",
                    "run",
                    "--no-worker",
                    "--topic",
                    fb,
                    "--group",
                    f"bench-fb-{tag}",
                    "--metrics-port",
                    "0",
                ],
                {**env, "CIFAKE_RETRAINER_KNOWN_TOPIC": kt},
                out_dir / "label_latency_retrainer.log",
            )
        )
        urls = [f"http://127.0.0.1:{p}/metrics" for p in ports]
        with processes(cmds):
            for u in urls:
                wait_until(functools.partial(_ready, u), 180, f"{u} to load its lists", 0.2)
            producer = make_producer(stack.kafka, linger_ms=0)
            if args.backlog:
                _queue_backlog(stack, producer, inp, args.backlog, tag)
            lat: list[list[float]] = [[] for _ in urls]
            scored_before = _count_verdicts(dsn)
            for i, image_id in enumerate(ids):
                label = Feedback(image_id=image_id, label="fake", moderator="bench", labelled_at=utcnow())
                t0 = time.monotonic()
                producer.send(fb, key=image_id.encode(), value=encode(label))
                producer.flush()
                pending = set(range(len(urls)))
                while pending:
                    for s in list(pending):
                        if (_metric(urls[s], _APPLIED) or 0) >= i + 1:
                            lat[s].append(time.monotonic() - t0)
                            pending.discard(s)
                    if time.monotonic() - t0 > 60:
                        raise SystemExit(f"label {i} did not reach scorers {sorted(pending)} in 60 s")
                    time.sleep(0.01)
            producer.close()
            scored_during = _count_verdicts(dsn) - scored_before
    every = np.array([max(per) for per in zip(*lat, strict=True)])  # the label reached *every* scorer
    result = {
        "benchmark": "label_latency",
        "command": "python -m harness.label_latency_bench " + " ".join(sys.argv[1:]),
        "labels": args.labels,
        "scorers": args.scorers,
        "every_scorer_s": _summary(every),
        "per_scorer_s": [_summary(np.array(x)) for x in lat],
        "target_p99_s": 5.0,
        "meets_target": bool(np.percentile(every, 99) <= 5.0),
        "poll_interval_s": 0.01,
        "machine": machine_info(),
        "load": "Kafka, MinIO, PostgreSQL, the scorers, the feedback consumer and this script share it",
        # With --backlog, how many images the scorers scored while the labels were being applied.
        "images_scored_during_labels": scored_during,
    }
    result["backlog"] = args.backlog
    name = "label_latency_busy.json" if args.backlog else "label_latency.json"
    write_json(out_dir / name, result)
    return result


def _queue_backlog(stack: StackSettings, producer: Any, topic: str, n: int, tag: str) -> None:
    """``n`` references to one stored CIFAKE-sized JPEG, so the scorers score while labels arrive."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    key = hashlib.sha256(data).hexdigest()
    S3Store(stack.s3).put("images", key, data, "image/jpeg")
    for i in range(n):
        image_id = f"bench-{tag}-load-{i}"
        msg = ImageSubmitted(image_id=image_id, ref=f"s3://images/{key}", submitted_at=utcnow(), source="b")
        producer.send(topic, key=image_id.encode(), value=encode(msg))
    producer.flush()


def _summary(x: np.ndarray) -> dict[str, float]:
    return {
        "p50": round(float(np.percentile(x, 50)), 3),
        "p90": round(float(np.percentile(x, 90)), 3),
        "p99": round(float(np.percentile(x, 99)), 3),
        "max": round(float(x.max()), 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--labels", type=int, default=100)
    p.add_argument("--scorers", type=int, default=2)
    p.add_argument("--base-port", type=int, default=9181, help="metrics ports base..base+scorers-1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backlog", type=int, default=0, help="images queued for the scorers before the labels")
    p.add_argument("--out", default="benchmarks/known_content")
    try:
        result = run(p.parse_args())
    except TimeoutError as e:
        raise SystemExit(f"label_latency_bench: {e}") from None
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
