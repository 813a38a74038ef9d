"""``gzmorph crossmatch``: one-to-one sky match of two survey catalogs.

Candidate pairs are every pair closer than the match radius (astropy
``search_around_sky``).  Pairs are then accepted closest first, skipping any
galaxy already claimed, so no galaxy is matched twice; with the small
astrometric scatter of real surveys this equals mutual nearest neighbours,
and it stays well defined in crowded fields where nearest neighbours collide.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from astropy import units as u
from astropy.coordinates import SkyCoord, search_around_sky

from gzmorph import catalog, config, io

log = logging.getLogger(__name__)

def match_one_to_one(
    left_ra: np.ndarray, left_dec: np.ndarray, right_ra: np.ndarray, right_dec: np.ndarray, radius_arcsec: float
) -> pd.DataFrame:
    """Row indices of matched pairs and their separations, closest pairs claimed first.

    Returns a frame with ``left_index, right_index, separation_arcsec`` sorted by left index.
    """
    empty = pd.DataFrame({"left_index": [], "right_index": [], "separation_arcsec": []}).astype(
        {"left_index": "int64", "right_index": "int64", "separation_arcsec": "float64"}
    )
    if len(left_ra) == 0 or len(right_ra) == 0:
        return empty
    left = SkyCoord(np.asarray(left_ra) * u.deg, np.asarray(left_dec) * u.deg)
    right = SkyCoord(np.asarray(right_ra) * u.deg, np.asarray(right_dec) * u.deg)
    i_left, i_right, sep2d, _ = search_around_sky(left, right, radius_arcsec * u.arcsec)
    if len(i_left) == 0:
        return empty
    sep = sep2d.to_value(u.arcsec)
    # Closest first; ties broken by indices so the result is deterministic.
    order = np.lexsort((i_right, i_left, sep))
    taken_left = np.zeros(len(left_ra), bool)
    taken_right = np.zeros(len(right_ra), bool)
    keep = []
    for k in order:  # one pass over candidate pairs (~ number of galaxies); cheap next to the tree search
        a, b = i_left[k], i_right[k]
        if not (taken_left[a] or taken_right[b]):
            taken_left[a] = taken_right[b] = True
            keep.append(k)
    keep = np.asarray(keep, dtype=np.int64)
    out = pd.DataFrame(
        {
            "left_index": np.asarray(i_left, np.int64)[keep],
            "right_index": np.asarray(i_right, np.int64)[keep],
            "separation_arcsec": sep[keep],
        }
    )
    return out.sort_values("left_index", ignore_index=True)


def match_statistics(
    matches: pd.DataFrame, n_left: int, n_right: int, radius_arcsec: float, left: str, right: str
) -> dict[str, Any]:
    sep = matches["separation_arcsec"].to_numpy()
    pct = {f"p{p}": float(np.percentile(sep, p)) if len(sep) else None for p in (50, 90, 99)}
    return {
        "left_survey": left,
        "right_survey": right,
        "radius_arcsec": radius_arcsec,
        f"n_{left}": n_left,
        f"n_{right}": n_right,
        "matched": len(matches),
        f"unmatched_{left}": n_left - len(matches),
        f"unmatched_{right}": n_right - len(matches),
        "separation_arcsec": {**pct, "max": float(sep.max()) if len(sep) else None},
    }


def matched_catalog(left_df: pd.DataFrame, right_df: pd.DataFrame, matches: pd.DataFrame,
                    left: str, right: str) -> pd.DataFrame:
    """One row per matched pair: every column of both catalogs, prefixed ``<survey>__``."""
    a = left_df.iloc[matches["left_index"].to_numpy()].reset_index(drop=True).add_prefix(f"{left}__")
    b = right_df.iloc[matches["right_index"].to_numpy()].reset_index(drop=True).add_prefix(f"{right}__")
    return pd.concat([a, b, matches[["separation_arcsec"]].reset_index(drop=True)], axis=1)


def sky_plot(left_df: pd.DataFrame, right_df: pd.DataFrame, matched: pd.DataFrame,
             left: str, right: str, radius_arcsec: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6), constrained_layout=True)
    ax.scatter(left_df["ra"], left_df["dec"], s=6, marker="o", facecolors="none", edgecolors="tab:red",
               linewidths=0.5, label=f"{left} ({len(left_df)})")
    ax.scatter(right_df["ra"], right_df["dec"], s=3, marker=".", color="tab:blue", label=f"{right} ({len(right_df)})")
    ax.scatter(matched[f"{left}__ra"], matched[f"{left}__dec"], s=12, marker="+", color="black", linewidths=0.6,
               label=f"matched within {radius_arcsec:g}\" ({len(matched)})")
    ax.set_xlabel("RA (deg)")
    ax.set_ylabel("Dec (deg)")
    ax.invert_xaxis()  # RA grows to the east, shown to the left as on the sky
    ax.set_title(f"Cross-match of {left} and {right}")
    # below the axes: a survey patch has no empty corner to put a legend in
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8, markerscale=2, frameon=False)
    io.save_figure(fig, out, dpi=120)


def run(args: argparse.Namespace) -> None:
    params = config.load(args.params)
    xm = params["crossmatch"]
    left, right = xm["left"], xm["right"]
    left_df = catalog.load(args.left)
    right_df = catalog.load(args.right)
    radius = float(xm["radius_arcsec"])
    matches = match_one_to_one(left_df["ra"].to_numpy(), left_df["dec"].to_numpy(),
                               right_df["ra"].to_numpy(), right_df["dec"].to_numpy(), radius)
    matched = matched_catalog(left_df, right_df, matches, left, right)
    stats = match_statistics(matches, len(left_df), len(right_df), radius, left, right)
    io.write_parquet(args.out, matched)
    io.write_json(args.stats, stats)
    sky_plot(left_df, right_df, matched, left, right, radius, Path(args.figure))
    log.info("matched %d of %d %s and %d %s galaxies within %g arcsec (median separation %.3f arcsec)",
             stats["matched"], len(left_df), left, len(right_df), right, radius,
             stats["separation_arcsec"]["p50"] or float("nan"))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("crossmatch", help="one-to-one sky match of two survey catalogs")
    config.add_params_argument(p)
    p.add_argument("--left", required=True, help="catalog parquet of crossmatch.left")
    p.add_argument("--right", required=True, help="catalog parquet of crossmatch.right")
    p.add_argument("--out", required=True, help="matched catalog parquet")
    p.add_argument("--stats", required=True, help="match statistics JSON")
    p.add_argument("--figure", required=True, help="sky plot PNG")
    p.set_defaults(func=run)
