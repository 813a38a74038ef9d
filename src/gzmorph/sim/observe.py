"""What one survey catalogues of the sky: footprint, completeness, measured coordinates, ids.

A survey sees the galaxies inside its RA footprint, each catalogued with probability
``completeness``; its coordinates scatter about the truth by ``astrometric_sigma`` arcsec
(Gaussian per axis, on the sky).  Ids follow the survey's style: an SDSS-like integer objid
(``1237...``, 19 digits) or an IAU name ``JHHMMSS.ss+DDMMSS.s`` built from the measured
coordinates, as GZ DECaLS does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from gzmorph.sim import rng_for

OBJID_BASE = 1237645_000_000_000_000  # SDSS DR7 objids start 1237...
OBJID_STRIDE = 1_000_003              # > the random part, so ids are unique by construction


def in_footprint(ra: np.ndarray, survey: dict[str, Any]) -> np.ndarray:
    return (ra >= survey["ra_min"]) & (ra < survey["ra_max"])


def measured_coordinates(ra: np.ndarray, dec: np.ndarray, sigma_arcsec: float,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Astrometric scatter on the sky: an RA offset of x arcsec is x / cos(dec) in RA degrees."""
    dra = rng.normal(0, sigma_arcsec, len(ra)) / 3600 / np.cos(np.radians(dec))
    ddec = rng.normal(0, sigma_arcsec, len(ra)) / 3600
    return np.mod(ra + dra, 360.0), np.clip(dec + ddec, -90.0, 90.0)


def objids(sky_id: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SDSS-like 19-digit integer objids (as strings), unique because sky ids are."""
    ids = OBJID_BASE + sky_id.astype(np.int64) * OBJID_STRIDE + rng.integers(0, OBJID_STRIDE - 3, len(sky_id))
    return ids.astype(str)


def iau_name(ra: float, dec: float) -> str:
    """``JHHMMSS.ss+DDMMSS.s``, truncated (not rounded) as the IAU convention asks."""
    ra_s = int(np.floor(ra / 15 * 3600 * 100 + 1e-6))  # hundredths of a second of time
    hh, rem = divmod(ra_s, 3600 * 100)
    mm, rem = divmod(rem, 60 * 100)
    sign = "+" if dec >= 0 else "-"
    dec_s = int(np.floor(abs(dec) * 3600 * 10 + 1e-6))  # tenths of an arcsec
    dd, drem = divmod(dec_s, 3600 * 10)
    dm, drem = divmod(drem, 60 * 10)
    ra_part = f"{hh:02d}{mm:02d}{rem // 100:02d}.{rem % 100:02d}"
    return f"J{ra_part}{sign}{dd:02d}{dm:02d}{drem // 10:02d}.{drem % 10:d}"


def iau_names(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    return np.array([iau_name(r, d) for r, d in zip(ra, dec, strict=True)], dtype=object)


def observe(sky: pd.DataFrame, survey_name: str, survey: dict[str, Any], seed: int) -> pd.DataFrame:
    """The rows of ``sky`` this survey catalogues, with measured ``ra``/``dec`` and ``id_str``.

    Truth positions stay in ``ra``/``dec`` of the sky table; the result adds ``obs_ra``/``obs_dec``.
    Galaxies whose IAU names collide (two objects within 0.1 arcsec) are blended: only the first is kept.
    """
    rng = rng_for(seed, survey_name, "observe")
    seen = in_footprint(sky["ra"].to_numpy(), survey) & (rng.uniform(size=len(sky)) < survey["completeness"])
    cat = sky.loc[seen].reset_index(drop=True)
    obs_ra, obs_dec = measured_coordinates(cat["ra"].to_numpy(), cat["dec"].to_numpy(),
                                           float(survey["astrometric_sigma"]), rng)
    cat["obs_ra"], cat["obs_dec"] = obs_ra, obs_dec
    if survey["id_style"] == "objid":
        cat["id_str"] = objids(cat["sky_id"].to_numpy(), rng)
    else:
        cat["id_str"] = iau_names(obs_ra, obs_dec)
    return cat.loc[~cat["id_str"].duplicated()].reset_index(drop=True)
