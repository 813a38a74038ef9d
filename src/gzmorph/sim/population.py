"""The hidden galaxy population of one sky patch.

Model (per galaxy, all vectorised):

- redshift from the comoving volume element (astropy cosmology), absolute magnitude from a
  Schechter luminosity function; apparent r = M + distance modulus (which carries the (1+z)^4
  surface-brightness dimming);
- type: smooth (elliptical, one Sérsic n~2.5-6 component) or disk (exponential disk + Sérsic
  bulge with bulge-to-total B/T); ellipticals more common among luminous galaxies;
- size: physical effective radius from a size-luminosity relation, angular size from the
  angular-diameter distance; petroR90 from the profile concentration;
- orientation: disks randomly inclined (cos i uniform, intrinsic thickness q0), ellipticals
  with an intrinsic axis-ratio distribution; uniform position angle;
- disk features: spiral arms (count, pitch, amplitude), bar (strength 0-1, length), inner ring,
  dust lane (seen when edge-on);
- disturbance 0-1, with a companion galaxy for mergers; rare artifacts (bright star, satellite trail);
- colour: old light red, young light blue, so ellipticals are red and disks blue, with some
  red disks and blue ellipticals so colour alone is a trap for a model;
- GZ2-like selection r < 17 and petroR90 > 3 arcsec, applied by rejection sampling in batches;
- positions uniform on the sky patch (uniform in ra and sin dec).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from gzmorph.sim import rng_for

MAG_LIMIT = 17.0           # GZ2 main sample: r < 17 (Petrosian)
R90_MIN_ARCSEC = 3.0       # GZ2 main sample: petroR90_r > 3 arcsec
Z_MIN, Z_MAX = 0.005, 0.30
M_STAR, ALPHA = -21.2, -1.1  # Schechter r-band luminosity function (Blanton et al. 2003-like)
M_BRIGHT, M_FAINT = -24.0, -17.5
DISK_THICKNESS = 0.12      # intrinsic axis ratio of an edge-on disk
ARTIFACT_FRACTION = 0.006  # GZ2: artifacts are rare
MERGER_FRACTION = 0.06
MINOR_DISTURBANCE_FRACTION = 0.12
BARRED_FRACTION = 0.45     # of disks (optical bar fractions are 30-50 %, near-infrared ~60 %)
ARMED_FRACTION = 0.8       # of disks (the rest are lenticular-like, arm-less)
RING_FRACTION = 0.08       # of disks
ARM_COUNT_P = {1: 0.05, 2: 0.55, 3: 0.18, 4: 0.12, 5: 0.06, 6: 0.04}
KPC_PER_RAD_TO_ARCSEC = 206264.806


@lru_cache(maxsize=1)
def _cosmology_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distance modulus, angular scale and volume CDF on a redshift grid (interpolated, vectorised)."""
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(H0=70.0, Om0=0.3)
    z = np.linspace(Z_MIN, Z_MAX, 600)
    distmod = cosmo.distmod(z).value
    kpc_per_arcsec = cosmo.angular_diameter_distance(z).to_value("kpc") / KPC_PER_RAD_TO_ARCSEC
    dv = cosmo.differential_comoving_volume(z).value
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dv[1:] + dv[:-1]) * np.diff(z))])
    return z, distmod, kpc_per_arcsec, cdf / cdf[-1]


def distance_modulus(z: np.ndarray) -> np.ndarray:
    zg, dm, _, _ = _cosmology_grid()
    return np.interp(z, zg, dm)


def kpc_per_arcsec(z: np.ndarray) -> np.ndarray:
    zg, _, scale, _ = _cosmology_grid()
    return np.interp(z, zg, scale)


def sample_redshift(n: int, rng: np.random.Generator) -> np.ndarray:
    """Galaxies uniform in comoving volume (inverse CDF of dV/dz)."""
    zg, _, _, cdf = _cosmology_grid()
    return np.interp(rng.uniform(size=n), cdf, zg)


def sample_abs_mag(n: int, rng: np.random.Generator) -> np.ndarray:
    """Schechter luminosity function in magnitudes, by inverse CDF on a grid."""
    m = np.linspace(M_BRIGHT, M_FAINT, 800)
    x = 10 ** (-0.4 * (m - M_STAR))
    phi = x ** (ALPHA + 1) * np.exp(-x)
    cdf = np.cumsum(phi)
    cdf = (cdf - cdf[0]) / (cdf[-1] - cdf[0])
    return np.interp(rng.uniform(size=n), cdf, m)


def sersic_b(n: np.ndarray) -> np.ndarray:
    """b_n with I(r) = I_e exp(-b_n((r/r_e)^(1/n) - 1)) (Ciotti & Bertin 1999 expansion)."""
    return 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n**2)


