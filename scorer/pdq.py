"""PDQ perceptual hashes of decoded pixels: the 8 dihedral variants in one pass, and their hex form.

Contract:

- ``dihedral(rgb)`` takes RGB uint8 ``HxWx3`` and returns ``(hashes, quality)``: ``hashes`` is uint8
  ``[8, 32]``, one packed 256-bit hash per row in the order of ``VARIANTS``; row 0 is the hash of the image as
  given (what ``pdqhash.compute`` returns). ``quality`` (0-100) is that of the image; below 50 the image is
  featureless and its hash says little (HMA drops such hashes). Images under 5 px on a side hash to all zeros
  with quality 0 (the reference C++ refuses them); nothing here raises for them.
- Bit layout: byte ``k`` of a row holds hash bits ``255 - 8k`` (most significant) down to ``248 - 8k``, where
  hash bit ``i`` is bit ``i & 15`` of the reference ``Hash256`` word ``w[i >> 4]``. Read as one big-endian
  256-bit number, a row is therefore the reference hash itself, and ``to_hex(row)`` is the 64-digit string
  that Meta's tools print (ThreatExchange, HMA, ``pdq-photo-hasher``: ``Hash256::format`` writes ``w[15]``
  down to ``w[0]``, four hex digits each).
- Stateless and thread-safe: the binding allocates its buffers per call.

The variants are computed from the same DCT, so they are close to, but not exactly, the hashes of the
rotated/flipped pixels: match by looking up every variant rather than storing a canonical one.
"""

from __future__ import annotations

import re

import numpy as np
import pdqhash

HASH_BITS = 256
HASH_BYTES = HASH_BITS // 8
# pdqhash.compute_dihedral's output order (the reference pdqDihedralHash256esFromFloatLuma's arguments).
# Row v is the hash of the pixels transformed by, in numpy terms: rot90 k=1, 2, 3 (counter-clockwise),
# flipud, fliplr, transpose, and the anti-transpose (measured: distance 0 on smooth test images).
VARIANTS: tuple[str, ...] = (
    "original",
    "rotate90",
    "rotate180",
    "rotate270",
    "flip_x",
    "flip_y",
    "flip_plus1",
    "flip_minus1",
)
# Meta's threshold for "the same picture" and for "too featureless to hash".
MATCH_DISTANCE = 31
MIN_QUALITY = 50
# The reference refuses images smaller than this on a side (no hash, quality 0).
_MIN_SIDE = 5

_HEX = re.compile(r"[0-9a-f]{64}")


def _variant_tables() -> tuple[np.ndarray, np.ndarray]:
    """Index and sign tables that turn the 256 DCT coefficients of an image into those of its 8 variants.

    Flipping an image negates its DCT coefficients of odd frequency along the flipped axis, and
    transposing it transposes them: every variant is the original buffer ``D[i, j]`` times
    ``sign * (-1)**(i*a + j*b)``, transposed or not. The reference's seven ``dct16OriginalTo*`` functions
    are these, up to an overall sign that the reference also applies (it changes which bits exceed the
    median). ``tests/unit/test_pdq.py`` checks every variant bit for bit against ``compute_dihedral``."""
    # (transposed, a, b, sign) per row of VARIANTS
    forms = [(0, 0, 0, 1), (1, 0, 1, -1), (0, 1, 1, 1), (1, 1, 0, -1)]
    forms += [(0, 1, 0, -1), (0, 0, 1, -1), (1, 0, 0, 1), (1, 1, 1, 1)]
    i, j = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    index = np.empty((len(forms), 256), dtype=np.intp)
    signs = np.empty((len(forms), 256), dtype=np.float32)
    for v, (transposed, a, b, sign) in enumerate(forms):
        sign_ij = sign * (-1.0) ** (i * a + j * b)
        # out[r, c] = (D * sign_ij)[c, r] when transposed
        src = (j, i) if transposed else (i, j)
        index[v] = (src[0] * 16 + src[1]).ravel()
        signs[v] = (sign_ij.T if transposed else sign_ij).ravel()
    return index, signs


_VARIANT_INDEX, _VARIANT_SIGNS = _variant_tables()


def dihedral(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """The 8 dihedral PDQ hashes of RGB uint8 ``HxWx3``, packed as uint8 ``[8, 32]``, and the quality.

    The binding's own ``compute_dihedral`` builds each hash bit by bit in Python (256 Python integers per
    variant, 2,048 per image, under the GIL: most of its time). Here the binding computes only the DCT
    (``compute_float``, the reference C++), and numpy derives the 8 variants and thresholds each at its
    median, as the reference's ``pdqBuffer16x16ToBits`` does: the same bits for a fraction of the CPU."""
    return _from_dct(rgb, slice(None))


def single(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """Only the hash of the image as given (row 0 of ``dihedral``), as uint8 ``[1, 32]``, and the quality,
    for deployments that accept missing flipped and rotated re-uploads. The DCT is the same, so this saves
    only the other seven rows' numpy step, a small part of the hashing."""
    return _from_dct(rgb, slice(0, 1))


def _from_dct(rgb: np.ndarray, rows: slice) -> tuple[np.ndarray, int]:
    """The ``rows`` of ``VARIANTS``, hashed from the image's one DCT."""
    _check_rgb(rgb)
    index, signs = _VARIANT_INDEX[rows], _VARIANT_SIGNS[rows]
    if min(rgb.shape[:2]) < _MIN_SIDE:
        return np.zeros((len(index), HASH_BYTES), dtype=np.uint8), 0
    floats, quality = pdqhash.compute_float(rgb)
    # compute_float returns buffer16x16 flattened and reversed; undo the reversal: dct[16 * i + j].
    dct = np.asarray(floats, dtype=np.float32)[::-1]
    variants = dct[index] * signs
    # The reference's median (Torben's) of 256 values is the 128th smallest; a bit is set above it.
    median = np.partition(variants, 127, axis=1)[:, 127:128]
    # Hash bit k is coefficient k; packbits wants bit 255 first.
    return np.packbits(variants[:, ::-1] > median, axis=1), int(quality)


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        # The binding takes any 3-D byte array (RGBA included) and would hash the wrong luma silently.
        raise ValueError(f"expected RGB uint8 HxWx3, got {rgb.dtype} {rgb.shape}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"empty image {rgb.shape}")


def to_hex(packed: np.ndarray) -> str:
    """64 lowercase hex digits of one packed hash (uint8 ``[32]``), in Meta's format."""
    row = np.asarray(packed)
    if row.dtype != np.uint8 or row.shape != (HASH_BYTES,):
        raise ValueError(f"expected uint8 [{HASH_BYTES}], got {row.dtype} {row.shape}")
    return row.tobytes().hex()


def from_hex(s: str) -> np.ndarray:
    """The packed uint8 ``[32]`` form of a 64-digit hex PDQ hash (either case); anything else raises."""
    if not isinstance(s, str) or not _HEX.fullmatch(s.lower()):
        raise ValueError(f"not a 64-digit hex PDQ hash: {s!r:.80}")
    return np.frombuffer(bytes.fromhex(s), dtype=np.uint8).copy()


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    """Number of differing bits between two packed hashes of the same shape."""
    x = np.asarray(a, dtype=np.uint8)
    y = np.asarray(b, dtype=np.uint8)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    return int(np.bitwise_count(np.bitwise_xor(x, y)).sum())
