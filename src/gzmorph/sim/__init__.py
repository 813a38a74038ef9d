"""Simulated Galaxy Zoo surveys with known truth.

- :mod:`gzmorph.sim.population`: the hidden galaxy population of one sky patch;
- :mod:`gzmorph.sim.observe`: what one survey catalogues (footprint, completeness, astrometry, ids);
- :mod:`gzmorph.sim.volunteers`: how visible each feature is in that survey, the typical volunteer's
  answer probabilities (truth rho) and the vectorised walk of the decision tree that yields vote counts;
- :mod:`gzmorph.sim.render`: analytic light profiles, PSF, correlated sky noise, asinh-stretched PNGs.

Population and votes never need pixels, so vote statistics can be studied on many galaxies cheaply.
"""

from __future__ import annotations

import zlib

import numpy as np


def stream(*parts: int | str) -> np.random.SeedSequence:
    """A seed sequence named by ints and strings, e.g. ``stream(seed, "sdss", sky_id)``.

    Strings become CRC32 codes so a stream depends only on its name, never on call order,
    thread count or which other streams exist.
    """
    entropy = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    return np.random.SeedSequence(entropy)


def rng_for(*parts: int | str) -> np.random.Generator:
    return np.random.default_rng(stream(*parts))
