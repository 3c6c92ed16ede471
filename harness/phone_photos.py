"""Memory and speed on phone-size photos: a scorer draining a backlog of them, and `scorer score` on a folder.

    python -m harness.phone_photos [--n 1000] [--out benchmarks/phone_photos/phone_photos.json]

The photos are 4032×3024 JPEGs of 3 to 7 MB (a smooth colour field with sensor-like noise; the noise
level sets the size). ``--distinct`` of them are encoded (about a second each), and every file is one of
those with its own JPEG comment, so all N files differ byte for byte. They are cached in ``--cache``.

* ``stream``: the N photos are uploaded to MinIO and referenced on a private input topic *before* the
  scorer starts, then ``python -m scorer run`` (default settings, its own consumer group) drains the
  backlog. Peak RSS and CPU time come from the kernel (``wait4``) when the scorer exits; throughput is
  the verdicts' ``scored_at`` span in PostgreSQL.
* ``offline``: ``python -m scorer score`` on the folder, measured the same way.

Both run on the machine's stack (Kafka, MinIO and PostgreSQL share its cores).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from harness.machine import ROOT, machine_info, write_json
from harness.topics import create_topics
from ingest.contracts import ImageSubmitted, encode, utcnow
from ingest.db import connect
from ingest.kafka import make_producer
from ingest.settings import StackSettings, load
from ingest.storage import S3Store

WIDTH, HEIGHT = 4032, 3024


def _photo(i: int) -> bytes:
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:HEIGHT:8, 0:WIDTH:8].astype(np.float32)
    field = np.stack(
        [(xx * 0.05 + i * 13) % 255, (yy * 0.07 + i * 29) % 255, ((xx + yy) * 0.03 + i * 7) % 255], -1
    )
    small = Image.fromarray(field.astype(np.uint8))
    base = np.asarray(small.resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR), dtype=np.float32)
    noise = rng.normal(0, 6 + (i % 7) * 3.5, (HEIGHT, WIDTH, 1)).astype(np.float32)
    out = io.BytesIO()
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def _with_comment(jpeg: bytes, text: str) -> bytes:
    """The same image with a COM segment after SOI: different bytes, same pixels."""
    body = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


def make_photos(cache: Path, n: int, distinct: int) -> list[Path]:
    cache.mkdir(parents=True, exist_ok=True)
    bases = []
    for d in range(distinct):
        path = cache / f"base-{d:03d}.jpg.src"
        if not path.exists():
            path.write_bytes(_photo(d))
        bases.append(path)
    files = []
    folder = cache / f"n{n}"
    folder.mkdir(exist_ok=True)
    for i in range(n):
        path = folder / f"photo-{i:05d}.jpg"
        if not path.exists():
            path.write_bytes(_with_comment(bases[i % distinct].read_bytes(), f"photo {i}"))
        files.append(path)
    return files


def _measure(cmd: list[str], env: dict[str, str], log: Path, stop_when: Any = None) -> dict[str, Any]:
    """Run ``cmd``; when ``stop_when()`` turns true send SIGTERM. Peak RSS and CPU from ``wait4``."""
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while stop_when is not None and proc.poll() is None and not stop_when():
                time.sleep(1.0)
        finally:  # also when stop_when() raised: never leave the scorer running
            if stop_when is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            _pid, status, usage = os.wait4(proc.pid, 0)
    return {
        "exit_status": os.waitstatus_to_exitcode(status),
        "wall_s": round(time.monotonic() - started, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def _offline(files: list[Path], log_dir: Path) -> dict[str, Any]:
    folder = files[0].parent
    out = log_dir / "offline.jsonl"
    cmd = [sys.executable, "-m", "scorer", "score", str(folder), "--quiet", "--out", str(out)]
    res = _measure(cmd, dict(os.environ), log_dir / "offline.log")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    res["verdicts"] = sum(1 for r in rows if "label" in r)
    res["errors"] = len(rows) - res["verdicts"]
    res["cpu_ms_per_image"] = round(res["cpu_s"] * 1000 / len(files), 1)
    res["images_per_s"] = round(len(files) / res["wall_s"], 2)
    return res


def _verdicts(stack: StackSettings, prefix: str) -> tuple[int, float | None]:
    """Verdicts of this run and the seconds between the first and the last."""
    with connect(stack.pg) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), extract(epoch FROM max(scored_at) - min(scored_at)) FROM verdicts "
            "WHERE image_id LIKE %s",
            (prefix + "%",),
        )
        n, span = cur.fetchone() or (0, None)
    return int(n), float(span) if span is not None else None


def _stream(stack: StackSettings, files: list[Path], log_dir: Path) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    topic, prefix = f"bench.phones.{tag}", f"phone-{tag}-"
    create_topics(stack.kafka, {topic: 4, topic + ".dlq": 1})
    store, producer = S3Store(stack.s3), make_producer(stack.kafka)
    total_bytes = 0
    for i, path in enumerate(files):
        data = path.read_bytes()
        total_bytes += len(data)
        key = f"bench-phones/{tag}/{path.name}"
        store.put("images", key, data, "image/jpeg")
        msg = ImageSubmitted(
            image_id=f"{prefix}{i:05d}", ref=f"s3://images/{key}", submitted_at=utcnow(), source="bench"
        )
        producer.send(topic, key=msg.image_id.encode(), value=encode(msg))
    producer.flush(timeout=60)
    producer.close()
    env = {
        **os.environ,
        "CIFAKE_SCORER_INPUT_TOPIC": topic,
        "CIFAKE_SCORER_GROUP_ID": f"bench-phones-{tag}",
        "CIFAKE_SCORER_METRICS_PORT": "0",
    }
    res = _measure(
        [sys.executable, "-m", "scorer", "run"],
        env,
        log_dir / "stream.log",
        stop_when=lambda: _verdicts(stack, prefix)[0] >= len(files),
    )
    n, span = _verdicts(stack, prefix)
    res.update(
        verdicts=n,
        backlog_mb=round(total_bytes / 1e6, 1),
        scored_span_s=round(span or 0.0, 2),
        images_per_s=round(n / span, 2) if span else None,
        cpu_ms_per_image=round(res["cpu_s"] * 1000 / len(files), 1),
    )
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--distinct", type=int, default=40)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "cifake-screen" / "phone-photos")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "phone_photos" / "phone_photos.json")
    p.add_argument("--only", choices=["stream", "offline"], default=None)
    args = p.parse_args()
    files = make_photos(args.cache, args.n, args.distinct)
    sizes = [f.stat().st_size for f in files]
    log_dir = args.out.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "machine": machine_info(),
        "photos": {
            "n": len(files),
            "distinct": args.distinct,
            "size": f"{WIDTH}x{HEIGHT}",
            "mb_min": round(min(sizes) / 1e6, 2),
            "mb_max": round(max(sizes) / 1e6, 2),
            "mb_mean": round(sum(sizes) / len(sizes) / 1e6, 2),
        },
        "command": "python -m harness.phone_photos " + " ".join(sys.argv[1:]),
        "note": "Kafka, MinIO and PostgreSQL ran on the same cores; CPU and RSS are the scorer process only, "
        "model load and warm-up included",
    }
    if args.only in (None, "stream"):
        result["stream"] = _stream(load(StackSettings), files, log_dir)
    if args.only in (None, "offline"):
        result["offline"] = _offline(files, log_dir)
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
