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
