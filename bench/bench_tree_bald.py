"""Benchmark tree BALD (the posterior catalog's mutual_information) against the prediction it is added to.

    .venv/bin/python bench/bench_tree_bald.py [--galaxies 512] [--passes 30] [--votes 40]

For each decision tree (GZ2, GZ DECaLS DR5): :func:`gzmorph.acquisition.tree_mutual_information` on
``--galaxies`` x ``--passes`` concentrations shaped like a trained model's (1 + 100 sigmoid of a per-galaxy
logit plus per-pass dropout noise), with N = ``--votes``: wall time and galaxies/s.  Then, in the same run,
the cost it is added to: MC-dropout passes of the whole-tree network (64 px input, the default) on the same
number of galaxies, and the ratio BALD / prediction (the share of time the column adds to ``predict --tree``).
Single-threaded BLAS so figures do not depend on cores; TensorFlow uses its defaults.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time  # noqa: E402

import numpy as np  # noqa: E402


def concentrations(galaxies: int, passes: int, answers: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (galaxies, 1, answers)) + rng.normal(0, 0.3, (galaxies, passes, answers))
    return 1 + 100 / (1 + np.exp(-logits))


def time_bald(tree, galaxies: int, passes: int, votes: int) -> float:
    from gzmorph.acquisition import tree_mutual_information

    alpha = concentrations(galaxies, passes, tree.n_answers())
    start = time.perf_counter()
    tree_mutual_information(alpha, tree, votes)
    return time.perf_counter() - start


def time_prediction(tree, galaxies: int, passes: int, input_size: int = 64, resolution: int = 128) -> float:
    import tensorflow as tf

    from gzmorph.model import build_model

    model = build_model(input_size=resolution, output_size=input_size, crop_mode="central", crop_zoom=(1.7, 1.9),
                        dropout_rate=0.5, concentrations=tree.n_answers(), seed=0)
    images = tf.constant(np.random.default_rng(0).integers(0, 255, (galaxies, resolution, resolution, 3),
                                                           dtype=np.uint8))
    step = tf.function(lambda x: model(x, training=True))
    step(images[:8])  # trace
    start = time.perf_counter()
    for _ in range(passes):
        step(images)
    return time.perf_counter() - start


def main() -> None:
    from gzmorph.tree import get_tree

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--galaxies", type=int, default=512)
    ap.add_argument("--passes", type=int, default=30)
    ap.add_argument("--votes", type=int, default=40)
    args = ap.parse_args()
    print(f"{'tree':<12}{'questions':>10}{'answers':>8}{'BALD s':>9}{'galaxies/s':>12}{'predict s':>11}{'ratio':>7}")
    for name in ("gz2", "decals-dr5"):
        tree = get_tree(name)
        bald = time_bald(tree, args.galaxies, args.passes, args.votes)
        predict = time_prediction(tree, args.galaxies, args.passes)
        print(f"{name:<12}{len(tree.questions):>10}{tree.n_answers():>8}{bald:>9.2f}{args.galaxies / bald:>12.0f}"
              f"{predict:>11.2f}{bald / predict:>7.2f}")


if __name__ == "__main__":
    main()
