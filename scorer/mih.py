"""Multi-index hashing over packed 256-bit PDQ codes: the bulk of the known-content index.

Static tables built once over a set of codes (``scorer.known_index`` rebuilds them as lists grow) and
searched with vectorised numpy: no Python loop per query or per candidate.
"""

from __future__ import annotations

import math

import numpy as np

from scorer.pdq import HASH_BITS


def mih_params(n: int) -> tuple[int, int]:
    """(chunks m, bits per chunk b) of the multi-index hash over ``n`` hashes; each chunk probes 1 bit flip.

    b ~ log2(n) (Norouzi et al.): about one candidate per probe. A hash within distance d of the query
    differs in at most one bit of some chunk unless every chunk holds two or more of the d flips, which needs
    d >= 2m: 15 x 17 bits can only miss d = 30, 31, 12 x 20 bits d >= 24, and rarely: for random flips, 3 in
    10^3 at d = 31 and 2 in 10^4 averaged over d = 0..31 (real edits cluster their flips, which makes a chunk
    with at most one flip likelier still). Measured on one core at 10^6 random hashes, 512-hash calls, 20,000
    hashes planted 0..31 flips away (benchmarks/known_content/index.json): b = 17: 11k hashes/s, 18: 25k,
    19: 40k, all found; 20: 62k, 5 missed (d = 28-31). The tables take m * 2^b * 4 bytes (7.5 MB at b = 17,
    48 MB at b = 20) plus 4 bytes per hash and chunk. Below 2^17 hashes b stays 17 (a smaller table would
    not pay: 10^5 hashes run at ~90k/s).
    """
    b = min(20, max(17, round(math.log2(max(n, 2)))))
    return HASH_BITS // b, b


class MultiIndexHash:
    """Static multi-index hashing (Norouzi, Punjani & Fleet 2012) over packed 256-bit codes.

    The code is cut into m disjoint chunks of b bits (the last 256 - m*b bits are not indexed, only
    compared). Chunk table c is a CSR layout: ``ids[c]`` lists the positions sorted by chunk value, and
    ``offsets[c][v]:offsets[c][v+1]`` is the run with value v. A query probes, per chunk, its own value and
    the b values one bit away, then verifies every candidate's full distance.
    """

    def __init__(self, codes: np.ndarray, m: int, b: int) -> None:
        self.m, self.b = m, b
        # Distances do not depend on byte order, and chunks only need to be the same for index and
        # queries: the native uint64 view costs no copy.
        self.words = np.ascontiguousarray(codes).view(np.uint64)
        n = len(codes)
        self.offsets = np.zeros((m, (1 << b) + 1), dtype=np.int32)
        self.ids = np.empty((m, n), dtype=np.int32)
        for c in range(m):
            keys = _chunk(self.words, c * b, b)
            self.ids[c] = np.argsort(keys, kind="stable")
            np.cumsum(np.bincount(keys, minlength=1 << b), out=self.offsets[c, 1:])
        self._row_base = (np.arange(m, dtype=np.int64) * ((1 << b) + 1))[None, :, None]
        self._id_base = (np.arange(m, dtype=np.int64) * n)[None, :, None]
        self._flips = np.concatenate([[0], 1 << np.arange(b, dtype=np.int64)])[None, None, :]

    def __len__(self) -> int:
        return len(self.words)

    def memory_bytes(self) -> int:
        return int(self.offsets.nbytes + self.ids.nbytes)  # the codes are the owner's column, not counted

    def search(self, queries: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query row, position, distance) of every candidate within ``max_distance`` (a pair may repeat)."""
        qw = np.ascontiguousarray(queries).view(np.uint64)
        keys = np.stack([_chunk(qw, c * self.b, self.b) for c in range(self.m)], axis=1)
        probes = (keys[:, :, None] ^ self._flips) + self._row_base  # [Q, m, b+1] rows of the offsets
        flat = self.offsets.ravel()
        starts = flat.take(probes).astype(np.int64)
        lens = (flat.take(probes + 1) - starts).ravel()
        starts = (starts + self._id_base).ravel()
        total = int(lens.sum())
        if total == 0:
            return EMPTY_I, EMPTY_I, EMPTY_I
        # Expand each (start, len) run into consecutive indices of the flattened id tables.
        run = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total)
        cand = self.ids.ravel().take(run)
        per_query = lens.reshape(len(qw), -1).sum(axis=1)
        x = self.words.take(cand, axis=0)
        np.bitwise_xor(x, np.repeat(qw, per_query, axis=0), out=x)
        ones = np.bitwise_count(x)
        # Column adds beat .sum(axis=1) on a 4-wide axis several times over.
        dist = ones[:, 0].astype(np.int64) + ones[:, 1] + ones[:, 2] + ones[:, 3]
        hit = np.flatnonzero(dist <= max_distance)
        rows = np.searchsorted(np.cumsum(per_query), hit, side="right")
        return rows, cand.take(hit).astype(np.int64), dist.take(hit)


EMPTY_I = np.empty(0, dtype=np.int64)


def _chunk(words: np.ndarray, start: int, b: int) -> np.ndarray:
    """Bits ``[start, start + b)`` of each row of ``words`` (uint64 [n, 4]) as int64 values < 2^b."""
    w, s = divmod(start, 64)
    mask = np.uint64((1 << b) - 1)
    v = words[:, w] >> np.uint64(s)
    if s + b > 64:  # the chunk straddles two words
        v = v | (words[:, w + 1] << np.uint64(64 - s))
    return (v & mask).astype(np.int64)
