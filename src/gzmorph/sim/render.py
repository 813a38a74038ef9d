"""Render one galaxy as a Galaxy-Zoo-style 424x424 RGB PNG of one survey.

Model: analytic surface-brightness profiles (nanomaggies / arcsec^2, r band) on the image grid,
whose scale is tied to the galaxy's size as in Galaxy Zoo (arcsec/px = 0.02 x petroR90):

- old (red) light: Sérsic elliptical or bulge, bar, companion, field stars;
- young (blue) light: exponential disk modulated by logarithmic spiral arms, inner ring,
  tidal tails;
- disturbance makes the light lopsided; an edge-on disk shows a dust lane;
- neighbouring stars and small galaxies come from the sky patch (same in every survey);
- artifacts: a saturated star with diffraction spikes, or a satellite trail in one band.

Convolution is linear, so the old and young images are PSF-convolved once each (FFT, Gaussian
PSF of FWHM seeing / image scale px) and mixed into the g, r, z bands by their colours.  Sky noise
is white at the survey's NATIVE pixel scale with sigma from its depth, then resampled to the image
grid so it is correlated as in real resampled cutouts.  A Lupton-like asinh stretch maps the bands
to 8-bit RGB.  Everything random comes from per-galaxy seed sequences, so an image depends only on
(seed, survey, galaxy), never on thread count or order.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image
from scipy import fft, special

from gzmorph.sim import rng_for
from gzmorph.sim.population import sersic_b

IMAGE_SCALE_PER_R90 = 0.02   # Galaxy Zoo: arcsec/px ~ 0.02 x petroR90
BAND_DEPTH_OFFSET = (0.3, 0.0, -0.9)  # g, r, z 5-sigma depths relative to r
STRETCH_WEIGHTS = (1.5, 1.0, 0.7)     # g, r, z scalings before the stretch (colour balance)
STRETCH_SOFT = 0.35          # nanomaggies/arcsec^2 where asinh turns from linear to logarithmic
STRETCH_MAX = 80.0           # surface brightness that maps to full scale (~17.7 mag/arcsec^2)
STAR_DENSITY = 0.3           # field stars per arcmin^2 (high galactic latitude, r < 22)
GALAXY_DENSITY = 1.2         # faint field galaxies per arcmin^2 (r < 23)
PNG_COMPRESS_LEVEL = 1
PNG_ZLIB_STRATEGY = 2         # Z_HUFFMAN_ONLY: noisy images do not LZ-compress; 25% faster, smaller


def nanomaggies(mag: float | np.ndarray) -> float | np.ndarray:
    return 10 ** (-0.4 * (np.asarray(mag) - 22.5))


def image_scale(petro_r90_arcsec: float) -> float:
    return IMAGE_SCALE_PER_R90 * petro_r90_arcsec


def sky_noise_sigma(depth_mag: float, seeing_fwhm: float, pixel_scale: float) -> float:
    """Per-native-pixel surface-brightness noise (nmgy/arcsec^2) of a survey with this 5-sigma depth.

    The depth is a point-source flux measured over the PSF's effective area 4 pi sigma_psf^2.
    """
    sigma_total = nanomaggies(depth_mag) / 5
    n_eff = 4 * np.pi * (seeing_fwhm / 2.3548 / pixel_scale) ** 2
    return float(sigma_total / np.sqrt(max(n_eff, 1.0)) / pixel_scale**2)


def sersic_profile(r: np.ndarray, r_eff: float, n: float, flux: float, q: float) -> np.ndarray:
    """Sérsic surface brightness with total flux ``flux`` (elliptical radius r, axis ratio q)."""
    b = float(sersic_b(np.asarray(n)))
    norm = 2 * np.pi * n * r_eff**2 * q * np.exp(b) * b ** (-2 * n) * special.gamma(2 * n)
    return (flux / norm) * np.exp(-b * ((r / r_eff) ** (1 / n) - 1))


def spiral_pattern(r: np.ndarray, theta: np.ndarray, m: int, pitch_deg: float, r0: float,
                   phase: float, sharpness: int = 3) -> np.ndarray:
    """Logarithmic spiral arms, mean 1 over angle: ((1 + cos(m (theta - ln(r/r0)/tan p))) / 2)^k."""
    psi = m * (theta - np.log(r / r0 + 1e-3) / np.tan(np.radians(pitch_deg))) + phase
    mean = special.binom(2 * sharpness, sharpness) / 4**sharpness  # average of ((1+cos)/2)^k
    return ((1 + np.cos(psi)) * 0.5) ** sharpness / mean


def _normalised(profile: np.ndarray, flux: float, pixel_area: float) -> np.ndarray:
    total = float(profile.sum()) * pixel_area
    return profile * (flux / total) if total > 0 else profile


def _add_point(img: np.ndarray, x: float, y: float, flux_sb: float) -> None:
    """Add a point source (bilinear split over 4 pixels, so sub-pixel positions survive the PSF)."""
    i0, j0 = int(np.floor(y)), int(np.floor(x))
    fy, fx = y - i0, x - j0
    weights = ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx))
    for di, dj, w in weights:
        i, j = i0 + di, j0 + dj
        if 0 <= i < img.shape[0] and 0 <= j < img.shape[1]:
            img[i, j] += flux_sb * w


def _add_small_galaxy(img: np.ndarray, x: float, y: float, flux_sb: float, r_px: float, q: float,
                      pa: float) -> None:
    """A small exponential galaxy drawn in a stamp (cheap: only pixels within 6 scale lengths)."""
    h = max(r_px / 1.678, 0.3)
    rad = int(np.ceil(6 * h)) + 1
    i0, i1 = max(int(y) - rad, 0), min(int(y) + rad + 1, img.shape[0])
    j0, j1 = max(int(x) - rad, 0), min(int(x) + rad + 1, img.shape[1])
    if i0 >= i1 or j0 >= j1:
        return
    yy, xx = np.mgrid[i0:i1, j0:j1]
    c, s = np.cos(pa), np.sin(pa)
    u = (xx - x) * c + (yy - y) * s
    w = (-(xx - x) * s + (yy - y) * c) / q
    prof = np.exp(-np.hypot(u, w) / h)
    img[i0:i1, j0:j1] += prof * (flux_sb / (2 * np.pi * h * h * q))


def gaussian_psf_convolve(images: list[np.ndarray], sigma_px: float) -> list[np.ndarray]:
    """Convolve with a Gaussian PSF by FFT, zero-padded so light does not wrap round the edges."""
    size = images[0].shape[0]
    pad = fft.next_fast_len(size + 2 * int(np.ceil(4 * sigma_px)) + 2, real=True)
    fy = fft.fftfreq(pad)[:, None]
    fx = fft.rfftfreq(pad)[None, :]
    transfer = np.exp(-2 * np.pi**2 * sigma_px**2 * (fx**2 + fy**2)).astype(np.float32)
    out = []
    for img in images:
        f = fft.rfft2(img, s=(pad, pad))
        out.append(fft.irfft2(f * transfer, s=(pad, pad))[:size, :size].astype(np.float32))
    return out


def correlated_sky_noise(size: int, scale: float, pixel_scale: float, sigma_native: float,
                         rng: np.random.Generator) -> np.ndarray:
    """Sky noise generated on the survey's native pixels and resampled to the image grid.

    Upsampled (image pixels finer than native, the usual case) it is bilinearly interpolated and so
    correlated over ~pixel_scale/scale image pixels; downsampled, native pixels average together.
    """
    native = size * scale / pixel_scale
    if native >= size:
        return rng.normal(0, sigma_native * pixel_scale / scale, (size, size)).astype(np.float32)
    n_nat = int(np.ceil(native)) + 2
    white = rng.normal(0, sigma_native, (n_nat, n_nat)).astype(np.float32)
    coords = (np.arange(size, dtype=np.float32) + 0.5) * (scale / pixel_scale)  # native-pixel positions
    return _bilinear_resample(white, coords)


def _bilinear_resample(white: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Separable bilinear interpolation of ``white`` at (coords x coords) native positions."""
    i0 = np.floor(coords).astype(np.int64)
    f = (coords - i0).astype(np.float32)
    i1 = np.minimum(i0 + 1, white.shape[0] - 1)
    rows = white[i0] * (1 - f)[:, None] + white[i1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i1] * f[None, :]


