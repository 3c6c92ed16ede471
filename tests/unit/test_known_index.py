"""scorer.known_index against a brute-force oracle (scorer.pdq itself: tests/unit/test_pdq.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from scorer import known_index, mih, pdq
from scorer.known_index import Entry, KnownIndex
from tests.known_helpers import smooth_image

BYTES = pdq.HASH_BYTES


# -- helpers --------------------------------------------------------------------------------------------


def flip_bits(code: np.ndarray, positions: Sequence[int] | np.ndarray) -> np.ndarray:
    bits = np.unpackbits(code)
    bits[list(positions)] ^= 1
    return np.packbits(bits)


def entry(entry_id: int, code: np.ndarray, label: str = "fake", active: bool = True, **kw: object) -> Entry:
    return Entry(entry_id, code.tobytes(), label, active, **kw)  # type: ignore[arg-type]


def oracle(entries: dict[int, Entry], queries: np.ndarray, max_distance: int) -> list[tuple[int, int] | None]:
    """(distance, entry_id) of the nearest active entry per image, smallest distance then lowest id."""
    live = sorted((e.entry_id, e.hash) for e in entries.values() if e.active)
    if not live or not len(queries):
        return [None] * len(queries)
    ids = np.array([eid for eid, _ in live])
    codes = np.frombuffer(b"".join(h for _, h in live), dtype=np.uint8).reshape(-1, BYTES)
    dist = np.bitwise_count(queries[:, :, None, :] ^ codes[None, None]).sum(axis=3).min(axis=1)  # [N, E]
    out: list[tuple[int, int] | None] = []
    for row in dist:
        best = int(np.argmin(row))  # ids are sorted: the first minimum has the lowest id
        out.append((int(row[best]), int(ids[best])) if row[best] <= max_distance else None)
    return out


def found(index: KnownIndex, queries: np.ndarray) -> list[tuple[int, int] | None]:
    return [None if m is None else (m.distance, m.entry_id) for m in index.lookup(queries)]


@contextmanager
def exact_tables() -> Iterator[None]:
    """16 chunks of 16 bits: by pigeonhole exact at d <= 31, so the oracle comparison cannot be flaky."""
    with mock.patch.object(known_index, "mih_params", return_value=(16, 16)):
        yield


RNG = np.random.default_rng(20_240_601)
A = RNG.integers(0, 256, BYTES, dtype=np.uint8)
B = RNG.integers(0, 256, BYTES, dtype=np.uint8)


def one(code: np.ndarray, variants: int = 1) -> np.ndarray:
    """A query of one image whose first variant is ``code`` (the others: unrelated random hashes)."""
    q = np.random.default_rng(1).integers(0, 256, (1, variants, BYTES), dtype=np.uint8)
    q[0, 0] = code
    return q


TRANSFORMS = {
    "rot90": lambda a: np.rot90(a, 1),
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3),
    "fliplr": lambda a: np.flip(a, 1),
    "flipud": lambda a: np.flip(a, 0),
    "transpose": lambda a: a.transpose(1, 0, 2),
    "antitranspose": lambda a: np.rot90(a, 2).transpose(1, 0, 2),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transformed_pixels_are_found_through_the_variants(name: str) -> None:
    images = [smooth_image(seed) for seed in range(6)]
    index = KnownIndex()
    index.apply(entry(i + 1, pdq.dihedral(img)[0][0]) for i, img in enumerate(images))
    uploads = np.stack([pdq.dihedral(np.ascontiguousarray(TRANSFORMS[name](img)))[0] for img in images])
    matches = index.lookup(uploads)
    assert [m.entry_id if m else None for m in matches] == list(range(1, 7))
    # The transformed upload's own hash is far from the stored one: only a variant brings it back.
    assert all(pdq.hamming(uploads[i, 0], pdq.dihedral(images[i])[0][0]) > 31 for i in range(6))


# -- KnownIndex: behaviour -----------------------------------------------------------------------------


def test_empty_index_and_empty_batch() -> None:
    index = KnownIndex()
    assert index.lookup(np.zeros((3, 8, BYTES), np.uint8)) == [None, None, None]
    assert index.lookup(np.zeros((0, 8, BYTES), np.uint8)) == []
    assert len(index) == 0 and index.memory_bytes() >= 0
    index.apply([])
    assert len(index) == 0


@pytest.mark.parametrize("bad", [np.zeros((2, BYTES), np.uint8), np.zeros((1, 8, 31), np.uint8)])
def test_lookup_rejects_bad_queries(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        KnownIndex().lookup(bad)


@pytest.mark.parametrize(
    "kw",
    [{"entry_id": 0}, {"hash": b"\0" * 31}, {"label": "maybe"}, {"moderators": -1}, {"image_id": "x" * 129}],
)
def test_entry_validation(kw: dict[str, object]) -> None:
    fields: dict[str, object] = {"entry_id": 1, "hash": bytes(BYTES), "label": "fake", "active": True} | kw
    with pytest.raises(ValueError):
        Entry(**fields)  # type: ignore[arg-type]


def test_match_carries_the_metadata() -> None:
    index = KnownIndex()
    index.apply([entry(5, A, "real", image_id="img-5", moderators=3, source="import")])
    (m,) = index.lookup(one(flip_bits(A, range(4))))
    assert m is not None
    assert (m.entry_id, m.label, m.distance, m.image_id, m.moderators, m.source) == (
        5,
        "real",
        4,
        "img-5",
        3,
        "import",
    )


def test_radius_is_inclusive() -> None:
    index = KnownIndex(max_distance=31)
    index.apply([entry(1, A)])
    assert found(index, one(flip_bits(A, range(31)))) == [(31, 1)]
    assert found(index, one(flip_bits(A, range(32)))) == [None]


def test_inactive_nearest_does_not_hide_an_active_one() -> None:
    index = KnownIndex()
    index.apply([entry(1, flip_bits(A, range(2)), active=False), entry(2, flip_bits(A, range(100, 120)))])
    assert found(index, one(A)) == [(20, 2)]
    assert len(index) == 1


def test_ties_go_to_the_lowest_entry_id() -> None:
    index = KnownIndex()
    index.apply([entry(9, A), entry(4, A), entry(6, A)])
    assert found(index, one(A)) == [(0, 4)]
    index.apply([entry(4, A, active=False)])
    assert found(index, one(A)) == [(0, 6)]


def test_label_change_deactivation_and_reactivation_take_effect_at_once() -> None:
    index = KnownIndex()
    index.apply([entry(1, A, "fake")])
    before = index.describe()
    index.apply([entry(1, A, "real", moderators=2)])
    (m,) = index.lookup(one(A))
    assert m is not None and (m.label, m.moderators) == ("real", 2)
    index.apply([entry(1, A, "real", active=False)])
    assert found(index, one(A)) == [None] and len(index) == 0
    index.apply([entry(1, A, "real", active=True)])
    assert found(index, one(A)) == [(0, 1)] and len(index) == 1
    assert index.describe() == before  # metadata only: no new position, no rebuild


def test_changed_hash_moves_the_entry() -> None:
    index = KnownIndex()
    index.apply([entry(1, A)])
    index.apply([entry(1, B)])
    assert found(index, one(A)) == [None]
    assert found(index, one(B)) == [(0, 1)]
    assert index.describe()["dead"] == 1 and len(index) == 1


def test_a_match_on_any_variant_counts() -> None:
    index = KnownIndex()
    index.apply([entry(1, A)])
    for v in range(8):
        q = np.random.default_rng(100 + v).integers(0, 256, (1, 8, BYTES), dtype=np.uint8)
        q[0, v] = flip_bits(A, range(v))
        assert found(index, q) == [(v, 1)]


def test_best_variant_wins_per_image_and_images_stay_apart() -> None:
    index = KnownIndex()
    index.apply([entry(1, A), entry(2, B)])
    q = np.random.default_rng(0).integers(0, 256, (3, 8, BYTES), dtype=np.uint8)
    q[0, 2], q[0, 6] = flip_bits(A, range(9)), flip_bits(B, range(3))
    q[2, 7] = flip_bits(A, range(30))
    assert found(index, q) == [(3, 2), None, (30, 1)]


@pytest.mark.parametrize("n", [10, 5_000])
def test_later_entries_and_rebuilds_keep_results(n: int) -> None:
    """Crossing brute_force_max builds the tables; moving many hashes compacts; results equal the oracle."""
    rng = np.random.default_rng(n)
    codes = rng.integers(0, 256, (n, BYTES), dtype=np.uint8)
    index = KnownIndex(brute_force_max=64, tail_max=16)
    entries = {i + 1: entry(i + 1, codes[i], active=bool(i % 3)) for i in range(n)}
    for start in range(0, n, max(1, n // 7)):
        index.apply(list(entries.values())[start : start + max(1, n // 7)])
    moved = {i: entry(i, rng.integers(0, 256, BYTES, dtype=np.uint8)) for i in range(1, n + 1, 2)}
    index.apply(moved.values())
    entries |= moved
    assert index.describe()["dead"] < n // 4 + 16
    picks = rng.integers(1, n + 1, 40)
    q = rng.integers(0, 256, (40, 8, BYTES), dtype=np.uint8)
    for row, eid in enumerate(picks):
        q[row, row % 8] = flip_bits(
            np.frombuffer(entries[eid].hash, np.uint8), rng.choice(256, 20, replace=False)
        )
    with exact_tables():
        assert found(index, q) == oracle(entries, q, 31)
    assert len(index) == sum(e.active for e in entries.values())


def test_batches_larger_than_one_search_block() -> None:
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 256, (5_000, BYTES), dtype=np.uint8)
    index = KnownIndex()
    index.apply(entry(i + 1, c) for i, c in enumerate(codes))
    n_images = 3 * known_index._QUERY_BLOCK // 8 + 5  # the hashes span four search blocks
    queries = rng.integers(0, 256, (n_images, 8, BYTES), dtype=np.uint8)
    picks = rng.integers(0, len(codes), n_images)
    for row, pick in enumerate(picks):
        queries[row, row % 8] = flip_bits(codes[pick], range(row % 25))
    assert index.describe()["main"] == len(codes)
    assert found(index, queries) == [(row % 25, int(pick) + 1) for row, pick in enumerate(picks)]


def test_last_occurrence_wins_within_a_batch() -> None:
    index = KnownIndex()
    index.apply([entry(1, A, "fake"), entry(2, B), entry(1, A, "real")])
    (m,) = index.lookup(one(A))
    assert m is not None and m.label == "real" and len(index) == 2


def test_default_tables_are_exact_below_twice_their_chunk_count() -> None:
    """With m chunks, a miss needs >= 2 flips in every chunk: d = 2m - 1 is always found."""
    rng = np.random.default_rng(11)
    for n in (5_000, 300_000, 2**20):
        m, b = mih.mih_params(n)
        codes = rng.integers(0, 256, (400, BYTES), dtype=np.uint8)
        table = mih.MultiIndexHash(codes, m, b)
        d = min(2 * m - 1, 31)
        queries = np.stack([_flip_word_bits(c, _worst_case_flips(rng, m, b, d)) for c in codes])
        rows, pos, dist = table.search(queries, 31)
        hits = {(int(r), int(p)) for r, p, dd in zip(rows, pos, dist, strict=True) if dd == d}
        assert hits >= {(i, i) for i in range(len(codes))}


def _worst_case_flips(rng: np.random.Generator, m: int, b: int, d: int) -> list[int]:
    """Two flips in every chunk but one (one flip there, anywhere in it), in the tables' bit numbering."""
    lone = int(rng.integers(0, m))
    flips = [lone * b + int(rng.integers(0, b))]
    for c in (c for c in range(m) if c != lone):
        flips += (c * b + rng.choice(b, 2, replace=False)).tolist()
    return flips[:d]


