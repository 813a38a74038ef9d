"""Galaxy Zoo 2 images of Zenodo record 3565489: ``gz2_filename_mapping.csv`` and ``images_gz2.zip``.

The record (the images the GZ2 volunteers classified, as used by Walmsley et al. 2020) holds
``images_gz2.zip``, 243,434 JPEGs named ``<asset_id>.jpg`` (inside a folder such as ``images/``), and
``gz2_filename_mapping.csv`` with columns ``objid,sample,asset_id``: the Hart16 ``dr7objid``, its sample and
the image's name.  A galaxy's image is found by ``dr7objid = objid`` -> ``asset_id`` -> ``<asset_id>.jpg``.

The join is deterministic whatever the mapping holds:

- identical repeated rows count once;
- an ``asset_id`` named for more than one ``objid`` is ambiguous (one of them would get another galaxy's
  image): it is used for none of them;
- an ``objid`` with several assets keeps all of them as candidates, best first: rows whose ``sample`` is the
  galaxy's Hart16 sample, then by ascending ``asset_id``; the image step takes the first candidate the zip
  holds;
- a galaxy without a usable row gets no candidate; its image comes from the fallback source.

:func:`assign_assets` returns the candidates as a ``;``-joined string per galaxy (the catalog's
``asset_ids`` column, ``""`` for none) and counts of each case for the fetch report.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from gzmorph.catalog import CatalogError
from gzmorph.sources import gz2

RECORD = 3565489
MAPPING_FILE = "gz2_filename_mapping.csv"
IMAGE_FILES = ("images_gz2.zip",)
MAPPING_COLUMNS = ("objid", "sample", "asset_id")
ASSETS_COLUMN = "asset_ids"   # in the canonical catalog: candidate asset ids, best first, ';'-joined
SEPARATOR = ";"
MEMBER_RE = re.compile(r"(\d{1,19})\.jpg", re.IGNORECASE)
EXAMPLES = 5                  # ids listed per case in the report


def read_mapping(path: str | os.PathLike[str]) -> pd.DataFrame:
    """``gz2_filename_mapping.csv`` as (objid int64, sample str, asset_id int64); a bad cell stops."""
    where = str(path)
    header = gz2._read_header(path)
    for col in ("objid", "asset_id"):
        if col not in header:
            raise CatalogError(f"{where}: column {col!r}: required column is missing")
    usecols = [c for c in MAPPING_COLUMNS if c in header]
    df = gz2._read_csv(path, usecols=usecols, dtype=str, keep_default_na=False)
    return pd.DataFrame({
        "objid": gz2.parse_int_ids(df["objid"].str.strip(), where, "objid"),
        "sample": df["sample"].str.strip().to_numpy(dtype=object) if "sample" in df.columns else "",
        "asset_id": gz2.parse_int_ids(df["asset_id"].str.strip(), where, "asset_id"),
    })


def assign_assets(catalog: pd.DataFrame, mapping: pd.DataFrame) -> tuple[np.ndarray, dict[str, Any]]:
    """(candidate asset ids per catalog row as ';'-joined strings, what the join found)."""
    objid = gz2.parse_int_ids(catalog["id_str"].astype(str).reset_index(drop=True), "<catalog>", "id_str",
                              row_offset=0)
    rows = len(mapping)
    m = mapping.drop_duplicates(["objid", "sample", "asset_id"])
    identical = rows - len(m)
    owners = m.drop_duplicates(["objid", "asset_id"]).groupby("asset_id")["objid"].nunique()
    ambiguous = np.sort(owners.index[owners.to_numpy() > 1].to_numpy())
    wanted = pd.Index(objid)
    ambiguous_galaxies = wanted.intersection(m.loc[m["asset_id"].isin(ambiguous), "objid"].unique())
    m = m[~m["asset_id"].isin(ambiguous)]
    known = m["objid"].isin(wanted).to_numpy()
    not_in_catalog = int((~known).sum())
    m = m[known]
    if "sample" in catalog.columns:
        galaxy_sample = pd.Series(catalog["sample"].astype(str).to_numpy(), index=objid)
        mismatch = (m["sample"].to_numpy() != m["objid"].map(galaxy_sample).to_numpy())
    else:
        mismatch = np.zeros(len(m), dtype=bool)
    # One row per (objid, asset): a matching sample wins over a mismatching one for the same asset.
    m = (m.assign(mismatch=mismatch).sort_values(["objid", "mismatch", "asset_id"], kind="stable")
         .drop_duplicates(["objid", "asset_id"]))
    per_objid = m["objid"].value_counts()
    several = per_objid.index[per_objid.to_numpy() > 1]
    single = m[~m["objid"].isin(several)]
    joined = pd.Series(single["asset_id"].astype(str).to_numpy(), index=single["objid"].to_numpy())
    multi = m[m["objid"].isin(several)]
    if len(multi):
        joined = pd.concat([joined, multi.groupby("objid")["asset_id"].agg(
            lambda s: SEPARATOR.join(map(str, s)))])
    assets = pd.Series(objid).map(joined).fillna("").to_numpy(dtype=object)
    chosen = m.drop_duplicates("objid")  # the best candidate of each galaxy
    without = objid[assets == ""]
    stats = {
        "mapping_rows": rows, "galaxies": len(objid), "with_asset": int((assets != "").sum()),
        "without_asset": len(without), "identical_rows_dropped": identical,
        "ambiguous_assets": len(ambiguous), "galaxies_with_ambiguous_assets": len(ambiguous_galaxies),
        "galaxies_with_several_assets": len(several), "best_asset_sample_differs": int(chosen["mismatch"].sum()),
        "rows_not_in_catalog": not_in_catalog,
        "examples": {"without_asset": [str(i) for i in without[:EXAMPLES]],
                     "several_assets": [str(i) for i in np.sort(several.to_numpy())[:EXAMPLES]],
                     "ambiguous_assets": [int(a) for a in ambiguous[:EXAMPLES]]},
    }
    return assets, stats


def candidates(value: object) -> list[int]:
    """The asset ids of a catalog ``asset_ids`` cell, best first (none for an empty or missing cell)."""
    if not isinstance(value, str):
        return []
    return [int(a) for a in value.split(SEPARATOR) if a.strip().isdigit()]


def member_assets(members: Iterable[str]) -> tuple[dict[int, str], list[str]]:
    """(asset_id -> member name, members named for an asset already seen) over safe zip member names.

    Members named ``<digits>.jpg`` in any folder count (``images/123.jpg``); macOS resource forks
    (``__MACOSX/...``, ``._123.jpg``) do not.  The first member of an asset wins, in zip order.
    """
    found: dict[int, str] = {}
    repeated: list[str] = []
    for name in members:
        path = PurePosixPath(name)
        if any(part == "__MACOSX" for part in path.parts):
            continue
        m = MEMBER_RE.fullmatch(path.name)
        if m is None:
            continue
        asset = int(m.group(1))
        if asset in found:
            repeated.append(name)
        else:
            found[asset] = name
    return found, repeated
