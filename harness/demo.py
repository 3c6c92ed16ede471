"""``python -m harness.demo``: the streaming pipeline end to end on the running stack, for a person to watch.

It starts a scorer process (a consumer-group member, metrics on ``--metrics-port``), uploads a few hundred
images to the object store, publishes their references on ``images.submitted``, waits for the verdicts
in PostgreSQL and prints them as a table. Images come from ``--data`` (a CIFAKE-layout zip or folder, or
any folder of images) or, without it, are generated, and the demo says which. With CIFAKE data the true
label is known from the folder name, so the table also shows whether each verdict was right. Then one
moderator label and a re-upload of the labelled image show the known-content lists at work
(``harness.demo_known``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from harness.wait import wait_until
from ingest.cli import configure_logging
from ingest.contracts import ImageSubmitted, encode, utcnow
from ingest.db import connect
from ingest.kafka import make_producer
from ingest.settings import StackSettings, load
from ingest.storage import S3Store
from ingest.topics import IMAGES_SUBMITTED

ROOT = Path(__file__).resolve().parents[1]
Sample = tuple[str, bytes, str | None]  # (name, bytes, true label or None)


def _truth(name: str) -> str | None:
    parts = name.replace("\\", "/").split("/")
    for label in ("REAL", "FAKE"):
        if label in parts:
            return label.lower()
    return None


def load_samples(data: str | None, n: int, seed: int) -> tuple[list[Sample], str]:
    rng = random.Random(seed)
    if data and zipfile.is_zipfile(data):
        with zipfile.ZipFile(data) as zf:
            names = [
                i.filename for i in zf.infolist() if i.filename.lower().endswith((".jpg", ".jpeg", ".png"))
            ]
            picked = rng.sample(names, min(n, len(names)))
            return [
                (nm, zf.read(nm), _truth(nm)) for nm in picked
            ], f"{len(picked)} random images from {data}"
    if data and Path(data).is_dir():
        files = sorted(
            p for p in Path(data).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}
        )
        chosen = rng.sample(files, min(n, len(files)))
        return [
            (str(f), f.read_bytes(), _truth(str(f))) for f in chosen
        ], f"{len(chosen)} random images from {data}"
    if data:
        raise SystemExit(f"--data {data}: not a zip or a folder")
    imgs = generated_images(n, seed)
    return [(f"generated-{i:04d}.jpg", b, None) for i, b in enumerate(imgs)], (
        f"{n} generated noise images (no dataset given: pass --data PATH or put the CIFAKE zip at "
        "../shared/datasets/cifake-train.zip for real photos and fakes)"
    )


def generated_images(n: int, seed: int) -> list[bytes]:
    """``n`` distinct 32x32 noise JPEGs (distinct bytes, so distinct sha256 image ids)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=75)
        out.append(buf.getvalue())
    return out


