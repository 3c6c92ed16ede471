"""The demo's second act: one moderator label, and a re-upload of the labelled image is caught at once.

With the demo's scorer still running, it picks an image (one the model got wrong when the truth is known),
publishes a moderator's label on ``moderation.feedback``, runs the retrainer's feedback consumer until it
is idle (it stores the label and puts the image's PDQ hash on the known-content list), waits until the
scorer has applied the list update, then submits the image again resized and recompressed (a new file with
a new sha256, as a re-upload is) and prints the verdict with its reasons.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image

from harness.wait import wait_until
from ingest.contracts import Feedback, ImageSubmitted, encode, utcnow
from ingest.db import connect
from ingest.kafka import make_producer
from ingest.settings import StackSettings
from ingest.signals import Signals, reasons
from ingest.storage import S3Store
from ingest.topics import IMAGES_SUBMITTED, MODERATION_FEEDBACK

ROOT = Path(__file__).resolve().parents[1]
_APPLIED = re.compile(r'^scorer_known_content_updates_total\{outcome="(applied|loaded)"\} ([0-9.e+]+)$', re.M)


def pick(rows: list[tuple[str, str, float, str]], truth: dict[str, str | None]) -> tuple[str, str]:
    """(image id, label a moderator would give): a fake the model missed if there is one."""
    for want in (
        lambda t, lab: t == "fake" and lab != "fake",
        lambda t, lab: t == "fake",
        lambda t, lab: t is not None,
    ):
        for image_id, _v, _p, label in rows:
            t = truth[image_id]
            if want(t, label):
                return image_id, t or "fake"
    return rows[0][0], "fake"


def reupload(data: bytes) -> bytes:
    """The same picture as a platform gets it back: resized to 64x64 and recompressed at JPEG q50."""
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=50)
    return buf.getvalue()


def _applied(metrics_url: str) -> float:
    try:
        body = urllib.request.urlopen(metrics_url, timeout=2).read().decode()
    except OSError:
        return 0.0
    return sum(float(v) for _k, v in _APPLIED.findall(body))


def run_known_act(
    stack: StackSettings,
    rows: list[tuple[str, str, float, str]],
    samples: dict[str, tuple[str, bytes, str | None]],
    metrics_url: str,
    log_dir: Path,
) -> None:
    hashable = _hashable(stack, [r[0] for r in rows])
    candidates = [r for r in rows if r[0] in hashable] or rows
    image_id, label = pick(candidates, {i: s[2] for i, s in samples.items()})
    name, data, _truth = samples[image_id]
    model_label = next(r[3] for r in rows if r[0] == image_id)
    print(f"\ndemo: a moderator labels {name} ({image_id[:24]}) {label}; the model said {model_label}")
    before = _applied(metrics_url)
    fb = Feedback(
        image_id=image_id,
        label=label,  # type: ignore[arg-type]  # pick() returns real or fake
        moderator="demo-moderator",
        labelled_at=utcnow(),
    )
    producer = make_producer(stack.kafka)
    try:
        producer.send(MODERATION_FEEDBACK, key=image_id.encode(), value=encode(fb)).get(timeout=30)
    finally:
        producer.close()
    t0 = time.monotonic()
    _run_feedback_consumer(log_dir / "demo-retrainer.log")
    wait_until(lambda: _applied(metrics_url) > before, 60, "the label to reach the scorer", 0.2)
    reached = time.monotonic() - t0
    new = reupload(data)
    key = hashlib.sha256(new).hexdigest()
    S3Store(stack.s3).put("images", key, new, "image/jpeg")
    again = f"{image_id[:40]}-reupload"
    msg = ImageSubmitted(image_id=again, ref=f"s3://images/{key}", submitted_at=utcnow(), source="demo")
    producer = make_producer(stack.kafka)
    try:
        producer.send(IMAGES_SUBMITTED, key=again.encode(), value=encode(msg)).get(timeout=30)
    finally:
        producer.close()
    wait_until(lambda: _verdict(stack, again) is not None, 60, "the re-upload's verdict", 0.2)
    verdict = _verdict(stack, again)
    assert verdict is not None
    v_label, p_fake, signals = verdict
    print(
        f"demo: label stored, listed and applied by the scorer in {reached:.1f}s (including the feedback "
        "consumer's start-up)"
    )
    print(
        f"demo: re-upload (64x64, JPEG q50, new sha256 {key[:12]}): verdict {v_label},"
        f" model p_fake {p_fake:.3f}"
    )
    for line in reasons(signals):
        print(f"        why: {line}")


def _run_feedback_consumer(log: Path) -> None:
    """``retrainer run`` without the training worker, until it has been idle for 5 s."""
    cmd = [sys.executable, "-m", "retrainer", "run", "--no-worker", "--idle-timeout", "5"]
    cmd += ["--metrics-port", "0"]
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ}, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"demo: the feedback consumer failed; see {log}")


def _hashable(stack: StackSettings, ids: list[str]) -> set[str]:
    """Images whose PDQ hash has the quality a list entry needs (featureless ones stay off the lists)."""
    with connect(stack.pg) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM images WHERE id = ANY(%s) AND pdq_quality >= 50", (ids,))
        return {r[0] for r in cur.fetchall()}


def _verdict(stack: StackSettings, image_id: str) -> tuple[str, float, Signals | None] | None:
    with connect(stack.pg) as conn, conn.cursor() as cur:
        cur.execute("SELECT label, p_fake, signals FROM verdicts WHERE image_id = %s", (image_id,))
        row = cur.fetchone()
    if row is None:
        return None
    return row[0], float(row[1]), Signals.model_validate(row[2]) if row[2] else None
