"""Known-content matching figures: the index at 10^6 hashes, and PDQ on CIFAKE re-uploads.

    python -m harness.known_content_bench index    [--out benchmarks/known_content]
    python -m harness.known_content_bench reupload [--out benchmarks/known_content] [--data cifake-train.zip]

``index``: 10^6 seeded random hashes in a ``KnownIndex``; 2,048 query images of 8 variants each, half with
one variant planted 0..31 random bit flips from an indexed hash, half unrelated. Reports the build time,
memory (``memory_bytes`` and the RSS delta), lookups per second on one core in the scorer's micro-batches
(hashes/s and images/s), recall against faiss ``IndexBinaryFlat`` brute force on a sample, the multi-index
parameters measured beside the chosen ones, faiss ``IndexBinaryMultiHash`` for comparison, and the CPU of
``pdq.dihedral`` per image.

``reupload``: every unique CIFAKE training image (sha256-deduplicated) of PDQ quality >= 50 indexed by its
hash (``MIN_QUALITY_INDEXED`` says why); 2,000 of them re-uploaded through 27 edits (JPEG q50, resizes,
flips, rotations, crops) and looked up; 20,000 queried leave-one-out against all the others, with each match
<= 31 classified as a near-duplicate or a false match by the pixels (``NEAR_DUPLICATE_CORRELATION``), and the
pairs drawn in ``near_duplicates.png`` for a person to check.

Each writes ``<out>/<mode>.json`` atomically and prints it as one JSON line. CPU figures are process CPU
seconds with faiss on one thread; the load average is recorded, what else ran is for the reader to note.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from harness.known_bench_common import (
    BATCH_IMAGES,
    DEFAULT_DATA,
    DEFAULT_OUT,
    MAX_D,
    SEED,
    brute_nearest,
    flip,
    header,
    lookup_timed,
    rss,
    write,
)
from harness.known_reupload import bench_reupload
from scorer import pdq
from scorer.known_index import Entry, KnownIndex
from scorer.mih import MultiIndexHash, mih_params

# -- index --------------------------------------------------------------------------------------------------


def bench_index(n: int = 1_000_000, n_images: int = 2_048, n_truth: int = 512) -> dict[str, Any]:
    rng = np.random.default_rng(SEED)
    codes = rng.integers(0, 256, (n, pdq.HASH_BYTES), dtype=np.uint8)
    entries = [Entry(i + 1, codes[i].tobytes(), "fake", True) for i in range(n)]
    gc.collect()
    rss0, cpu0, wall0 = rss(), time.process_time(), time.perf_counter()
    index = KnownIndex()
    index.apply(entries)
    build = {"cpu_s": time.process_time() - cpu0, "wall_s": time.perf_counter() - wall0}
    gc.collect()
    memory = {"memory_bytes": index.memory_bytes(), "rss_delta_bytes": rss() - rss0}
    # glibc keeps the build's freed temporaries in the heap; trimmed, the RSS delta is the index itself.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    memory["rss_delta_after_malloc_trim_bytes"] = rss() - rss0
    del entries

    queries, planted, flips = _queries(codes, n_images, rng)
    speed = {}
    for batch in (8, BATCH_IMAGES):
        cpu = [lookup_timed(index, queries, batch)[1] for _ in range(3)]
        per_s = n_images / float(np.median(cpu))
        speed[f"batch_{batch}_images"] = {"images_per_s": per_s, "hashes_per_s": per_s * queries.shape[1]}
    results, _ = lookup_timed(index, queries)

    # Brute force on a sample: the first n_truth planted images and 128 unrelated ones.
    sample = np.r_[0:n_truth, n_images // 2 : n_images // 2 + 128]
    truth = brute_nearest(codes, queries[sample])
    got = [None if results[i] is None else (results[i].distance, results[i].entry_id) for i in sample]
    return {
        "entries": n,
        "index": index.describe(),
        "build": build,
        "memory": memory,
        "lookup_one_core": speed,
        "recall_vs_brute_force": _recall(truth, got, flips[sample], planted[sample]),
        "false_matches_unrelated": sum(r is not None for r in results[n_images // 2 :]),
        "mih_parameter_sweep": _sweep(codes, rng),
        "faiss_multihash": _faiss_multihash(codes, queries[:128], truth[:128]),
        "pdq_dihedral_cpu_ms_per_image": _pdq_cpu(rng),
    }


def _queries(codes: np.ndarray, n_images: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """8-variant queries: the first half with one variant 0..31 flips from an indexed hash."""
    half = n_images // 2
    queries = rng.integers(0, 256, (n_images, 8, pdq.HASH_BYTES), dtype=np.uint8)
    planted = np.zeros(n_images, dtype=np.int64)
    flips = np.full(n_images, -1, dtype=np.int64)
    planted[:half] = rng.integers(0, len(codes), half) + 1
    flips[:half] = rng.integers(0, MAX_D + 1, half)
    slot = rng.integers(0, 8, half)
    queries[np.arange(half), slot] = flip(codes[planted[:half] - 1], flips[:half], rng)
    return queries, planted, flips


def _recall(truth: list[Any], got: list[Any], flips: np.ndarray, planted: np.ndarray) -> dict[str, Any]:
    expected = [i for i, t in enumerate(truth) if t is not None]
    same = [i for i in expected if got[i] == truth[i]]
    by_flips = {}
    for lo, hi in ((0, 15), (16, 25), (26, 31)):
        rows = [i for i in expected if lo <= flips[i] <= hi]
        by_flips[f"{lo}-{hi}"] = {"queries": len(rows), "found": sum(got[i] == truth[i] for i in rows)}
    return {
        "queries": len(truth),
        "brute_force_matches": len(expected),
        "index_same_as_brute_force": len(same),
        "recall": len(same) / max(1, len(expected)),
        "extra_matches": sum(1 for i, t in enumerate(truth) if t is None and got[i] is not None),
        "planted_entry_is_nearest": sum(1 for i in expected if truth[i][1] == planted[i]),
        "by_planted_flips": by_flips,
    }


def _sweep(codes: np.ndarray, rng: np.random.Generator, n_planted: int = 20_000) -> list[dict[str, Any]]:
    """The multi-index tables alone at each chunk length, on single hashes planted 0..31 flips from a code.

    For random codes the planted one is the only code within 31 (the brute-force sample above confirms it),
    so recall needs no brute force here and the sample can be large enough to see a 10^-4 miss rate."""
    src = rng.integers(0, len(codes), n_planted)
    flips = rng.integers(0, MAX_D + 1, n_planted)
    planted = flip(codes[src], flips, rng)
    rows_out = []
    for b in (17, 18, 19, 20):
        m = pdq.HASH_BITS // b
        t = time.process_time()
        mih = MultiIndexHash(codes, m, b)
        build = time.process_time() - t
        hit, cpu = np.zeros(n_planted, dtype=bool), 0.0
        for s in range(0, n_planted, BATCH_IMAGES * 8):  # one micro-batch per call, as the index does
            t = time.process_time()
            rows, pos, _ = mih.search(planted[s : s + BATCH_IMAGES * 8], MAX_D)
            cpu += time.process_time() - t
            hit[(rows + s)[pos == src[rows + s]]] = True
        rows_out.append(
            {
                "chunks": m,
                "bits": b,
                "build_cpu_s": build,
                "hashes_per_s": n_planted / cpu,
                "table_bytes": mih.memory_bytes(),
                "planted": n_planted,
                "recall": float(hit.mean()),
                "missed_at_distance": dict(sorted(Counter(flips[~hit].tolist()).items())),
                "chosen": (m, b) == mih_params(len(codes)),
            }
        )
        del mih
    return rows_out


def _faiss_multihash(codes: np.ndarray, queries: np.ndarray, truth: list[Any]) -> list[dict[str, Any]]:
    """faiss IndexBinaryMultiHash (HMA's PDQ index) on the same codes: range search at MAX_D."""
    flat = np.ascontiguousarray(queries.reshape(-1, pdq.HASH_BYTES))
    out = []
    for nhash, b, nflip in ((16, 16, 1), (13, 19, 1)):
        t = time.process_time()
        index = faiss.IndexBinaryMultiHash(pdq.HASH_BITS, nhash, b)
        index.nflip = nflip
        index.add(codes)
        build = time.process_time() - t
        t = time.process_time()
        lims, dist, ids = index.range_search(flat, MAX_D + 1)
        cpu = time.process_time() - t
        rows = np.repeat(np.arange(len(flat)), np.diff(lims).astype(np.int64))
        found = {(int(r) // 8, int(i) + 1, int(d)) for r, i, d in zip(rows, ids, dist, strict=True)}
        hits = sum(1 for i, tr in enumerate(truth) if tr is not None and (i, tr[1], tr[0]) in found)
        out.append(
            {
                "nhash": nhash,
                "b": b,
                "nflip": nflip,
                "build_cpu_s": build,
                "hashes_per_s": len(flat) / cpu,
                "recall": hits / max(1, sum(map(bool, truth))),
            }
        )
        del index
    return out


def _pdq_cpu(rng: np.random.Generator, reps: int = 300) -> dict[str, float]:
    out = {}
    for side in (32, 256):
        img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        t = time.process_time()
        for _ in range(reps):
            pdq.dihedral(img)
        out[f"{side}x{side}"] = (time.process_time() - t) / reps * 1e3
    return out


# -- command line -------------------------------------------------------------------------------------------


def _data_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    if DEFAULT_DATA.exists():
        return DEFAULT_DATA
    sys.exit(
        f"no CIFAKE archive at {DEFAULT_DATA}: pass --data PATH (the cifake-train.zip of the public archive)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m harness.known_content_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("mode", choices=("index", "reupload"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data", help="cifake-train.zip (reupload only)")
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(1)
    result = header(args.mode)
    cpu0 = time.process_time()
    if args.mode == "index":
        result |= bench_index()
    else:
        data = _data_path(args.data)
        result |= bench_reupload(data, args.out)
    result["total_cpu_s"] = time.process_time() - cpu0
    result["loadavg_end"] = os.getloadavg()
    write(args.out, f"{args.mode}.json", result)
    print(json.dumps(result, default=float, separators=(",", ":")))


if __name__ == "__main__":
    main()
