"""Benchmark BALD mutual information (eq. 24): vectorised vs a per-galaxy loop.

    .venv/bin/python bench/bench_acquisition.py [--galaxies 1000000] [--passes 30] [--n 40] [--loop-galaxies 2000]

(a) :func:`gzmorph.acquisition.mutual_information` on ``--galaxies`` x ``--passes`` rho drawn
    from Beta(2, 2) with N = ``--n``: wall time, galaxies/s, and peak extra memory during the
    call (tracemalloc peak of numpy allocations, and peak-RSS growth via ru_maxrss; the rho
    input itself is allocated before and not counted).
(b) The straightforward baseline: a Python loop over galaxies, each doing
    scipy.stats.binom.pmf for its [T, N + 1] grid, the mixture's entropy and the mean per-pass
    entropy.  Timed on the first ``--loop-galaxies`` galaxies and scaled per galaxy; both are
    checked to agree there.  Printed: both throughputs and the speed-up ratio (goal >= 100x).

Single-threaded BLAS (OPENBLAS_NUM_THREADS=1 unless set) so figures do not depend on cores.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import resource  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402
from scipy.special import xlogy  # noqa: E402
from scipy.stats import binom  # noqa: E402

from gzmorph.acquisition import mutual_information  # noqa: E402


def loop_mutual_information(rho: np.ndarray, n: int) -> np.ndarray:
    """Baseline: eq. 24 one galaxy at a time with scipy.stats.binom."""
    k = np.arange(n + 1)
    out = np.empty(rho.shape[0])
    for i in range(rho.shape[0]):
        pmf = binom.pmf(k[None, :], n, rho[i][:, None])  # [T, N + 1]
        mean_pmf = pmf.mean(axis=0)
        out[i] = -xlogy(mean_pmf, mean_pmf).sum() + xlogy(pmf, pmf).sum(axis=1).mean()
    return out


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--galaxies", type=int, default=1_000_000)
    parser.add_argument("--passes", type=int, default=30)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--loop-galaxies", type=int, default=2000)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    rho = rng.beta(2.0, 2.0, size=(args.galaxies, args.passes))
    print(
        f"rho: {args.galaxies} galaxies x T = {args.passes} passes, N = {args.n} ({rho.nbytes / 2**20:.0f} MiB input)"
    )

    mutual_information(rho[:10_000], args.n)  # warm-up (imports, first BLAS calls)

    rss_before = max_rss_mib()
    start = time.perf_counter()
    mi = mutual_information(rho, args.n)
    vectorised_s = time.perf_counter() - start
    rss_growth = max_rss_mib() - rss_before

    # Separate run for tracemalloc, whose hooks cost a little time.
    tracemalloc.start()
    mutual_information(rho, args.n)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    vectorised_rate = args.galaxies / vectorised_s
    print(
        f"vectorised: {vectorised_s:.2f} s, {vectorised_rate:,.0f} galaxies/s ({1e6 / vectorised_rate:.2f} us/galaxy)"
    )
    print(
        f"  peak extra memory: tracemalloc {traced_peak / 2**20:.1f} MiB "
        f"(of which the [G] output {mi.nbytes / 2**20:.1f} MiB); peak-RSS growth {rss_growth:.1f} MiB"
    )
    print(f"  MI range [{mi.min():.3g}, {mi.max():.3g}] nats, min >= -1e-12: {bool(mi.min() >= -1e-12)}")

    subset = rho[: args.loop_galaxies]
    start = time.perf_counter()
    loop_mi = loop_mutual_information(subset, args.n)
    loop_s = time.perf_counter() - start
    loop_rate = args.loop_galaxies / loop_s
    print(
        f"per-galaxy loop (scipy.stats.binom): {loop_s:.2f} s for {args.loop_galaxies} galaxies, "
        f"{loop_rate:,.0f} galaxies/s ({1e6 / loop_rate:.1f} us/galaxy); "
        f"scaled to {args.galaxies} galaxies: {args.galaxies / loop_rate:.0f} s"
    )
    print(f"  max |vectorised - loop| on the subset: {np.abs(mi[: args.loop_galaxies] - loop_mi).max():.1e} nats")
    print(f"speed-up (vectorised / loop, per galaxy): {vectorised_rate / loop_rate:.0f}x (goal >= 100x)")


if __name__ == "__main__":
    main()
