"""The scorer's in-memory known-content index: nearest active PDQ entry within a Hamming distance.

Contract:

- ``apply(entries)`` upserts by ``entry_id`` (the last occurrence wins within one call). A new id or a
  changed hash adds a position (a changed hash also marks the old position dead); a change of label,
  ``active``, moderators, source or image id only rewrites that position's metadata, so deactivation and
  relabelling take effect for the next ``lookup`` without any rebuild.
- ``lookup(queries)`` takes uint8 ``[N, V, 32]`` (V dihedral variants of N images, packed as in
  ``scorer.pdq``) and returns, per image, the nearest *active* entry at distance ``<= max_distance`` over
  all its variants, or None. Ties: the smaller distance, then the lower ``entry_id``. All N*V hashes go
  through one vectorised search per segment (below), in blocks of ``_QUERY_BLOCK`` hashes. Inactive and
  dead positions are filtered after the search, over every candidate within the radius, so an inactive
  nearest never hides an active one further away.
- Threads: one writer (the list watcher) calls ``apply``, other threads call ``lookup``. A lock guards
  the published state; a lookup holds it for one micro-batch (about 10 ms for 512 hashes over 10^6
  entries), a metadata update or an append holds it for microseconds. The expensive part of a rebuild
  (sorting 10^6 hashes into the multi-index tables, about 2 s) runs outside the lock on private arrays and
  is swapped in under it, so lookups never wait for a rebuild. The lock is needed because faiss indexes are
  not safe for concurrent add and search, and because a lookup must not see half of an apply.

Layout: every hash ever added has a *position*; per-position columns hold the packed code, entry id (0 when
the position is dead), label, active flag, moderators, source and image id. Positions ``[0, n_main)`` are
in a static multi-index hash (``MultiIndexHash``); positions ``[n_main, n)`` are the *tail*, a faiss
``IndexBinaryFlat`` searched exhaustively. Lists of up to ``brute_force_max`` live hashes are all tail
(exact). Above it, the multi-index hash is rebuilt over all live positions whenever the tail exceeds
``tail_max`` or a quarter of the positions are dead.

Why not faiss ``IndexBinaryMultiHash`` (what HMA uses): it is the same algorithm, but measured on one core
at 10^6 random hashes it spent about 400 ns per candidate and reached 660 hashes/s with 16 x 16 bit chunks
(brute force: about 800) and 3,500 with 13 x 19; the vectorised CSR tables here reach 40,000 with 13 x 19
(no miss in 20,000 planted hashes) and 62,000 with the chosen 12 x 20 (5 misses, all at d = 28-31), see
``harness/known_content_bench.py index`` and ``benchmarks/known_content/index.json``, which re-measures
faiss's index beside them.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

from ingest.signals import KnownMatch
from scorer.mih import EMPTY_I, MultiIndexHash, mih_params
from scorer.pdq import HASH_BITS, HASH_BYTES, MATCH_DISTANCE

Label = Literal["real", "fake"]
Source = Literal["moderation", "import"]
_LABELS: tuple[Label, ...] = ("real", "fake")
_SOURCES: tuple[Source, ...] = ("moderation", "import")
_IMAGE_ID_MAX = 128  # KnownMatch.image_id's limit, checked at apply so that lookup cannot fail on it
# Queries are searched in blocks of this many hashes (a 64-image micro-batch is one block), which bounds the
# candidate arrays for large batches (about 10 MB per block at 10^6 entries).
_QUERY_BLOCK = 1024


@dataclass(frozen=True)
class Entry:
    """One known-content list entry as the watcher reads it (the hash packed as in ``scorer.pdq``)."""

    entry_id: int
    hash: bytes
    label: Label
    active: bool
    image_id: str | None = None
    moderators: int = 0
    source: Source = "moderation"

    def __post_init__(self) -> None:
        if self.entry_id < 1:
            raise ValueError(f"entry_id must be >= 1, got {self.entry_id}")
        if len(self.hash) != HASH_BYTES:
            raise ValueError(f"entry {self.entry_id}: hash must be {HASH_BYTES} bytes, got {len(self.hash)}")
        if self.label not in _LABELS or self.source not in _SOURCES or self.moderators < 0:
            raise ValueError(f"entry {self.entry_id}: bad label/source/moderators")
        if self.image_id is not None and len(self.image_id) > _IMAGE_ID_MAX:
            raise ValueError(f"entry {self.entry_id}: image_id longer than {_IMAGE_ID_MAX}")


class _IdMap:
    """entry_id -> position as two sorted int64 arrays (16 B per entry; a dict would take ~100 B)."""

    def __init__(self) -> None:
        self.ids = EMPTY_I
        self.pos = EMPTY_I

    def get(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ``ids``, -1 for an unknown id."""
        if len(self.ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        i = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where(self.ids[i] == ids, self.pos[i], -1)

    def put(self, ids: np.ndarray, pos: np.ndarray) -> None:
        """Map unique ``ids`` to ``pos``, overwriting known ids."""
        known = self.get(ids) >= 0
        i = np.searchsorted(self.ids, ids[known])
        self.pos[i] = pos[known]
        order = np.argsort(ids[~known])
        new_ids, new_pos = ids[~known][order], pos[~known][order]
        at = np.searchsorted(self.ids, new_ids)
        self.ids = np.insert(self.ids, at, new_ids)
        self.pos = np.insert(self.pos, at, new_pos)


@dataclass(frozen=True)
class _Batch:
    """One ``apply`` call's entries as columns, one row per distinct entry_id (the last occurrence wins)."""

    ids: np.ndarray
    codes: np.ndarray
    active: np.ndarray
    label: np.ndarray
    moderators: np.ndarray
    source: np.ndarray
    image_id: np.ndarray

    @classmethod
    def of(cls, entries: Iterable[Entry]) -> _Batch:
        rows = list({e.entry_id: e for e in entries}.values())
        image_id = np.empty(len(rows), dtype=object)
        image_id[:] = [e.image_id for e in rows]
        return cls(
            ids=np.fromiter((e.entry_id for e in rows), dtype=np.int64, count=len(rows)),
            codes=np.frombuffer(b"".join(e.hash for e in rows), dtype=np.uint8).reshape(-1, HASH_BYTES),
            active=np.fromiter((e.active for e in rows), dtype=bool, count=len(rows)),
            label=np.fromiter((_LABELS.index(e.label) for e in rows), dtype=np.uint8, count=len(rows)),
            moderators=np.fromiter((e.moderators for e in rows), dtype=np.int64, count=len(rows)),
            source=np.fromiter((_SOURCES.index(e.source) for e in rows), dtype=np.uint8, count=len(rows)),
            image_id=image_id,
        )

    def __len__(self) -> int:
        return len(self.ids)


_META = ("active", "label", "moderators", "source", "image_id")


@dataclass
class _Columns:
    """Per-position columns with spare capacity; rows past the used count are garbage."""

    codes: np.ndarray  # uint8 [cap, 32]
    entry: np.ndarray  # int64, 0 = dead position (its entry moved to another hash)
    active: np.ndarray  # bool, False for dead positions too
    label: np.ndarray  # uint8 index into _LABELS
    moderators: np.ndarray  # int64
    source: np.ndarray  # uint8 index into _SOURCES
    image_id: np.ndarray  # object: str | None

    @classmethod
    def allocate(cls, cap: int) -> _Columns:
        return cls(
            codes=np.zeros((cap, HASH_BYTES), dtype=np.uint8),
            entry=np.zeros(cap, dtype=np.int64),
            active=np.zeros(cap, dtype=bool),
            label=np.zeros(cap, dtype=np.uint8),
            moderators=np.zeros(cap, dtype=np.int64),
            source=np.zeros(cap, dtype=np.uint8),
            image_id=np.full(cap, None, dtype=object),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ("codes", "entry", *_META)}

    def copy_rows(self, rows: np.ndarray, cap: int) -> _Columns:
        """New columns of capacity ``cap`` holding ``rows`` of these at positions 0..len(rows)-1."""
        new = _Columns.allocate(cap)
        for name, arr in self.arrays().items():
            getattr(new, name)[: len(rows)] = arr[rows]
        return new

    def write(self, pos: np.ndarray, batch: _Batch, rows: np.ndarray, *, codes: bool) -> None:
        if codes:
            self.codes[pos] = batch.codes[rows]
            self.entry[pos] = batch.ids[rows]
        for name in _META:
            getattr(self, name)[pos] = getattr(batch, name)[rows]

    def nbytes(self, used: int) -> int:
        strings = sum(sys.getsizeof(s) for s in self.image_id[:used] if s is not None)
        return int(sum(arr.nbytes for arr in self.arrays().values())) + strings


class KnownIndex:
    """Known-content entries, searched by micro-batches of dihedral PDQ hashes (see the module docstring)."""

    def __init__(
        self, max_distance: int = MATCH_DISTANCE, *, brute_force_max: int = 4_096, tail_max: int = 2_048
    ) -> None:
        if not 0 <= max_distance < HASH_BITS:
            raise ValueError(f"max_distance must be in [0, {HASH_BITS}), got {max_distance}")
        self.max_distance = max_distance
        self._brute_force_max = brute_force_max
        self._tail_max = tail_max
        self._lock = threading.Lock()  # guards everything a lookup reads
        self._write_lock = threading.Lock()  # serialises apply (and with it rebuilds)
        self._cols = _Columns.allocate(0)
        self._n = 0  # positions in use
        self._n_main = 0  # positions [0, n_main) are in self._mih
        self._dead = 0
        self._mih: MultiIndexHash | None = None
        self._tail = faiss.IndexBinaryFlat(HASH_BITS)
        self._ids = _IdMap()  # touched by the writer only

    def apply(self, entries: Iterable[Entry]) -> None:
        """Upsert entries by id; metadata changes are visible to the next lookup, new hashes too."""
        batch = _Batch.of(entries)
        if not len(batch):
            return
        with self._write_lock:
            pos = self._ids.get(batch.ids)
            moved = np.zeros(len(batch), dtype=bool)
            known = np.flatnonzero(pos >= 0)
            moved[known] = (self._cols.codes[pos[known]] != batch.codes[known]).any(axis=1)
            update = np.flatnonzero((pos >= 0) & ~moved)
            add = np.flatnonzero((pos < 0) | moved)
            with self._lock:
                self._cols.write(pos[update], batch, update, codes=False)
                self._kill(pos[moved])
                new_pos = self._append(batch, add)
            self._ids.put(batch.ids[add], new_pos)
            if self._rebuild_due():
                self._rebuild()

    def lookup(self, queries: np.ndarray) -> list[KnownMatch | None]:
        """Per image of uint8 ``[N, V, 32]``, the nearest active entry within ``max_distance``, or None."""
        q = np.asarray(queries)
        if q.dtype != np.uint8 or q.ndim != 3 or q.shape[2] != HASH_BYTES:
            raise ValueError(f"expected uint8 [N, V, {HASH_BYTES}], got {q.dtype} {q.shape}")
        n_images, n_variants = q.shape[:2]
        result: list[KnownMatch | None] = [None] * n_images
        if n_images == 0 or n_variants == 0:
            return result
        with self._lock:
            rows, pos, dist = self._search(np.ascontiguousarray(q.reshape(-1, HASH_BYTES)))
            image, pos, dist = self._nearest_active(rows // n_variants, pos, dist)
            found = [
                (int(i), int(d), *self._metadata(int(p))) for i, p, d in zip(image, pos, dist, strict=True)
            ]
        for i, d, entry_id, label, image_id, moderators, source in found:
            result[i] = KnownMatch(
                entry_id=entry_id,
                label=label,
                distance=d,
                image_id=image_id,
                moderators=moderators,
                source=source,
            )
        return result

    def __len__(self) -> int:
        """Active entries."""
        with self._lock:
            return int(np.count_nonzero(self._cols.active[: self._n]))

    def memory_bytes(self) -> int:
        """Bytes held: columns (spare capacity and image id strings included), tables, tail, id map."""
        with self._lock:
            total = self._cols.nbytes(self._n) + self._tail.ntotal * HASH_BYTES
            total += self._ids.ids.nbytes + self._ids.pos.nbytes
            if self._mih is not None:
                total += self._mih.memory_bytes()
                if not np.may_share_memory(self._mih.words, self._cols.codes):
                    total += self._mih.words.nbytes  # the columns grew since the last rebuild
            return int(total)

    def describe(self) -> dict[str, int]:
        """Segment sizes and multi-index parameters, for logs and benchmarks."""
        with self._lock:
            m, b = (self._mih.m, self._mih.b) if self._mih is not None else (0, 0)
            return {
                "positions": self._n,
                "main": self._n_main,
                "tail": self._n - self._n_main,
                "dead": self._dead,
                "mih_chunks": m,
                "mih_chunk_bits": b,
            }

    # -- internals; callers hold self._lock, or the write lock alone where only the writer reads --

    def _metadata(self, p: int) -> tuple[int, Label, str | None, int, Source]:
        c = self._cols
        return (
            int(c.entry[p]),
            _LABELS[c.label[p]],
            c.image_id[p],
            int(c.moderators[p]),
            _SOURCES[c.source[p]],
        )

    def _search(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query row, position, distance) of every position within max_distance, active or not."""
        parts = []
        for start in range(0, len(flat), _QUERY_BLOCK):
            block = flat[start : start + _QUERY_BLOCK]
            if self._mih is not None:
                rows, pos, dist = self._mih.search(block, self.max_distance)
                parts.append((rows + start, pos, dist))
            if self._tail.ntotal:
                # faiss's binary range search keeps distances strictly below the radius.
                lims, d, i = self._tail.range_search(block, self.max_distance + 1)
                rows = np.repeat(np.arange(len(block), dtype=np.int64), np.diff(lims).astype(np.int64))
                parts.append((rows + start, i.astype(np.int64) + self._n_main, d.astype(np.int64)))
        if not parts:
            return EMPTY_I, EMPTY_I, EMPTY_I
        return tuple(np.concatenate(col) for col in zip(*parts, strict=True))  # type: ignore[return-value]

    def _nearest_active(
        self, image: np.ndarray, pos: np.ndarray, dist: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per image, the active candidate with the smallest (distance, entry_id)."""
        ok = self._cols.active[pos]  # filtering after the radius search: inactive never hides active
        image, pos, dist = image[ok], pos[ok], dist[ok]
        order = np.lexsort((self._cols.entry[pos], dist, image))
        first = np.ones(len(order), dtype=bool)
        first[1:] = image[order][1:] != image[order][:-1]
        best = order[first]
        return image[best], pos[best], dist[best]

    def _kill(self, pos: np.ndarray) -> None:
        self._cols.entry[pos] = 0
        self._cols.active[pos] = False
        self._dead += len(pos)

    def _append(self, batch: _Batch, rows: np.ndarray) -> np.ndarray:
        start, end = self._n, self._n + len(rows)
        if end > len(self._cols.entry):
            cap = max(end, 2 * len(self._cols.entry), 1024)
            self._cols = self._cols.copy_rows(np.arange(self._n), cap)
        pos = np.arange(start, end, dtype=np.int64)
        self._cols.write(pos, batch, rows, codes=True)
        if len(rows):
            self._tail.add(np.ascontiguousarray(batch.codes[rows]))
        self._n = end
        return pos

    def _rebuild_due(self) -> bool:
        live = self._n - self._dead
        tail_full = self._n - self._n_main > self._tail_max and live > self._brute_force_max
        return tail_full or self._dead > max(self._tail_max, self._n // 4)

    def _rebuild(self) -> None:
        """Compact live positions and rebuild the segments off-lock, then swap them in (writer only)."""
        keep = np.flatnonzero(self._cols.entry[: self._n] > 0)
        live = len(keep)
        cols = self._cols.copy_rows(keep, live + self._tail_max)
        tail = faiss.IndexBinaryFlat(HASH_BITS)
        mih = None
        if live > self._brute_force_max:
            mih = MultiIndexHash(cols.codes[:live], *mih_params(live))
        elif live:
            tail.add(cols.codes[:live])
        remap = np.full(self._n, -1, dtype=np.int64)
        remap[keep] = np.arange(live)
        with self._lock:
            self._cols, self._mih, self._tail = cols, mih, tail
            self._n, self._n_main, self._dead = live, (live if mih is not None else 0), 0
        self._ids.pos = remap[self._ids.pos]