def asinh_rgb(bands: list[np.ndarray]) -> np.ndarray:
    """Lupton-like asinh stretch of (g, r, z) surface brightness to 8-bit RGB = (z, r, g).

    One stretch of the mean intensity scales all bands alike, so colours survive the stretch.
    """
    x = [np.maximum(b, 0, dtype=np.float32) * np.float32(w)
         for b, w in zip(bands, STRETCH_WEIGHTS, strict=True)]
    intensity = (x[0] + x[1] + x[2]) * np.float32(1 / 3) + np.float32(1e-9)
    f = np.arcsinh(intensity * np.float32(1 / STRETCH_SOFT))
    f *= np.float32(255 / np.arcsinh(STRETCH_MAX / STRETCH_SOFT))
    f /= intensity
    rgb = np.empty((*intensity.shape, 3), np.uint8)
    for k, band in enumerate((x[2], x[1], x[0])):
        band *= f
        np.clip(band + np.float32(0.5), 0, 255, out=band)
        rgb[..., k] = band
    return rgb


def colour_factors(g: Mapping[str, Any], which: str) -> tuple[float, float, float]:
    """Flux in (g, r, z) per unit r-band flux for the old or young light."""
    gr, rz = float(g[f"{which}_g_r"]), float(g[f"{which}_r_z"])
    return float(nanomaggies(22.5 + gr)), 1.0, float(nanomaggies(22.5 - rz))


