"""``python -m harness.demo``: the streaming pipeline end to end on the running stack, for a person to watch.

It starts a scorer process (a consumer-group member, metrics on ``--metrics-port``), uploads a few hundred
images to the object store, publishes their references on ``images.submitted``, waits for the verdicts
in PostgreSQL and prints them as a table. Images come from ``--data`` or, without it, are generated, and
the demo says which (``harness.demo_samples``): from a CIFAKE archive, the model's own validation split,
and the demo ends with the model's accuracy on those images and the count it is based on.

Then one moderator label and a re-upload of the labelled image show the known-content lists at work
(``harness.demo_known``).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

from harness.demo_samples import DemoSet, Sample, load_samples
from harness.wait import wait_until
from ingest.cli import configure_logging
from ingest.contracts import ImageSubmitted, encode, utcnow
from ingest.db import connect
from ingest.kafka import make_producer
from ingest.settings import StackSettings, load
from ingest.storage import S3Store
from ingest.topics import IMAGES_SUBMITTED
from scorer.engine import file_sha256
from scorer.weights import read_meta, resolve_weights

ROOT = Path(__file__).resolve().parents[1]
Row = tuple[str, str, float, str]  # a verdict: (image id, model version, p_fake, label)


def run_demo(args: argparse.Namespace) -> int:
    # The demo is read by a person: kafka-python's connection chatter (INFO) would bury its lines.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    stack = load(StackSettings)
    weights = resolve_weights(args.weights)
    meta = read_meta(weights)
    version = meta.version or f"sha-{file_sha256(weights)[:12]}"  # as the scorer names it
    demo_set = load_samples(args.data, args.n, args.seed, meta)
    samples = demo_set.samples
    print(f"demo: using {demo_set.described}", flush=True)
    # The scorer serves exactly these weights (no switch to a champion announced on models.published), so
    # every verdict, and the accuracy, is this model's.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CIFAKE_SCORER_FOLLOW_MODELS": "false"}
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
            f"demo: scorer running {version} (pid {scorer.pid}, log {log_path}), metrics at {metrics_url}",
            flush=True,
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
        for line in accuracy_lines(rows, ids, version, meta.threshold, demo_set):
            print(f"demo: {line}", flush=True)
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


def _verdicts(stack: StackSettings, ids: list[str]) -> list[Row]:
    with connect(stack.pg) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT image_id, model_version, p_fake, label FROM verdicts"
            " WHERE image_id = ANY(%s) ORDER BY image_id",
            (ids,),
        )
        return [(r[0], r[1], float(r[2]), r[3]) for r in cur.fetchall()]


def _print_table(rows: list[Row], ids: dict[str, Sample], show: int) -> None:
    print(f"\n{'image':<34} {'truth':<6} {'p_fake':>7} {'verdict':<10} {'model':<18}")
    print("-" * 80)
    labels: Counter[str] = Counter()
    for i, (image_id, version, p, label) in enumerate(rows):
        name, _data, truth = ids[image_id]
        labels[label] += 1
        if i < show:
            mark = "" if not truth or label == "uncertain" else (" ok" if label == truth else " WRONG")
            print(f"{name[-34:]:<34} {truth or '-':<6} {p:>7.3f} {label:<10} {version[:18]:<18}{mark}")
    if len(rows) > show:
        print(f"... ({len(rows) - show} more)")
    print("-" * 80)
    print("verdicts: " + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())))


def accuracy_lines(
    rows: list[Row], ids: dict[str, Sample], version: str, threshold: float, demo_set: DemoSet
) -> list[str]:
    """What the verdicts say about the model, with the counts they rest on.

    The accuracy is the model's: its p_fake against its threshold, over every image with a true label
    scored by ``version``, as the validation accuracy in the model's metadata is. Verdict labels can
    differ: near the threshold they are ``uncertain``, and a known-content match sets the label itself.
    """
    if not any(s[2] for s in ids.values()):
        return ["accuracy: not measured (these images have no true label)"]
    labelled = [(ids[i][2], p, label) for i, v, p, label in rows if ids[i][2] and v == version]
    out = []
    other = sum(1 for i, v, _p, _l in rows if ids[i][2] and v != version)
    if other:
        out.append(f"{other} verdict(s) came from another model than {version}: not counted")
    if not labelled:
        return [*out, "accuracy: not measured (no verdict with a true label)"]
    right = sum((p >= threshold) == (truth == "fake") for truth, p, _l in labelled)
    what = demo_set.held_out or "labelled images (not checked against the model's training data)"
    out.append(
        f"accuracy {right / len(labelled):.1%} on {len(labelled)} {what}; p_fake >= {threshold:g} is fake"
    )
    decided = [(truth, label) for truth, _p, label in labelled if label != "uncertain"]
    if decided:
        agree = sum(truth == label for truth, label in decided)
        out.append(
            f"verdict labels: {agree / len(decided):.1%} right on the {len(decided)} decided,"
            f" {len(labelled) - len(decided)} uncertain (p_fake near the threshold)"
        )
    return out


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
    p.add_argument(
        "--n", type=int, default=300, help="images to stream (half REAL, half FAKE from a CIFAKE archive)"
    )
    p.add_argument("--show", type=int, default=25, help="rows of the table to print")
    p.add_argument("--weights", default="default")
    p.add_argument("--metrics-port", type=int, default=9101)
    p.add_argument("--seed", type=int, default=7, help="which images are drawn")
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
