"""``gzmorph simulate``: two simulated Galaxy Zoo surveys of one sky patch, with known truth.

- ``simulate sky``: the hidden population (one row per galaxy: morphology, bar, arms, redshift, ...);
- ``simulate survey``: what one survey sees of it (footprint, completeness, astrometry, ids), its
  424x424 RGB images (rendered in parallel, resumable) and its volunteers' votes on its decision
  tree, written as a canonical catalog (see :mod:`gzmorph.catalog`) with ``truth_*`` columns;
- ``simulate figure``: example images per morphology class with their vote fractions.

The science lives in :mod:`gzmorph.sim`; this module is the command line and file handling.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gzmorph import catalog, config, io
from gzmorph.config import ConfigError
from gzmorph.sim import rng_for
from gzmorph.sim.observe import observe
from gzmorph.sim.population import sky_table
from gzmorph.sim.render import image_bytes, image_extension, is_valid_image, render_galaxy
from gzmorph.sim.volunteers import classifications_per_galaxy, rho, vote_counts
from gzmorph.tree import DecisionTree, get_tree

log = logging.getLogger(__name__)
CHUNK = 16  # galaxies per worker task: small enough to balance, large enough to amortise pickling


# ---------------------------------------------------------------------------------------------- sky
def require_simulated(params: dict[str, Any]) -> None:
    """The simulated survey must not overwrite a real one's catalog (dvc.yaml runs only this source)."""
    if params["data_source"] != "simulated":
        raise ConfigError(f"data_source is {params['data_source']!r}, not 'simulated': the simulated-survey stages "
                          "do not apply; run the real-data pipeline with snakemake (README: real Galaxy Zoo data)")


def run_sky(args: argparse.Namespace) -> None:
    params = config.load(args.params)
    require_simulated(params)
    sky = sky_table(params)
    io.write_parquet(args.out, sky)
    log.info("sky: %d galaxies (%d smooth, %d disk) -> %s", len(sky), (sky["morphology"] == "smooth").sum(),
             (sky["morphology"] == "disk").sum(), args.out)


# ------------------------------------------------------------------------------------------- survey
def survey_params(params: dict[str, Any], survey_name: str) -> dict[str, Any]:
    require_simulated(params)
    surveys = params["simulate"]["surveys"]
    if survey_name not in surveys:
        raise ConfigError(f"simulate.surveys: no survey {survey_name!r}; known: {', '.join(sorted(surveys))}")
    return surveys[survey_name]


def image_path(images_dir: str, id_str: str, image_format: str = "png") -> str:
    """``<images>/<id_str>.png`` or ``.jpg`` (by ``image_format``) exactly as given (a relative --images stays
    relative)."""
    return os.path.join(images_dir, f"{id_str}{image_extension(image_format)}")


def simulate_votes(galaxies: pd.DataFrame, params: dict[str, Any], survey_name: str,
                   tree: DecisionTree) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Truth rho per question and the vote-count columns for these galaxies (no pixels needed)."""
    survey = survey_params(params, survey_name)
    vol = params["simulate"]["volunteers"]
    probs = rho(galaxies, survey, tree)
    rng = rng_for(int(params["seed"]), survey_name, "votes")
    n_class = classifications_per_galaxy(len(galaxies), vol, rng)
    return probs, vote_counts(probs, tree, n_class, vol, rng)


def build_catalog(sky: pd.DataFrame, params: dict[str, Any], survey_name: str,
                  images_dir: str) -> pd.DataFrame:
    """The survey's canonical catalog: ids, measured coords, votes and truth (images not touched)."""
    survey = survey_params(params, survey_name)
    tree = get_tree(survey["tree"])
    obs = observe(sky, survey_name, survey, int(params["seed"]))
    probs, counts = simulate_votes(obs, params, survey_name, tree)
    cols: dict[str, Any] = {
        "id_str": obs["id_str"].astype(str).to_numpy(),
        "ra": obs["obs_ra"].to_numpy(), "dec": obs["obs_dec"].to_numpy(),
        "survey": survey_name, "tree": tree.name,
        "file_loc": [image_path(images_dir, i, survey["image_format"]) for i in obs["id_str"]],
    }
    cols.update({c: counts[c].astype(np.int64) for c in tree.vote_columns})
    for q in tree.questions:
        for j, a in enumerate(q.answer_names):
            cols[catalog.rho_column(q.name, a)] = probs[q.name][:, j]
    for c in sky.columns:
        cols[f"{catalog.TRUTH_PREFIX}{c}"] = obs[c].to_numpy()
    df = pd.DataFrame(cols)
    catalog.validate(df, f"<{survey_name} catalog>", tree)
    return df