def test_chunks_partition_the_bits() -> None:
    words = np.random.default_rng(2).integers(0, 2**64, (50, 4), dtype=np.uint64)
    for b in (16, 17, 19):
        chunks = [mih._chunk(words, c * b, b) for c in range(256 // b)]
        assert all(0 <= int(x) < 2**b for chunk in chunks for x in chunk)
        for row in range(len(words)):
            rebuilt = sum(int(chunk[row]) << (c * b) for c, chunk in enumerate(chunks))
            full = sum(int(words[row, w]) << (64 * w) for w in range(4))
            assert rebuilt == full % 2 ** (b * (256 // b))


def _flip_word_bits(code: np.ndarray, bits: Sequence[int]) -> np.ndarray:
    words = code.copy().view(np.uint64)
    for i in bits:
        words[i // 64] ^= np.uint64(1) << np.uint64(i % 64)
    return words.view(np.uint8)


def test_memory_grows_with_entries() -> None:
    index = KnownIndex()
    small = index.memory_bytes()
    codes = np.random.default_rng(0).integers(0, 256, (10_000, BYTES), dtype=np.uint8)
    index.apply(entry(i + 1, c, image_id=f"img-{i}") for i, c in enumerate(codes))
    assert index.memory_bytes() > small + 10_000 * BYTES
    assert index.describe()["main"] == 10_000


# -- KnownIndex: property test against the oracle -------------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[list[Entry]], np.ndarray, int, int]:
    """Batches of upserts (new, relabelled, (de)activated, moved) and queries planted near the entries."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(1, 40))
    base = rng.integers(0, 256, (max(n, 1), BYTES), dtype=np.uint8)
    if n > 3:
        base[1] = base[0]  # two entries with the same hash: the tie rule decides
        base[3] = flip_bits(base[2], range(5))
    batches: list[list[Entry]] = []
    ids = rng.permutation(np.arange(1, 10 * max(n, 1) + 1))[:n].tolist()
    current = {eid: base[i] for i, eid in enumerate(ids)}
    for _ in range(draw(st.integers(1, 4))):
        batch = []
        for eid in rng.choice(ids, size=min(n, int(rng.integers(0, n + 1))), replace=False) if n else []:
            if rng.random() < 0.2:
                current[int(eid)] = rng.integers(0, 256, BYTES, dtype=np.uint8)
            label = "real" if rng.random() < 0.5 else "fake"
            batch.append(entry(int(eid), current[int(eid)], label, active=bool(rng.random() < 0.7)))
        batches.append(batch)
    batches[0] = [entry(eid, base[i]) for i, eid in enumerate(ids)] + batches[0]
    max_distance = draw(st.sampled_from([0, 8, 31]))
    n_images = draw(st.integers(1, 12))
    queries = rng.integers(0, 256, (n_images, 8, BYTES), dtype=np.uint8)
    for img in range(n_images):
        if n and rng.random() < 0.8:
            near = current[ids[int(rng.integers(0, n))]]
            k = int(rng.integers(0, max_distance + 3))  # mostly inside the radius, some just outside
            queries[img, int(rng.integers(0, 8))] = flip_bits(near, rng.choice(256, k, replace=False))
    brute_force_max = draw(st.sampled_from([0, 5, 4096]))
    return batches, queries, max_distance, brute_force_max


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_lookup_equals_brute_force(scenario: tuple[list[list[Entry]], np.ndarray, int, int]) -> None:
    batches, queries, max_distance, brute_force_max = scenario
    state: dict[int, Entry] = {}
    with exact_tables():
        index = KnownIndex(max_distance, brute_force_max=brute_force_max, tail_max=3)
        for batch in batches:
            index.apply(batch)
            state |= {e.entry_id: e for e in batch}
            expected = oracle(state, queries, max_distance)
            assert found(index, queries) == expected
    event(f"multi-index tables: {index.describe()['main'] > 0}")
    event(f"images matched: {'some' if any(expected) else 'none'}")
    assert len(index) == sum(e.active for e in state.values())


# -- KnownIndex: one writer, one reader ------------------------------------------------------------------


def test_concurrent_apply_and_lookup() -> None:
    """Stable entries are always found exactly; a toggling entry is either absent or itself; no crash."""
    rng = np.random.default_rng(5)
    stable = rng.integers(0, 256, (50, BYTES), dtype=np.uint8)
    toggling = rng.integers(0, 256, BYTES, dtype=np.uint8)
    index = KnownIndex(brute_force_max=100, tail_max=50)  # small limits: rebuilds happen during the run
    index.apply(entry(i + 1, c) for i, c in enumerate(stable))
    queries = np.zeros((51, 8, BYTES), np.uint8)
    queries[:50, 0], queries[50, 5] = stable, toggling
    errors: list[BaseException] = []
    writes_done = threading.Event()

    def writer() -> None:
        try:
            for round_ in range(300):
                noise = rng.integers(0, 256, (20, BYTES), dtype=np.uint8)
                index.apply(entry(1000 + 20 * round_ + i, c) for i, c in enumerate(noise))
                index.apply([entry(999, toggling, "real" if round_ % 2 else "fake", active=bool(round_ % 3))])
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
        finally:
            writes_done.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    lookups = 0
    while not writes_done.is_set() or lookups < 5:
        result = found(index, queries)
        assert result[:50] == [(0, i + 1) for i in range(50)]
        assert result[50] in (None, (0, 999))
        lookups += 1
    thread.join()
    assert not errors and lookups >= 5
    assert index.describe()["main"] > 0  # the tables were built while lookups ran
