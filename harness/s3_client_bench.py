"""``python -m harness.s3_client_bench``: what one S3 GET and PUT of a small image cost the calling process,
through the ``minio`` SDK and through libcurl (``ingest.s3_curl``, what ``S3Store`` reads and writes with).

On the running stack's MinIO: ``--n`` generated 32×32 JPEGs (the pipeline bench's) are uploaded once, then
each client GETs them all from ``--threads`` threads (the scorer's fetch pool) and PUTs copies of them under
``bench-s3/`` (deleted afterwards), in ``--rounds`` alternating rounds. Reports this process's CPU (user +
system) per request and the requests per second; MinIO's own CPU is not counted (the pipeline bench has it
per process). Writes ``benchmarks/pipeline/s3_client.json``.
"""

from __future__ import annotations

import argparse
import io
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness.bench_inputs import prepare_images, upload
from harness.machine import publish
from ingest import cli
from ingest.settings import StackSettings, load
from ingest.storage import S3Store

PREFIX = "bench-s3/"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(pool: ThreadPoolExecutor, job: Callable[[int], object], n: int) -> dict[str, float]:
    """``job(i)`` for i < n on ``pool``: this process's CPU microseconds per call, and calls per second."""
    cpu, t = _cpu(), time.monotonic()
    list(pool.map(job, range(n)))
    wall, cpu = time.monotonic() - t, _cpu() - cpu
    return {"cpu_us_per_request": 1e6 * cpu / n, "requests_per_s": n / wall}


def run(args: argparse.Namespace) -> dict[str, Any]:
    store = S3Store(load(StackSettings).s3)
    images, described = prepare_images(args.n, None, args.seed)
    keys = upload(store, images)
    sdk = store.client

    def sdk_get(i: int) -> bytes:
        resp = sdk.get_object("images", keys[i])
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def sdk_put(i: int) -> object:
        data = images[i]
        return sdk.put_object("images", f"{PREFIX}sdk-{i}", io.BytesIO(data), len(data), "image/jpeg")

    jobs: dict[str, Callable[[int], object]] = {
        "sdk_get": sdk_get,
        "curl_get": lambda i: store.curl.get("images", keys[i], 10 * 2**20),
        "sdk_put": sdk_put,
        "curl_put": lambda i: store.curl.put("images", f"{PREFIX}curl-{i}", images[i], "image/jpeg"),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in jobs}
    with ThreadPoolExecutor(args.threads) as pool:
        for _ in range(args.rounds):
            for name, job in jobs.items():
                runs[name].append(timed(pool, job, len(images)))
    for obj in sdk.list_objects("images", prefix=PREFIX, recursive=True):
        sdk.remove_object("images", obj.object_name or "")
    median = {
        name: {k: round(statistics.median(r[k] for r in rs), 1) for k in rs[0]} for name, rs in runs.items()
    }
    return {
        "images": described,
        "threads": args.threads,
        "rounds": args.rounds,
        "median": median,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.s3_client_bench", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="images, each read and written once per round")
    p.add_argument("--threads", type=int, default=8, help="concurrent requests (the scorer's fetch workers)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path("benchmarks/pipeline/s3_client.json")))
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    cli.configure_logging(args.log_level)
    result = run(args)
    return publish(args.out, result, "harness.s3_client_bench", result["median"])


if __name__ == "__main__":
    sys.exit(main())