RenderTask = tuple[list[dict[str, Any]], list[str], str, dict[str, Any], int, int]


def _render_chunk(task: RenderTask) -> tuple[int, int]:
    """Render the galaxies of one chunk that have no valid image yet; return (rendered, skipped)."""
    records, paths, survey_name, survey, size, seed = task
    fmt = survey["image_format"]
    rendered = skipped = 0
    for g, path in zip(records, paths, strict=True):
        if is_valid_image(path, size, fmt):
            skipped += 1
            continue
        io.write_bytes(path, image_bytes(render_galaxy(g, survey_name, survey, size, seed), fmt))
        rendered += 1
    return rendered, skipped


def _chunks(records: Sequence[dict[str, Any]], paths: Sequence[str], n: int) -> Iterator[tuple[list, list]]:
    for i in range(0, len(records), n):
        yield list(records[i:i + n]), list(paths[i:i + n])


def render_images(cat: pd.DataFrame, sky: pd.DataFrame, params: dict[str, Any], survey_name: str,
                  threads: int = 1, progress: bool = True) -> dict[str, int]:
    """Render every catalogued galaxy to its ``file_loc`` with ``threads`` worker processes."""
    from tqdm import tqdm

    survey = survey_params(params, survey_name)
    size, seed = int(params["simulate"]["image_size"]), int(params["seed"])
    rows = sky.set_index("sky_id").loc[cat[f"{catalog.TRUTH_PREFIX}sky_id"].to_numpy()].reset_index()
    records = rows.to_dict("records")
    paths = cat["file_loc"].tolist()
    if paths:
        Path(paths[0]).parent.mkdir(parents=True, exist_ok=True)
    tasks = [(r, p, survey_name, survey, size, seed) for r, p in _chunks(records, paths, CHUNK)]
    done = {"rendered": 0, "skipped": 0}
    bar = tqdm(total=len(records), desc=f"render {survey_name}", unit="gal", disable=not progress)
    with bar:
        if threads <= 1:
            results = (_render_chunk(t) for t in tasks)
            for (r, s), t in zip(results, tasks, strict=True):
                done["rendered"] += r
                done["skipped"] += s
                bar.update(len(t[0]))
        else:
            with ProcessPoolExecutor(max_workers=threads) as pool:
                futures = {pool.submit(_render_chunk, t): len(t[0]) for t in tasks}
                for fut in as_completed(futures):
                    r, s = fut.result()
                    done["rendered"] += r
                    done["skipped"] += s
                    bar.update(futures[fut])
    return done


def run_survey(args: argparse.Namespace) -> dict[str, int]:
    params = config.load(args.params)
    sky = pd.read_parquet(args.sky)
    cat = build_catalog(sky, params, args.survey, args.images)
    done = render_images(cat, sky, params, args.survey, threads=max(int(args.threads), 1),
                         progress=not getattr(args, "no_progress", False))
    io.write_parquet(args.catalog, cat)
    log.info("%s: %d galaxies catalogued, %d images rendered, %d already present -> %s",
             args.survey, len(cat), done["rendered"], done["skipped"], args.catalog)
    return done


# ------------------------------------------------------------------------------------------- figure
def vote_fraction(df: pd.DataFrame, tree: DecisionTree, question: str, answers: Sequence[str]) -> np.ndarray:
    """Fraction of a question's votes given to any of ``answers`` (NaN when nobody was asked)."""
    q = tree.question(question)
    k = sum(df[q.column(a)].to_numpy(float) for a in answers)
    n = df[q.total_column].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, k / np.maximum(n, 1), np.nan)


