"""Helpers shared by the known-content benchmarks (``harness.known_content_bench``)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from harness.machine import ROOT, machine_info
from scorer import pdq
from scorer.known_index import KnownIndex

SEED = 20_240_601
DEFAULT_OUT = ROOT / "benchmarks" / "known_content"
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "cifake-train.zip"
BATCH_IMAGES = 64  # the scorer's micro-batch: 64 images = 512 hashes
MAX_D = pdq.MATCH_DISTANCE


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def stats(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return {}
    q = np.percentile(v, [1, 5, 50, 95, 99])
    return {
        "min": float(v.min()),
        "p1": q[0],
        "p5": q[1],
        "median": q[2],
        "p95": q[3],
        "p99": q[4],
        "max": float(v.max()),
    }


def flip(codes: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``codes`` with ``counts[i]`` distinct random bits flipped in row i."""
    ranks = np.argsort(rng.random((len(codes), pdq.HASH_BITS)), axis=1)
    mask = ranks < np.asarray(counts)[:, None]
    return np.packbits(np.unpackbits(codes, axis=1) ^ mask.astype(np.uint8), axis=1)


def lookup_timed(
    index: KnownIndex, queries: np.ndarray, batch: int = BATCH_IMAGES
) -> tuple[list[Any], float]:
    """All lookups in micro-batches of ``batch`` images, and the process CPU seconds they took."""
    out: list[Any] = []
    t = time.process_time()
    for s in range(0, len(queries), batch):
        out += index.lookup(queries[s : s + batch])
    return out, time.process_time() - t


def brute_nearest(codes: np.ndarray, queries: np.ndarray) -> list[tuple[int, int] | None]:
    """Exact (distance, entry_id) of the nearest code within MAX_D per image (ids are row + 1)."""
    flat = faiss.IndexBinaryFlat(pdq.HASH_BITS)
    flat.add(codes)
    n_var = queries.shape[1]
    lims, dist, ids = flat.range_search(np.ascontiguousarray(queries.reshape(-1, pdq.HASH_BYTES)), MAX_D + 1)
    out: list[tuple[int, int] | None] = []
    for img in range(len(queries)):
        lo, hi = int(lims[img * n_var]), int(lims[(img + 1) * n_var])
        pairs = sorted(zip(dist[lo:hi].tolist(), (ids[lo:hi] + 1).tolist(), strict=True))
        out.append(pairs[0] if pairs else None)
    return out


def write(out_dir: Path, name: str, result: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{name}.tmp"
    tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    os.replace(tmp, out_dir / name)


def header(mode: str) -> dict[str, Any]:
    return {
        "benchmark": f"known_content.{mode}",
        "machine": machine_info(packages=("pdqhash", "faiss-cpu", "numpy", "pillow")),
        "faiss_threads": 1,
        "loadavg_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
