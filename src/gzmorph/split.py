"""Deterministic train/val/test assignment that depends only on galaxy id and seed.

Each id is hashed (BLAKE2b of ``f"{seed}:{id_str}"``) to a number uniform in
[0, 1), which is compared with the cumulative split fractions.  Because no
galaxy's split depends on any other galaxy, growing, shrinking or reordering a
catalog never moves a galaxy across splits -- so a test galaxy can never leak
into training when a survey adds more data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np

SPLITS: tuple[str, ...] = ("train", "val", "test")

_DIGEST_BYTES = 8  # 64 bits; the top 53 fill a float64 mantissa exactly


def split_uniform(ids: Iterable[object], seed: int) -> np.ndarray:
    """Per id a float64 in [0, 1) that depends only on ``(seed, id)``."""
    prefix = f"{int(seed)}:".encode()
    # One C-level hash per id; joining the digests lets numpy decode them all at once,
    # which keeps 10^6 ids to about a second.
    digests = b"".join(
        hashlib.blake2b(prefix + str(i).encode(), digest_size=_DIGEST_BYTES).digest() for i in ids
    )
    words = np.frombuffer(digests, dtype=">u8").astype(np.uint64)
    return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53


def order_key(ids: Iterable[object], seed: int) -> np.ndarray:
    """Per id a uint64 that orders galaxies at random (a hash of seed and id, independent of the split's).

    ``gzmorph shards`` writes each split in this order, so every shard is a random sample of its split.
    """
    prefix = f"order:{int(seed)}:".encode()
    digests = b"".join(
        hashlib.blake2b(prefix + str(i).encode(), digest_size=_DIGEST_BYTES).digest() for i in ids
    )
    return np.frombuffer(digests, dtype=">u8").astype(np.uint64)


def thresholds(fractions: Mapping[str, float]) -> np.ndarray:
    """Upper edges of each split's interval in [0, 1], in :data:`SPLITS` order."""
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; expected {list(SPLITS)}")
    values = np.array([float(fractions.get(s, 0.0)) for s in SPLITS])
    if (values < 0).any() or not np.isfinite(values).all():
        raise ValueError(f"split fractions must be non-negative, got {dict(fractions)}")
    total = values.sum()
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {total:g}")
    edges = np.cumsum(values / total)
    edges[-1] = 1.0  # rounding must not leave a sliver of [0, 1) unassigned
    return edges


def assign_codes(ids: Iterable[object], seed: int, fractions: Mapping[str, float]) -> np.ndarray:
    """Index into :data:`SPLITS` (int8) for each id."""
    u = split_uniform(ids, seed)
    # side="right": u equal to an edge belongs to the next split, so a zero fraction gets nobody.
    return np.searchsorted(thresholds(fractions), u, side="right").astype(np.int8)


def assign(ids: Iterable[object], seed: int, fractions: Mapping[str, float]) -> np.ndarray:
    """Split name ("train", "val" or "test") for each id, as a numpy str array."""
    return np.asarray(SPLITS)[assign_codes(ids, seed, fractions)]