def morphology_classes(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Truth classes to show: masks over the catalog rows."""
    pre = catalog.TRUTH_PREFIX
    t = {c[len(pre):]: df[c].to_numpy() for c in df.columns if c.startswith(pre)}
    clean = (t["artifact"] == "none") & (t["disturbance"] < 0.3)
    disk = t["morphology"] == "disk"
    face = t["inclination_deg"] < 55
    return {
        "smooth": clean & ~disk,
        "disk, unbarred": clean & disk & face & (t["bar_strength"] == 0) & (t["arm_amplitude"] > 0.4),
        "barred": clean & disk & face & (t["bar_strength"] > 0.5),
        "edge-on disk": clean & disk & (t["inclination_deg"] > 80),
        "merger / disturbed": (t["artifact"] == "none") & (t["disturbance"] > 0.5),
        "artifact": t["artifact"] != "none",
    }


def _class_fraction(df: pd.DataFrame, tree: DecisionTree, cls: str) -> tuple[str, np.ndarray]:
    gz2 = tree.name == "gz2"
    if cls in ("disk, unbarred", "barred"):
        return "bar", vote_fraction(df, tree, "bar", ["yes"] if gz2 else ["strong", "weak"])
    if cls == "edge-on disk":
        return "edge-on", vote_fraction(df, tree, "disk-edge-on", ["yes"])
    if cls == "merger / disturbed":
        if gz2:
            return "odd", vote_fraction(df, tree, "something-odd", ["yes"])
        return "merger", vote_fraction(df, tree, "merging", ["major-disturbance", "merger"])
    if cls == "artifact":
        return "artifact", vote_fraction(df, tree, "smooth-or-featured", ["artifact"])
    return "round", vote_fraction(df, tree, "how-rounded", ["completely-round" if gz2 else "round"])


def example_figure(df: pd.DataFrame, per_class: int = 4) -> Any:
    """Grid: one row per morphology class, columns = examples (the best resolved first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    tree = catalog.validate(df)
    classes = morphology_classes(df)
    smooth = vote_fraction(df, tree, "smooth-or-featured", ["smooth"])
    featured = vote_fraction(df, tree, "smooth-or-featured", ["featured-or-disk"])
    size = df[f"{catalog.TRUTH_PREFIX}petro_r90_arcsec"].to_numpy()
    fig, axes = plt.subplots(len(classes), per_class, figsize=(2.6 * per_class, 2.9 * len(classes)),
                             squeeze=False)
    for row, (cls, mask) in enumerate(classes.items()):
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(-size[idx], kind="stable")][: max(per_class * 3, per_class)]
        pick = idx[np.linspace(0, len(idx) - 1, per_class).astype(int)] if len(idx) >= per_class else idx
        label, frac = _class_fraction(df, tree, cls)
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(cls, fontsize=11)
            if col >= len(pick):
                ax.set_frame_on(False)
                continue
            i = pick[col]
            with Image.open(df["file_loc"].iloc[i]) as im:
                ax.imshow(np.asarray(im.convert("RGB")))
            ax.set_title(f"smooth {smooth[i]:.2f}  feat {featured[i]:.2f}\n{label} {frac[i]:.2f}", fontsize=9)
    survey = df["survey"].iloc[0] if len(df) else "?"
    fig.suptitle(f"Simulated {survey} images ({tree.name} tree): truth class per row,"
                 " volunteer vote fractions", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return fig


def run_figure(args: argparse.Namespace) -> None:
    df = catalog.load(args.catalog)
    io.save_figure(example_figure(df), args.out, dpi=110)
    log.info("example figure -> %s", args.out)


# ---------------------------------------------------------------------------------------------- CLI
def run(args: argparse.Namespace) -> Any:
    return {"sky": run_sky, "survey": run_survey, "figure": run_figure}[args.what](args)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate a sky patch, survey images and volunteer votes")
    what = p.add_subparsers(dest="what", required=True, metavar="WHAT")

    s = what.add_parser("sky", help="hidden truth population of the sky patch")
    config.add_params_argument(s)
    s.add_argument("--out", required=True, help="sky parquet to write")

    v = what.add_parser("survey", help="one survey: catalog, images and votes")
    config.add_params_argument(v)
    v.add_argument("--survey", required=True, help="survey name in simulate.surveys")
    v.add_argument("--sky", required=True, help="sky parquet from `simulate sky`")
    v.add_argument("--images", required=True,
                   help="folder for <id_str>.jpg or .png (simulate.surveys.<survey>.image_format)")
    v.add_argument("--catalog", required=True, help="catalog parquet to write")
    config.add_threads_argument(v, "rendering")
    v.add_argument("--no-progress", action="store_true", help="no progress bar")

    f = what.add_parser("figure", help="example images per morphology class")
    f.add_argument("--catalog", required=True)
    f.add_argument("--out", required=True)
    for q in (s, v, f):
        q.set_defaults(func=run)
    p.set_defaults(func=run)
