"""scorer.pdq: the bit layout matches Meta's reference format, hex round trips, dihedral variants."""

from __future__ import annotations

import numpy as np
import pdqhash
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pdqhash.bindings import hash_to_vector

from scorer import pdq
from tests.known_helpers import smooth_image

BYTES = pdq.HASH_BYTES


@given(st.lists(st.integers(0, 0xFFFF), min_size=16, max_size=16))
def test_packing_matches_the_reference_format(words: list[int]) -> None:
    # The binding turns Hash256.w into its output with hash_to_vector; Hash256::format prints w[15]..w[0].
    packed = np.packbits(np.asarray(hash_to_vector(words), dtype=np.uint8))
    assert pdq.to_hex(packed) == "".join(f"{w:04x}" for w in reversed(words))


@given(st.binary(min_size=BYTES, max_size=BYTES))
def test_hex_round_trip(raw: bytes) -> None:
    code = np.frombuffer(raw, dtype=np.uint8)
    text = pdq.to_hex(code)
    assert len(text) == 64 and text == text.lower()
    assert np.array_equal(pdq.from_hex(text), code)
    assert np.array_equal(pdq.from_hex(text.upper()), code)


@pytest.mark.parametrize("bad", ["", "0" * 63, "0" * 65, "g" * 64, " " + "0" * 63, "0x" + "0" * 62, None, 12])
def test_from_hex_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        pdq.from_hex(bad)  # type: ignore[arg-type]


def test_to_hex_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError):
        pdq.to_hex(np.zeros(31, dtype=np.uint8))


@pytest.mark.parametrize("shape", [(32, 32), (45, 70), (256, 256)])
def test_dihedral_row0_is_compute(shape: tuple[int, int]) -> None:
    img = smooth_image(3, *shape)
    hashes, quality = pdq.dihedral(img)
    bits, q0 = pdqhash.compute(img)
    assert hashes.shape == (8, BYTES) and hashes.dtype == np.uint8
    assert np.array_equal(hashes[0], np.packbits(bits.astype(np.uint8)))
    assert quality == q0
    assert len({h.tobytes() for h in hashes}) > 1


@pytest.mark.parametrize(
    "bad", [np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8)]
)
def test_dihedral_rejects_non_rgb(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        pdq.dihedral(bad)


def test_tiny_and_flat_images_have_zero_quality() -> None:
    hashes, quality = pdq.dihedral(np.full((3, 4, 3), 200, np.uint8))
    assert quality == 0 and not hashes.any()
    assert pdq.dihedral(np.full((64, 64, 3), 200, np.uint8))[1] < pdq.MIN_QUALITY


def _reference_dihedral(img: np.ndarray) -> tuple[np.ndarray, int]:
    vectors, quality = pdqhash.compute_dihedral(img)
    return np.packbits(np.asarray(vectors, dtype=np.uint8), axis=1), int(quality)


@given(
    st.integers(5, 90),
    st.integers(5, 90),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["noise", "smooth", "blocks"]),
)
def test_dihedral_is_the_reference_bit_for_bit(h: int, w: int, seed: int, kind: str) -> None:
    # pdq.dihedral derives the 8 variants from the DCT in numpy instead of the binding's compute_dihedral;
    # lists and imported hashes hold the reference's bits, so every bit and the quality must agree
    # (blocks: few distinct coefficients, so ties at the median).
    rng = np.random.default_rng(seed)
    if kind == "noise":
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    elif kind == "smooth":
        img = smooth_image(seed % 1000, h, w)
    else:
        img = np.repeat(rng.integers(0, 256, (1, 1, 3), dtype=np.uint8), h * w, 0).reshape(h, w, 3)
        img[: h // 2, : w // 3] = rng.integers(0, 256, 3, dtype=np.uint8)
    hashes, quality = pdq.dihedral(img)
    expected, q = _reference_dihedral(img)
    assert quality == q
    assert np.array_equal(hashes, expected)


@pytest.mark.parametrize("shape", [(1, 1), (4, 4), (3, 200), (200, 4)])
def test_dihedral_of_images_the_reference_refuses_is_empty(shape: tuple[int, int]) -> None:
    img = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    hashes, quality = pdq.dihedral(img)
    expected, q = _reference_dihedral(img)
    assert quality == q == 0 and not hashes.any() and not expected.any()
