"""Simulated Galaxy Zoo volunteers: feature visibility, truth rho, and the vectorised tree walk.

How likely a volunteer is to report a feature depends on how visible it is in THAT survey's
image, computed from the hidden parameters and the survey's optics (never from pixels):

- intrinsic strength (arm amplitude, bar strength, disk fraction 1 - B/T, disturbance, ...);
- resolution: a feature of angular size s is blurred by a PSF of FWHM f, ``res = s^2 / (s^2 + f^2)``;
- signal to noise: surface brightness vs the survey's depth per PSF-sized patch;
- inclination: edge-on hides bars, arms and rings, and shows a thin (edge-on) disk.

These set the *typical* volunteer's answer probabilities rho (bias 0, crowd offset 0), which are
the truth ``truth_rho_<q>_<a>``.  Each classification is by a volunteer from a finite pool with a
persistent logit bias, plus a per-galaxy crowd offset shared by everyone who saw that galaxy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gzmorph.tree import DecisionTree

Arrays = Mapping[str, np.ndarray]
SN_HALF = 12.0  # S/N per PSF patch at which a feature is half as visible as in a noiseless image
# Logit (offset, slopes) of the typical volunteer's answers, set so that the simulated SDSS catalog's raw vote
# fractions look like GZ2's (Hart et al. 2016 raw counts): see tests/test_simulate.py::test_votes_look_like_gz2.
FEATURED_LOGIT = (-2.8, 6.0, 2.0, -0.8)  # featured vs smooth, well resolved: offset, features, ellipticity; unresolved
BAR_LOGIT = (-1.8, 7.5)                   # GZ2 bar yes: offset, bar visibility
BAR_CUTS_DECALS = (0.08, 0.35)            # GZ DECaLS bar no / weak / strong, ordered on bar visibility
SPIRAL_LOGIT = (-0.5, 7.0)                # has spiral arms yes: offset, arm visibility
ODD_LOGIT = (-1.9, 6.5)                   # something odd yes: offset, disturbance / ring / dust lane


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def resolution(size_arcsec: np.ndarray, seeing_fwhm: float) -> np.ndarray:
    """How well a feature of this angular size survives a PSF of this FWHM (0 = blurred away)."""
    s2 = np.square(size_arcsec)
    return s2 / (s2 + seeing_fwhm**2)


def surface_sn(mag_r: np.ndarray, r_eff: np.ndarray, depth_r: float, seeing_fwhm: float,
               dimmer_mag: float = 0.0) -> np.ndarray:
    """S/N in a PSF-sized patch of the galaxy's mean surface brightness within r_eff (+ dimmer_mag).

    The 5-sigma depth is a point-source flux in about a PSF-sized aperture, so a patch of area
    pi*FWHM^2 at surface brightness mu has S/N = 5 * 10^(-0.4 (mu - depth)) * pi * FWHM^2.
    """
    mu = mag_r + 0.75 + 2.5 * np.log10(np.pi * np.square(r_eff)) + dimmer_mag
    return 5 * 10 ** (-0.4 * (mu - depth_r)) * np.pi * seeing_fwhm**2


def sn_visibility(sn: np.ndarray) -> np.ndarray:
    return sn**2 / (sn**2 + SN_HALF**2)


def face_on(cos_i: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """0 when edge-on (cos i < lo), 1 when close to face-on (cos i > hi)."""
    return np.clip((cos_i - lo) / (hi - lo), 0, 1)


def observed_axis_ratio(q: np.ndarray, major_arcsec: np.ndarray, seeing_fwhm: float) -> np.ndarray:
    """The PSF rounds small galaxies: a thin disk smaller than the seeing no longer looks edge-on."""
    s = 0.6 * seeing_fwhm
    return np.sqrt((q * major_arcsec) ** 2 + s**2) / np.sqrt(major_arcsec**2 + s**2)


@dataclass(frozen=True)
class Visibility:
    """Per galaxy, how visible each feature is in one survey (0-1 unless noted)."""

    featured: np.ndarray
    artifact: np.ndarray
    axis_ratio: np.ndarray       # as seen through the PSF
    edge_on_disk: np.ndarray
    disk: np.ndarray
    arms: np.ndarray
    arm_resolution: np.ndarray
    bar: np.ndarray
    ring: np.ndarray
    dust_lane: np.ndarray
    disturbance: np.ndarray
    companion: np.ndarray        # 1 for a merger with a companion
    bulge: np.ndarray            # apparent bulge prominence (B/T, inflated when the disk is blurred)
    boxy: np.ndarray
    pitch_deg: np.ndarray
    n_arms: np.ndarray
    resolved: np.ndarray         # how well the galaxy as a whole is seen: its size against the PSF, times S/N
    ellipticity: np.ndarray      # 1 - axis ratio as seen through the PSF


def visibility(g: Arrays, survey: Mapping[str, Any]) -> Visibility:
    """Feature visibility from hidden parameters + survey optics (seeing, depth)."""
    fwhm, depth = float(survey["seeing_fwhm"]), float(survey["depth_r"])
    is_disk = np.asarray(g["morphology"]) == "disk"
    bt = np.asarray(g["bulge_to_total"], float)
    re = np.asarray(g["r_eff_arcsec"], float)
    r90 = np.asarray(g["petro_r90_arcsec"], float)
    mag = np.asarray(g["mag_r"], float)
    cos_i = np.cos(np.radians(np.asarray(g["inclination_deg"], float)))
    scale_length = re / 1.678

    sn_inner = sn_visibility(surface_sn(mag, re, depth, fwhm))
    sn_outer = sn_visibility(surface_sn(mag, re, depth, fwhm, dimmer_mag=1.0))
    sn_faint = sn_visibility(surface_sn(mag, re, depth, fwhm, dimmer_mag=2.5))  # tidal features

    disk = np.where(is_disk, (1 - bt) * resolution(scale_length, fwhm) * sn_outer, 0.0)
    # Arms and bars are drawn in the disk light: a bright bulge dilutes their contrast in the image.
    arm_res = resolution(0.6 * re, fwhm)
    arms = (np.asarray(g["arm_amplitude"], float) * arm_res * sn_outer * face_on(cos_i, 0.25, 0.6)
            * np.sqrt(1 - bt))
    bar = (np.asarray(g["bar_strength"], float) * resolution(np.asarray(g["bar_length_arcsec"], float), fwhm)
           * sn_inner * face_on(cos_i, 0.3, 0.65) * (1 - 0.5 * bt))
    ring = (np.asarray(g["ring_strength"], float) * resolution(0.5 * re, fwhm) * sn_outer
            * face_on(cos_i, 0.3, 0.6))
    edge = sigmoid((np.degrees(np.arccos(cos_i)) - 75) / 3)
    dust = np.asarray(g["dust_lane"], float) * edge * resolution(0.35 * scale_length, fwhm) * sn_inner
    disturbance = np.asarray(g["disturbance"], float) * resolution(0.5 * r90, fwhm) * sn_faint
    q_obs = observed_axis_ratio(np.asarray(g["axis_ratio"], float), re, fwhm)
    edge_on_disk = np.where(is_disk, sigmoid((0.38 - q_obs) / 0.05), 0.0)
    kind = np.asarray(g["artifact"])
    artifact = np.select([kind == "star", kind == "trail"], [1.0, 0.85], 0.0)

    featured = 1 - ((1 - arms) * (1 - 0.8 * bar) * (1 - 0.7 * disk) * (1 - 0.9 * edge_on_disk)
                    * (1 - 0.6 * disturbance) * (1 - 0.5 * ring))
    return Visibility(
        featured=featured, artifact=artifact, axis_ratio=q_obs, edge_on_disk=edge_on_disk, disk=disk,
        arms=arms, arm_resolution=arm_res, bar=bar, ring=ring, dust_lane=dust, disturbance=disturbance,
        companion=np.asarray(g["has_companion"], float),
        bulge=np.clip(bt + 0.15 * (1 - resolution(scale_length, fwhm)), 0, 1),
        boxy=(np.asarray(g["bar_strength"], float) * edge
              * resolution(np.asarray(g["bar_length_arcsec"], float), fwhm)),
        pitch_deg=np.asarray(g["arm_pitch_deg"], float), n_arms=np.asarray(g["n_arms"], float),
        resolved=resolution(re, fwhm) * sn_inner, ellipticity=1 - q_obs,
    )


def softmax(scores: list[np.ndarray]) -> np.ndarray:
    s = np.stack(np.broadcast_arrays(*scores), axis=1)
    s = s - s.max(axis=1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=1, keepdims=True)


def ordinal(latent: np.ndarray, cuts: list[float], spread: float) -> np.ndarray:
    """Ordered-logit probabilities of len(cuts)+1 ordered answers (lowest first)."""
    cdf = [sigmoid((c - latent) / spread) for c in cuts]
    edges = [np.zeros_like(latent), *cdf, np.ones_like(latent)]
    return np.stack([edges[k + 1] - edges[k] for k in range(len(cuts) + 1)], axis=1)


def _pick(probs_by_answer: dict[str, np.ndarray], answers: tuple[str, ...]) -> np.ndarray:
    return np.stack([probs_by_answer[a] for a in answers], axis=1)


def _named(p: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    return {n: p[:, k] for k, n in enumerate(names)}


def question_probabilities(question: str, answers: tuple[str, ...], v: Visibility) -> np.ndarray:
    """The typical volunteer's answer probabilities (n_galaxies, n_answers), in ``answers`` order."""
    n = len(v.featured)
    zero = np.zeros(n)
    if question == "smooth-or-featured":
        # What a volunteer sees: disk features, but also an elongated shape (an elliptical can pass for an
        # inclined disk), and how well the galaxy is resolved above the noise: the less it is, the more the
        # answers regress to an undecided "probably smooth" (the redshift bias of GZ2's raw votes).  So
        # smooth galaxies get rho(smooth) ~0.7-0.95 by size, shape and S/N, not one value.
        a, b, c, undecided = FEATURED_LOGIT
        clear = a + b * v.featured + c * v.ellipticity
        p = softmax([zero, v.resolved * clear + (1 - v.resolved) * undecided, -5.5 + 9.5 * v.artifact])
        return _pick(_named(p, ["smooth", "featured-or-disk", "artifact"]), answers)
    if question == "disk-edge-on":
        yes = np.clip(v.edge_on_disk, 0.01, 0.99)
        return _pick({"yes": yes, "no": 1 - yes}, answers)
    if question == "bar":
        if set(answers) == {"yes", "no"}:  # GZ2
            yes = sigmoid(BAR_LOGIT[0] + BAR_LOGIT[1] * v.bar)
            return _pick({"yes": yes, "no": 1 - yes}, answers)
        p = ordinal(v.bar, list(BAR_CUTS_DECALS), 0.07)
        return _pick(_named(p, ["no", "weak", "strong"]), answers)
    if question == "has-spiral-arms":
        yes = sigmoid(SPIRAL_LOGIT[0] + SPIRAL_LOGIT[1] * v.arms)
        return _pick({"yes": yes, "no": 1 - yes}, answers)
    if question == "bulge-size":
        if "no-bulge" in answers:  # GZ2
            p = ordinal(v.bulge, [0.06, 0.25, 0.55], 0.07)
            return _pick(_named(p, ["no-bulge", "just-noticeable", "obvious", "dominant"]), answers)
        p = ordinal(v.bulge, [0.04, 0.18, 0.38, 0.62], 0.06)
        return _pick(_named(p, ["none", "small", "moderate", "large", "dominant"]), answers)
    if question == "how-rounded":
        p = ordinal(v.axis_ratio, [0.45, 0.78], 0.05)
        round_name = "completely-round" if "completely-round" in answers else "round"
        return _pick(_named(p, ["cigar-shaped", "in-between", round_name]), answers)
    if question == "edge-on-bulge":
        p = softmax([np.clip((0.1 - v.bulge) / 0.05, -4, 4), -2.0 + 6.0 * v.boxy,
                     np.clip((v.bulge - 0.1) / 0.05, -4, 4)])
        return _pick(_named(p, ["none", "boxy", "rounded"]), answers)
    if question == "spiral-winding":
        width = 5.0 / np.sqrt(v.arm_resolution + 0.05)  # blurred arms are hard to judge
        p = softmax([-0.5 * ((v.pitch_deg - c) / width) ** 2 for c in (12.0, 22.0, 32.0)])
        return _pick(_named(p, ["tight", "medium", "loose"]), answers)
    if question == "spiral-arm-count":
        n_eff = np.clip(v.n_arms, 1, 5)
        width = 0.5 / np.sqrt(v.arm_resolution + 0.05)
        scores = [-0.5 * ((n_eff - k) / width) ** 2 for k in (1, 2, 3, 4, 5)]
        p = softmax([*scores, 0.5 - 6.0 * v.arms])
        return _pick(_named(p, ["1", "2", "3", "4", "more-than-4", "cant-tell"]), answers)
    if question == "something-odd":
        odd = 1 - (1 - v.disturbance) * (1 - v.ring) * (1 - v.dust_lane)
        yes = sigmoid(ODD_LOGIT[0] + ODD_LOGIT[1] * odd)
        return _pick({"yes": yes, "no": 1 - yes}, answers)
    if question == "odd-feature":
        p = softmax([-1.0 + 6.0 * v.ring, zero - 3.5, -0.5 + 4.0 * v.disturbance * (1 - v.companion),
                     -2.0 + 3.0 * v.disturbance * v.disk, zero - 1.0,
                     -2.0 + 7.0 * v.disturbance * v.companion, -2.0 + 7.0 * v.dust_lane])
        return _pick(_named(p, ["ring", "lens-or-arc", "disturbed", "irregular", "other", "merger",
                                "dust-lane"]), answers)
    if question == "merging":
        p = ordinal(v.disturbance * (1 + 0.3 * v.companion), [0.10, 0.32, 0.58], 0.06)
        return _pick(_named(p, ["none", "minor-disturbance", "major-disturbance", "merger"]), answers)
    raise KeyError(f"no volunteer model for question {question!r}")


