"""Small canonical catalogs with real PNG images on disk, for shard tests and the benchmark.

Votes are random but valid (answers sum to their question's total), images are a
smooth elliptical blob plus noise, so PNG decoding costs about what a galaxy
cutout costs.  ``add_bad_images`` appends rows whose images are broken in the
ways the sharder must survive.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from gzmorph.tree import GZ2, DecisionTree


def galaxy_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: a Sersic-like blob of random shape, colour and noise."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    angle = rng.uniform(0, np.pi)
    axis_ratio = rng.uniform(0.3, 1.0)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = (-xx * np.sin(angle) + yy * np.cos(angle)) / axis_ratio
    r = np.hypot(u, v) / (size * rng.uniform(0.04, 0.12))
    profile = 220 * np.exp(-(r ** rng.uniform(0.5, 1.0)))
    colour = rng.uniform(0.5, 1.0, 3)
    img = profile[..., None] * colour + rng.normal(12, 6, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def fake_votes(rng: np.random.Generator, tree: DecisionTree, n: int) -> dict[str, np.ndarray]:
    """Per vote column int64 counts; each question's answers sum to its total."""
    out: dict[str, np.ndarray] = {}
    for q in tree.questions:
        total = rng.integers(0, 45, n)
        probs = rng.dirichlet(np.ones(len(q.answers)), n)
        answers = np.stack([rng.multinomial(t, p) for t, p in zip(total, probs, strict=True)])
        out[q.total_column] = total.astype(np.int64)
        for j, col in enumerate(q.answer_columns):
            out[col] = answers[:, j].astype(np.int64)
    return out


def make_catalog(root: str | Path, n: int, *, image_size: int = 64, tree: DecisionTree = GZ2, seed: int = 0,
                 id_offset: int = 0, n_images: int | None = None, compress_level: int = 6) -> pd.DataFrame:
    """A valid catalog of ``n`` galaxies with PNGs under ``root/images``.

    ``n_images`` < n reuses that many image files cyclically (cheap large catalogs).
    """
    rng = np.random.default_rng(seed)
    image_dir = Path(root) / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    n_images = n if n_images is None else min(n, n_images)
    ids = [f"{587722981742080000 + id_offset + i}" for i in range(n)]
    locs = []
    for i in range(n_images):
        path = image_dir / f"{ids[i]}.png"
        if not path.exists():
            Image.fromarray(galaxy_image(rng, image_size)).save(path, compress_level=compress_level)
        locs.append(str(path))
    df = pd.DataFrame({
        "id_str": ids,
        "ra": rng.uniform(150, 152, n),
        "dec": rng.uniform(1, 3, n),
        "survey": "sdss",
        "tree": tree.name,
        "file_loc": [locs[i % n_images] for i in range(n)],
    })
    votes = fake_votes(rng, tree, n)
    return pd.concat([df, pd.DataFrame({c: votes[c] for c in tree.vote_columns})], axis=1)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims a huge image (the decompression-bomb pattern)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


BAD_KINDS = ("corrupt", "truncated", "missing", "empty", "text", "bomb", "mode16")


def add_bad_images(root: str | Path, df: pd.DataFrame, seed: int = 1) -> tuple[pd.DataFrame, dict[str, str]]:
    """Append one galaxy per broken-image kind; returns the catalog and {id_str: kind}."""
    rng = np.random.default_rng(seed)
    bad_dir = Path(root) / "bad"
    bad_dir.mkdir(parents=True, exist_ok=True)
    good = Image.fromarray(galaxy_image(rng, 64))
    kinds: dict[str, str] = {}
    rows = []
    for j, kind in enumerate(BAD_KINDS):
        path = bad_dir / f"{kind}.png"
        if kind in ("corrupt", "truncated"):
            good.save(path)
            data = bytearray(path.read_bytes())
            if kind == "corrupt":
                data[60:400] = rng.integers(0, 256, 340, dtype=np.uint8).tobytes()  # garbage inside IDAT
            else:
                data = data[: len(data) // 2]
            path.write_bytes(bytes(data))
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "text":
            path.write_text("this is not an image\n")
        elif kind == "bomb":
            path.write_bytes(bomb_png())
        elif kind == "mode16":
            Image.fromarray(rng.integers(0, 65535, (32, 32), dtype=np.uint16)).save(path)
        id_str = f"bad{j:02d}-{kind}"
        kinds[id_str] = kind
        rows.append(id_str)
    bad = df.iloc[: len(rows)].copy()
    bad["id_str"] = rows
    bad["file_loc"] = [str(bad_dir / ("does-not-exist.png" if k == "missing" else f"{k}.png"))
                       for k in kinds.values()]
    return pd.concat([df, bad], ignore_index=True), kinds


def loaded_modules() -> list[str]:
    """Names in ``sys.modules``: run in a worker process to see what it imported."""
    return sorted(sys.modules)