def galaxy_light(g: Mapping[str, Any], size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Old and young surface brightness (r band, before the PSF) of the galaxy itself."""
    c = (size - 1) / 2
    ax = ((np.arange(size, dtype=np.float32) - c) * scale)
    x, y = ax[None, :], ax[:, None]
    pa = np.radians(float(g["position_angle_deg"]))
    u = x * np.cos(pa) + y * np.sin(pa)        # along the major axis (arcsec)
    w = -x * np.sin(pa) + y * np.cos(pa)       # along the minor axis
    flux = float(nanomaggies(float(g["mag_r"])))
    q = float(g["axis_ratio"])
    re = float(g["r_eff_arcsec"])
    pixel_area = scale * scale
    dist = float(g["disturbance"])
    rng = rng_for(int(g["_seed"]), "shape", int(g["sky_id"]))  # same galaxy shape in every survey

    if g["morphology"] == "smooth":
        r = np.hypot(u, w / q)
        light = sersic_profile(r, re, float(g["sersic_n"]), flux, q)
        yf = float(g["young_fraction"])
        old, young = light * (1 - yf), light * yf
        r_plane, plane_y = r, w / q
    else:
        bt = float(g["bulge_to_total"])
        cos_i = np.cos(np.radians(float(g["inclination_deg"])))
        q_bulge = float(np.sqrt(cos_i**2 + 0.7**2 * (1 - cos_i**2)))
        old = sersic_profile(np.hypot(u, w / q_bulge), float(g["bulge_r_eff_arcsec"]), float(g["sersic_n"]),
                             bt * flux, q_bulge)
        h = re / 1.678
        yd = w / max(q, 0.05)                  # deprojected into the disk plane
        r_plane, plane_y = np.hypot(u, yd), yd
        disk_flux = (1 - bt) * flux
        bar_flux = 0.35 * float(g["bar_strength"]) * disk_flux
        ring_flux = 0.15 * float(g["ring_strength"]) * disk_flux
        central = (disk_flux - bar_flux - ring_flux) / (2 * np.pi * h * h * max(q, 0.05))
        young = np.exp(-r_plane / h) * central
        amp = float(g["arm_amplitude"])
        if amp > 0 and int(g["n_arms"]) > 0:
            a = 0.9 * amp * (1 - np.exp(-np.square(r_plane / h)))  # no arms in the very centre
            theta = np.arctan2(yd, u)
            arms = spiral_pattern(r_plane, theta, int(g["n_arms"]), float(g["arm_pitch_deg"]), h,
                                  rng.uniform(0, 2 * np.pi))
            young = young * ((1 - a) + a * arms)
        if bar_flux > 0:
            length = float(g["bar_length_arcsec"])
            b = np.radians(float(g["bar_angle_deg"]))
            bx = u * np.cos(b) + yd * np.sin(b)
            by = -u * np.sin(b) + yd * np.cos(b)
            bar = np.exp(-((bx / length) ** 4) - np.square(by / (0.22 * length)))
            old = old + _normalised(bar, bar_flux, pixel_area)
        if ring_flux > 0:
            radius = max(1.1 * float(g["bar_length_arcsec"]), 1.2 * re)
            ring = np.exp(-0.5 * np.square((r_plane - radius) / (0.12 * radius)))
            young = young + _normalised(ring, ring_flux, pixel_area)
        dust = float(g["dust_lane"]) * float(np.clip((float(g["inclination_deg"]) - 70) / 15, 0, 1))
        if dust > 0:  # an edge-on disk's mid-plane dust absorbs, more so the blue light
            lane = np.exp(-0.5 * np.square(w / max(0.06 * h, 0.5 * scale))) * np.exp(-np.square(u / (3 * h)))
            old = old * (1 - 0.6 * dust * lane)
            young = young * (1 - 0.9 * dust * lane)

    if dist > 0:
        phi = rng.uniform(0, 2 * np.pi)
        theta = np.arctan2(plane_y, u)
        lopsided = 1 + 0.7 * dist * np.cos(theta - phi) * r_plane / (r_plane + re)
        old, young = old * lopsided, young * lopsided
        if dist > 0.3:  # tidal tails: one loose, faint arm at large radii
            tail = spiral_pattern(r_plane, theta, 1, 35.0, re, phi, sharpness=6)
            tail *= np.exp(-r_plane / (1.5 * re))
            tail *= 1 - np.exp(-np.square(r_plane / re))
            young = young + _normalised(tail, 0.25 * dist * flux, pixel_area)
    if bool(g["has_companion"]):
        ang = np.radians(float(g["companion_angle_deg"]))
        sep = float(g["companion_sep_arcsec"])
        ratio = float(g["companion_flux_ratio"])
        rc = np.hypot(x - sep * np.cos(ang), (y - sep * np.sin(ang)) / 0.8)
        comp = sersic_profile(rc, max(0.8 * re * np.sqrt(ratio), 0.5), 2.0, ratio * flux, 0.8)
        old, young = old + 0.6 * comp, young + 0.4 * comp
    return old.astype(np.float32), young.astype(np.float32)


def add_field(old: np.ndarray, young: np.ndarray, g: Mapping[str, Any], scale: float) -> None:
    """Neighbouring stars and faint galaxies of the sky patch (the same in every survey) and bright-star
    artifacts; drawn before the PSF."""
    size = old.shape[0]
    rng = rng_for(int(g["_seed"]), "field", int(g["sky_id"]))
    area = (size * scale / 60) ** 2
    pixel_area = scale * scale
    for _ in range(rng.poisson(STAR_DENSITY * area)):
        _add_point(old, rng.uniform(0, size - 1), rng.uniform(0, size - 1),
                   float(nanomaggies(rng.uniform(15.5, 22.0))) / pixel_area)
    for _ in range(rng.poisson(GALAXY_DENSITY * area)):
        target = old if rng.uniform() < 0.5 else young
        _add_small_galaxy(target, rng.uniform(0, size - 1), rng.uniform(0, size - 1),
                          float(nanomaggies(rng.uniform(18.5, 23.0))) / pixel_area,
                          rng.uniform(0.4, 1.5) / scale, rng.uniform(0.3, 1.0), rng.uniform(0, np.pi))
    if g["artifact"] == "star":
        # a saturated foreground star near the galaxy, with diffraction spikes along the image axes
        c = (size - 1) / 2
        off = rng.uniform(0.1, 0.6) * float(g["petro_r90_arcsec"]) / scale
        ang = rng.uniform(0, 2 * np.pi)
        sx, sy = c + off * np.cos(ang), c + off * np.sin(ang)
        star_flux = float(nanomaggies(float(g["mag_r"]) - rng.uniform(1.5, 4.0)))
        _add_point(old, sx, sy, star_flux / pixel_area)
        length = 0.05 * size
        d = np.arange(size, dtype=np.float32)
        spike_sb = 0.01 * star_flux / pixel_area / length
        ix, iy = int(round(sx)), int(round(sy))
        if 0 <= iy < size:
            old[iy, :] += spike_sb * np.exp(-np.abs(d - sx) / length)
        if 0 <= ix < size:
            old[:, ix] += spike_sb * np.exp(-np.abs(d - sy) / length)


def add_trail(bands: list[np.ndarray], g: Mapping[str, Any], scale: float, psf_sigma_arcsec: float) -> None:
    """A satellite trail: a straight line in ONE band (the bands are exposed at different times)."""
    size = bands[0].shape[0]
    rng = rng_for(int(g["_seed"]), "trail", int(g["sky_id"]))
    c = (size - 1) / 2
    ang = rng.uniform(0, np.pi)
    off = rng.uniform(-0.3, 0.3) * float(g["petro_r90_arcsec"]) / scale
    ax = np.arange(size, dtype=np.float32) - c
    dist = (ax[None, :] * np.sin(ang) - ax[:, None] * np.cos(ang) - off) * scale
    band = int(rng.integers(0, 3))
    bands[band] += rng.uniform(0.5, 3.0) * np.exp(-0.5 * np.square(dist / max(psf_sigma_arcsec, scale)))


def render_galaxy(g: Mapping[str, Any], survey_name: str, survey: Mapping[str, Any], size: int,
                  seed: int) -> np.ndarray:
    """One survey's (size, size, 3) uint8 image of galaxy ``g`` (a row of the sky table)."""
    g = {**g, "_seed": seed}
    scale = image_scale(float(g["petro_r90_arcsec"]))
    old, young = galaxy_light(g, size, scale)
    add_field(old, young, g, scale)
    psf_sigma = float(survey["seeing_fwhm"]) / 2.3548
    old, young = gaussian_psf_convolve([old, young], psf_sigma / scale)
    noise_rng = rng_for(seed, survey_name, int(g["sky_id"]))
    bands = []
    colours = zip(colour_factors(g, "old"), colour_factors(g, "young"), strict=True)
    for k, (c_old, c_young) in enumerate(colours):
        sigma = sky_noise_sigma(float(survey["depth_r"]) + BAND_DEPTH_OFFSET[k], float(survey["seeing_fwhm"]),
                                float(survey["pixel_scale"]))
        noise = correlated_sky_noise(size, scale, float(survey["pixel_scale"]), sigma, noise_rng)
        bands.append(old * c_old + young * c_young + noise)
    if g["artifact"] == "trail":
        add_trail(bands, g, scale, psf_sigma)
    return asinh_rgb(bands)


# Image file formats of ``simulate.surveys.<survey>.image_format``: real GZ2 cutouts are SkyServer JPEGs,
# GZ DECaLS ships PNGs.  JPEG at quality 90 (as SkyServer cutouts) is ~4x smaller than PNG of our noisy 424 px images.
JPEG_QUALITY = 90
JPEG_SUBSAMPLING = "4:2:0"    # libjpeg's usual chroma subsampling, pinned so the bytes do not follow Pillow defaults
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG"}
EXTENSIONS = {"png": ".png", "jpeg": ".jpg"}
_END_MARKERS = {"png": b"IEND\xaeB`\x82", "jpeg": b"\xff\xd9"}  # last bytes of a complete file (IEND, EOI)


def _format(image_format: str) -> str:
    if image_format not in PIL_FORMATS:
        raise ValueError(f"image format {image_format!r} is not one of {', '.join(PIL_FORMATS)}")
    return PIL_FORMATS[image_format]


def image_extension(image_format: str) -> str:
    """File extension of an ``image_format``: ``.png`` or ``.jpg``."""
    _format(image_format)
    return EXTENSIONS[image_format]


def image_bytes(rgb: np.ndarray, image_format: str = "png") -> bytes:
    """Encode 8-bit RGB as ``png`` (lossless, fast zlib settings) or ``jpeg`` (quality JPEG_QUALITY)."""
    pil_format = _format(image_format)
    buf = io.BytesIO()
    if pil_format == "PNG":
        Image.fromarray(rgb).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL,
                                  compress_type=PNG_ZLIB_STRATEGY)
    else:
        Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
    return buf.getvalue()


def png_bytes(rgb: np.ndarray) -> bytes:
    return image_bytes(rgb, "png")


def is_valid_image(path: str, size: int, image_format: str = "png") -> bool:
    """True if ``path`` holds a complete, fully decodable size x size RGB image in ``image_format``
    (a finished earlier render).  A file of another format, or one cut short, is not valid."""
    pil_format = _format(image_format)
    marker = _END_MARKERS[image_format]
    try:
        with open(path, "rb") as f:  # Pillow's LOAD_TRUNCATED_IMAGES (process-wide) would hide a cut-off end
            f.seek(0, io.SEEK_END)
            f.seek(max(f.tell() - len(marker), 0))
            if f.read() != marker:
                return False
        with Image.open(path, formats=(pil_format,)) as im:
            im.load()
            return im.size == (size, size) and im.mode == "RGB"
    except (OSError, ValueError, SyntaxError):
        return False