def rho(g: Arrays, survey: Mapping[str, Any], tree: DecisionTree) -> dict[str, np.ndarray]:
    """Truth rho: per question an (n_galaxies, n_answers) matrix of the typical volunteer's
    probabilities of each answer GIVEN the question is asked; rows sum to 1."""
    v = visibility(g, survey)
    return {q.name: question_probabilities(q.name, q.answer_names, v) for q in tree.questions}


def classifications_per_galaxy(n: int, vol: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
    """~per_galaxy (+-2) each; a ``fewer_fraction`` got uniformly fewer_min..per_galaxy-5 (GZ2 shortfalls)."""
    per = int(vol["per_galaxy"])
    base = np.maximum(per + rng.integers(-2, 3, n), 1)
    hi = max(per - 5, int(vol["fewer_min"]))
    fewer = rng.integers(int(vol["fewer_min"]), hi + 1, n)
    return np.where(rng.uniform(size=n) < float(vol["fewer_fraction"]), fewer, base).astype(np.int64)


def vote_counts(probs: dict[str, np.ndarray], tree: DecisionTree, n_classifications: np.ndarray,
                vol: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Walk the tree for every classification at once; return catalog count columns.

    Each classification is by a volunteer drawn from a pool of ``pool`` (activity Zipf-like, as
    real crowds are), who answers with logits log(rho) + own bias + the galaxy's crowd offset.
    Independent volunteers with independent biases alone would give exactly binomial counts
    (each vote is an independent draw with the bias-averaged probability); the crowd offset,
    shared by all volunteers of one galaxy, is what makes counts over-dispersed vs a binomial.
    """
    n = len(n_classifications)
    galaxy = np.repeat(np.arange(n), n_classifications)
    m = len(galaxy)
    pool = int(vol["pool"])
    activity = 1.0 / np.arange(1, pool + 1) ** 0.7
    volunteer = rng.choice(pool, size=m, p=activity / activity.sum())
    n_ans = tree.n_answers()
    # per-answer offsets scaled by 1/sqrt(2) so that a binary logit difference has the stated sigma
    bias = rng.normal(0, float(vol["bias_sigma"]) / np.sqrt(2), (pool, n_ans))
    crowd = rng.normal(0, float(vol["crowd_sigma"]) / np.sqrt(2), (n, n_ans))

    chosen: dict[str, np.ndarray] = {}
    out: dict[str, np.ndarray] = {}
    offset = 0
    for q in tree.questions:
        k = len(q.answers)
        if q.asked_after:
            asked = np.zeros(m, bool)
            for dep_q, dep_a in q.asked_after:
                asked |= chosen[dep_q] == tree.question(dep_q).answer_names.index(dep_a)
        else:
            asked = np.ones(m, bool)
        idx = np.flatnonzero(asked)
        g, v = galaxy[idx], volunteer[idx]
        logits = (np.log(np.clip(probs[q.name][g], 1e-9, 1.0))
                  + crowd[g, offset:offset + k] + bias[v, offset:offset + k])
        answer = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)  # Gumbel-max = categorical draw
        picked = np.full(m, -1)
        picked[idx] = answer
        chosen[q.name] = picked
        counts = np.bincount(g * k + answer, minlength=n * k).reshape(n, k)
        out[q.total_column] = counts.sum(axis=1)
        for j, col in enumerate(q.answer_columns):
            out[col] = counts[:, j]
        offset += k
    return out