def r90_over_re(n: np.ndarray) -> np.ndarray:
    """Petrosian R90 / effective radius: 2.3 for an exponential, ~3 for de Vaucouleurs (truncated)."""
    return 2.32 + 0.25 * (np.clip(n, 1, 6) - 1)


def projected_axis_ratio(cos_i: np.ndarray, q0: float | np.ndarray) -> np.ndarray:
    """Axis ratio of an oblate spheroid of intrinsic thickness q0 seen at inclination i."""
    return np.sqrt(cos_i**2 + (q0**2) * (1 - cos_i**2))


def _draw_candidates(m: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Galaxies of a volume before selection: luminosity, distance, type, size."""
    z = sample_redshift(m, rng)
    abs_mag = sample_abs_mag(m, rng)
    mag_r = abs_mag + distance_modulus(z)
    # luminous galaxies are more often ellipticals
    p_smooth = 0.22 + 0.45 / (1 + np.exp((abs_mag + 21.0) / 0.6))
    smooth = rng.uniform(size=m) < p_smooth
    lum = -0.4 * (abs_mag + 21.0)  # log10 L / L(M=-21)
    log_re_kpc = np.where(smooth, 0.50 + 0.65 * lum, 0.62 + 0.30 * lum) + rng.normal(0, 0.17, m)
    re_kpc = 10**log_re_kpc
    bt = np.where(smooth, 1.0, np.clip(rng.beta(1.6, 3.5, m), 0.0, 0.85))
    n_bulge = np.where(smooth, rng.uniform(2.5, 6.0, m), rng.uniform(1.0, 4.0, m))
    scale = kpc_per_arcsec(z)
    # ellipticals: re is the galaxy's; disks: re is the disk's, the bulge is smaller
    re_arcsec = re_kpc / scale
    bulge_re = np.where(smooth, re_arcsec, re_arcsec * rng.uniform(0.15, 0.35, m))
    petro_r90 = np.where(smooth, r90_over_re(n_bulge) * re_arcsec,
                         (1 - bt) * 2.32 * re_arcsec + bt * r90_over_re(n_bulge) * bulge_re)
    return dict(redshift=z, abs_mag_r=abs_mag, mag_r=mag_r, smooth=smooth, r_eff_arcsec=re_arcsec,
                bulge_r_eff_arcsec=bulge_re, bulge_to_total=bt, sersic_n=n_bulge, petro_r90_arcsec=petro_r90)


def gz2_selection(mag_r: np.ndarray, petro_r90: np.ndarray) -> np.ndarray:
    return (mag_r < MAG_LIMIT) & (petro_r90 > R90_MIN_ARCSEC)


def sample_selected(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Rejection sampling in vectorised batches until n galaxies pass the GZ2 selection."""
    parts: list[dict[str, np.ndarray]] = []
    have = 0
    while have < n:
        cand = _draw_candidates(max(40 * (n - have), 2000), rng)
        keep = gz2_selection(cand["mag_r"], cand["petro_r90_arcsec"])
        parts.append({k: v[keep] for k, v in cand.items()})
        have += int(keep.sum())
    return {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}


def _sky_positions(n: int, sky: dict[str, float], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uniform on the sphere within the patch: uniform in ra and in sin(dec)."""
    ra = rng.uniform(sky["ra_min"], sky["ra_max"], n)
    s = rng.uniform(np.sin(np.radians(sky["dec_min"])), np.sin(np.radians(sky["dec_max"])), n)
    return ra, np.degrees(np.arcsin(s))


def sample_population(n: int, sky: dict[str, float], seed: int) -> pd.DataFrame:
    """The truth table of one sky patch: one row per galaxy, ``sky_id`` 0..n-1."""
    rng = rng_for(seed, "sky")
    g = sample_selected(n, rng)
    smooth = g["smooth"]
    disk = ~smooth
    ra, dec = _sky_positions(n, sky, rng)

    # orientation
    cos_i = np.where(disk, rng.uniform(0, 1, n), 1.0)
    inclination = np.degrees(np.arccos(cos_i))
    q_elliptical = np.clip(rng.beta(6.0, 2.2, n), 0.25, 1.0)
    axis_ratio = np.where(disk, projected_axis_ratio(cos_i, DISK_THICKNESS), q_elliptical)
    position_angle = rng.uniform(0, 180, n)

    # spiral arms: more open in bulge-poor disks (Hubble sequence)
    armed = disk & (rng.uniform(size=n) < ARMED_FRACTION)
    counts, probs = zip(*ARM_COUNT_P.items(), strict=True)
    n_arms = np.where(armed, rng.choice(np.array(counts), size=n, p=np.array(probs)), 0)
    pitch = np.where(armed, np.clip(30 - 28 * g["bulge_to_total"] + rng.normal(0, 6, n), 6, 40), 0.0)
    arm_amplitude = np.where(armed, rng.beta(4.0, 2.0, n), 0.0)

    # bars
    barred = disk & (rng.uniform(size=n) < BARRED_FRACTION)
    bar_strength = np.where(barred, 0.15 + 0.85 * rng.beta(1.6, 1.0, n), 0.0)  # strong bars are common
    bar_length = np.where(barred, g["r_eff_arcsec"] * (0.5 + 0.8 * bar_strength) * rng.uniform(0.8, 1.2, n),
                          0.0)
    bar_angle = rng.uniform(0, 180, n)  # in the disk plane, relative to the major axis

    ring = disk & (rng.uniform(size=n) < RING_FRACTION)
    ring_strength = np.where(ring, rng.uniform(0.3, 1.0, n), 0.0)
    dust = np.where(disk, rng.uniform(0.2, 0.8, n) * (1 - g["bulge_to_total"]), 0.0)

    # disturbance and mergers
    u = rng.uniform(size=n)
    merger = u < MERGER_FRACTION
    minor = (u >= MERGER_FRACTION) & (u < MERGER_FRACTION + MINOR_DISTURBANCE_FRACTION)
    disturbance = np.where(merger, rng.uniform(0.5, 1.0, n), np.where(minor, rng.uniform(0.1, 0.45, n), 0.0))
    companion_flux_ratio = np.where(merger, rng.uniform(0.2, 1.0, n), 0.0)
    companion_sep = np.where(merger, g["petro_r90_arcsec"] * rng.uniform(0.5, 1.3, n), 0.0)
    companion_angle = rng.uniform(0, 360, n)

    # colours (g-r, r-z) of old and young light; a minority break the colour-type correlation
    red_disk = disk & (rng.uniform(size=n) < 0.10)
    blue_elliptical = smooth & (rng.uniform(size=n) < 0.08)
    old_gr = 0.75 + rng.normal(0, 0.04, n)
    old_rz = 0.45 + rng.normal(0, 0.04, n)
    young_gr = np.where(red_disk, 0.68, 0.32) + rng.normal(0, 0.07, n)
    young_rz = np.where(red_disk, 0.40, 0.20) + rng.normal(0, 0.05, n)
    # share of light that is young: the disk (and for blue ellipticals, a young population)
    young_fraction = np.where(disk, 1 - g["bulge_to_total"] - 0.12 * bar_strength * (1 - g["bulge_to_total"]),
                              np.where(blue_elliptical, 0.5, 0.0))
    f_g = (1 - young_fraction) * 10 ** (-0.4 * old_gr) + young_fraction * 10 ** (-0.4 * young_gr)
    color_gr = -2.5 * np.log10(f_g)

    # artifacts
    art = rng.uniform(size=n) < ARTIFACT_FRACTION
    artifact = np.where(art, np.where(rng.uniform(size=n) < 0.6, "star", "trail"), "none")

    return pd.DataFrame({
        "sky_id": np.arange(n, dtype=np.int64),
        "ra": ra, "dec": dec,
        "morphology": np.where(smooth, "smooth", "disk"),
        "redshift": g["redshift"], "abs_mag_r": g["abs_mag_r"], "mag_r": g["mag_r"],
        "r_eff_arcsec": g["r_eff_arcsec"], "petro_r90_arcsec": g["petro_r90_arcsec"],
        "bulge_to_total": g["bulge_to_total"], "sersic_n": g["sersic_n"],
        "bulge_r_eff_arcsec": g["bulge_r_eff_arcsec"],
        "inclination_deg": inclination, "axis_ratio": axis_ratio, "position_angle_deg": position_angle,
        "n_arms": n_arms.astype(np.int64), "arm_pitch_deg": pitch, "arm_amplitude": arm_amplitude,
        "bar_strength": bar_strength, "bar_length_arcsec": bar_length, "bar_angle_deg": bar_angle,
        "barred": bar_strength >= 0.3,
        "ring_strength": ring_strength, "dust_lane": dust,
        "disturbance": disturbance, "has_companion": merger,
        "companion_flux_ratio": companion_flux_ratio, "companion_sep_arcsec": companion_sep,
        "companion_angle_deg": companion_angle,
        "old_g_r": old_gr, "old_r_z": old_rz, "young_g_r": young_gr, "young_r_z": young_rz,
        "young_fraction": young_fraction, "color_g_r": color_gr,
        "artifact": artifact,
    })


def sky_table(params: dict[str, Any]) -> pd.DataFrame:
    sim = params["simulate"]
    return sample_population(int(sim["n_galaxies"]), sim["sky"], int(params["seed"]))