def run_demo(args: argparse.Namespace) -> int:
    # The demo is read by a person: kafka-python's connection chatter (INFO) would bury its lines.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    stack = load(StackSettings)
    samples, described = load_samples(args.data, args.n, args.seed)
    print(f"demo: using {described}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "scorer",
        "run",
        "--metrics-port",
        str(args.metrics_port),
        "--weights",
        args.weights,
    ]
    log_path = Path(args.log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        scorer = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    metrics_url = f"http://127.0.0.1:{args.metrics_port}/metrics"
    try:
        wait_until(
            lambda: _reachable(metrics_url) or scorer.poll() is not None, 120, "the scorer to start", 0.2
        )
        if scorer.poll() is not None:
            raise SystemExit(f"demo: the scorer exited; see {log_path}")
        print(
            f"demo: scorer running (pid {scorer.pid}, log {log_path}), metrics at {metrics_url}", flush=True
        )
        run_tag = hashlib.sha256(str(time.time()).encode()).hexdigest()[:6]
        store = S3Store(stack.s3)
        producer = make_producer(stack.kafka)
        ids: dict[str, Sample] = {}
        for name, data, truth in samples:
            key = hashlib.sha256(data).hexdigest()
            store.put("images", key, data, "image/jpeg")
            image_id = f"demo-{run_tag}-{key[:16]}"
            msg = ImageSubmitted(
                image_id=image_id, ref=f"s3://images/{key}", submitted_at=utcnow(), source="demo"
            )
            producer.send(IMAGES_SUBMITTED, key=image_id.encode(), value=encode(msg))
            ids[image_id] = (name, data, truth)
        producer.flush(timeout=60)
        producer.close()
        print(f"demo: submitted {len(ids)} references to {IMAGES_SUBMITTED}", flush=True)
        elapsed = wait_until(
            lambda: len(_verdicts(stack, list(ids))) >= len(ids), args.timeout, "all verdicts", 0.2
        )
        rows = _verdicts(stack, list(ids))
        _print_table(rows, ids, args.show)
        print(f"demo: {len(rows)} verdicts in {elapsed:.1f}s", flush=True)
        _print_metrics(metrics_url)
        if not args.no_known:
            from harness.demo_known import run_known_act

            run_known_act(stack, rows, ids, metrics_url, log_path.parent)
    finally:
        if scorer.poll() is None:
            scorer.send_signal(signal.SIGTERM)
            scorer.wait(timeout=60)
    print(
        "demo: scorer stopped. Run it yourself with `.venv/bin/python -m scorer run`; "
        "score files offline with `.venv/bin/python -m scorer score PATH`."
    )
    return 0


def _reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).read()
        return True
    except OSError:
        return False


def _verdicts(stack: StackSettings, ids: list[str]) -> list[tuple[str, str, float, str]]:
    with connect(stack.pg) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT image_id, model_version, p_fake, label FROM verdicts"
            " WHERE image_id = ANY(%s) ORDER BY image_id",
            (ids,),
        )
        return [(r[0], r[1], float(r[2]), r[3]) for r in cur.fetchall()]


def _print_table(rows: list[tuple[str, str, float, str]], ids: dict[str, Sample], show: int) -> None:
    print(f"\n{'image':<34} {'truth':<6} {'p_fake':>7} {'verdict':<10} {'model':<18}")
    print("-" * 80)
    labels: Counter[str] = Counter()
    right = known = 0
    for i, (image_id, version, p, label) in enumerate(rows):
        name, _data, truth = ids[image_id]
        labels[label] += 1
        if truth and label != "uncertain":
            known += 1
            right += label == truth
        if i < show:
            mark = "" if not truth or label == "uncertain" else (" ok" if label == truth else " WRONG")
            print(f"{name[-34:]:<34} {truth or '-':<6} {p:>7.3f} {label:<10} {version[:18]:<18}{mark}")
    if len(rows) > show:
        print(f"... ({len(rows) - show} more)")
    print("-" * 80)
    print("verdicts: " + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())))
    if known:
        print(
            f"accuracy on the {known} images with a known label and a decided verdict: {right / known:.1%}"
            " (if these come from the training archive, most were seen in training: the held-out"
            " validation figures are in docs/detector.md)"
        )


def _print_metrics(url: str) -> None:
    try:
        body = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return
    wanted = ("scorer_verdicts_total{", "scorer_records_total{", "scorer_end_to_end_latency_seconds_count")
    lines = [ln for ln in body.splitlines() if ln.startswith(wanted)]
    print(f"\nmetrics ({url}):")
    for ln in lines[:10]:
        print("  " + ln)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness.demo",
        description="start a scorer, submit a few hundred images, print the verdicts (make demo)",
    )
    p.add_argument(
        "--data", default=os.environ.get("CIFAKE_DEMO_DATA") or None, help="zip or folder of images"
    )
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--show", type=int, default=25, help="rows of the table to print")
    p.add_argument("--weights", default="default")
    p.add_argument("--metrics-port", type=int, default=9101)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--log", default=".stack/demo-scorer.log")
    p.add_argument("--no-known", action="store_true", help="skip the label-then-re-upload act")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        return run_demo(args)
    except TimeoutError as e:  # a person reads this: one line, not a traceback
        raise SystemExit(f"demo: {e}") from None


if __name__ == "__main__":
    raise SystemExit(main())
