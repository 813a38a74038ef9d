"""BALD acquisition for active learning (Walmsley et al. 2020, §3.2-3.4).

BALD picks the unlabelled galaxies whose labels would tell us most about the
network weights: the mutual information between the vote count k and the
weights w.  With T MC-dropout passes rho_t and N expected volunteers, eq. 24 is

    I[k, w] = H[<Bin(k | rho_t, N)>_t] - <H[Bin(k | rho_t, N)]>_t

with every entropy summed exactly over k = 0..N, in nats (natural log).

Two exact rewrites make this cheap without changing the sum (no sampling, no
truncation of k):

* the pass-averaged entropy needs no per-pass pmf.  With log Bin = log C(N, k)
  + k log rho + (N - k) log(1 - rho) and E[k] = N rho,
  H[Bin(k | rho, N)] = N h(rho) - E[log C(N, k)], where h is the Bernoulli
  entropy, and averaging over passes turns E[log C] into sum_k pbar_k log C(N, k)
  with pbar the mixture pmf (eq. 10).  So only pbar is needed.
* pbar_k = C(N, k) / T * sum_t rho_t^k (1 - rho_t)^(N - k).  Splitting
  k = B m + j, rho^k (1 - rho)^(N - k) = X_m * Y_j with
  X_m = exp(B m log rho + (N - B m) log(1 - rho)) and Y_j = u^j, u = rho / (1 - rho),
  so the sum over passes is a small matrix product per galaxy, [M, T] @ [T, B]
  (B ~ M ~ sqrt(N + 1)), and each pass needs M + 1 exponentials instead of N + 1.

Everything is vectorised over galaxies and chunked over them to bound memory;
galaxies with different N are grouped by N (a loop over distinct N values, not
over galaxies).  For N > _MAX_N_FACTORISED the factorisation could lose
precision to underflow, so pbar comes from the log-space
:func:`gzmorph.posterior.mixture_pmf` instead.

Tree BALD (a whole-tree model, Walmsley et al. 2021) scores a galaxy by the same mutual information per
question, now between the count vector k of that question's answers and the weights, under the T-mixture
of Dirichlet-multinomials DM(k | alpha_t, N) (:func:`dm_mutual_information`), and sums the questions, each
weighted by the expected proportion of volunteers asked it (:func:`tree_mutual_information`).  The sum over
count vectors is exact (enumerated) while the support C(N + A - 1, A - 1) stays small -- always for two
answers, where it is the beta-binomial mixture's MI, and for three answers with N ~ 40 (861 vectors) -- and
is otherwise a Monte-Carlo average with a fixed seed (see :func:`dm_mutual_information`).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations
from math import comb
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import gammaln, logsumexp

from gzmorph.posterior import (
    mixture_pmf,
    proportion_asked,
    tree_expected_fractions,
    validate_concentrations,
    validate_passes,
)

if TYPE_CHECKING:
    from gzmorph.tree import DecisionTree

# Memory for the float64 work arrays of one chunk of galaxies.  Small enough to
# stay in cache: measured faster than 64 MiB chunks, and memory stays bounded.
_CHUNK_BYTES = 4 * 2**20

# log(0) is replaced by -_LOG_FLOOR so that 0 * log(0) terms stay finite; a power of
# two keeps integer multiples exact, and exp(-_LOG_FLOOR) underflows to exactly 0,
# so rho = 0 gives an exact delta pmf.
_LOG_FLOOR = 2.0**14

# Up to this N, C(N, k) <= 1e29 and Y_j <= exp(36.7 (B - 1)) stays finite (36.7 = the
# largest logit of a float64 rho < 1), so the factorised pmf loses nothing above
# ~1e-100 to underflow.  Galaxy Zoo questions have N ~ 40.
_MAX_N_FACTORISED = 100


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy -sum p log p in nats along ``axis`` (0 log 0 = 0)."""
    # log of max(p, tiny) instead of scipy's xlogy: same result (p = 0 terms are 0 * finite), several times faster.
    return -np.sum(p * np.log(np.maximum(p, np.finfo(np.float64).tiny)), axis=axis)


def _clipped_logs(rho: np.ndarray) -> np.ndarray:
    """[2, ...] = log rho, log(1 - rho), each floored at -_LOG_FLOOR so that 0 * log 0 gives 0."""
    logs = np.empty((2, *rho.shape))
    with np.errstate(divide="ignore"):
        np.log(rho, out=logs[0])
        np.log1p(-rho, out=logs[1])
    return np.maximum(logs, -_LOG_FLOOR, out=logs)


def bernoulli_entropy(rho: np.ndarray, logs: np.ndarray | None = None) -> np.ndarray:
    """h(rho) = -rho log rho - (1 - rho) log(1 - rho) in nats, exactly 0 at rho in {0, 1}.

    logs: _clipped_logs(rho), if already computed.
    """
    logs = _clipped_logs(rho) if logs is None else logs
    return -(rho * logs[0] + (1.0 - rho) * logs[1])


def log_binomial_coefficients(n: int) -> np.ndarray:
    """log C(n, k) for k = 0..n; [n + 1]."""
    k = np.arange(n + 1, dtype=np.float64)
    return gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(n - k + 1.0)


def _block_shape(n: int) -> tuple[int, int]:
    """(M, B) with M * B >= n + 1 and M + B near minimal: k = B m + j, m < M, j < B."""
    b = int(np.ceil(np.sqrt(n + 1)))
    return -(-(n + 1) // b), b


def _mixture_pmf_factorised(rho: np.ndarray, n: int, log_comb: np.ndarray, logs: np.ndarray) -> np.ndarray:
    """Eq. 10 mixture pmf for one chunk with a common N: rho [g, T] -> pbar [g, N + 1].

    logs = _clipped_logs(rho).  See the module docstring for the X_m * Y_j
    factorisation.  Requires N <= _MAX_N_FACTORISED.
    """
    g, t = rho.shape
    m_blocks, b_width = _block_shape(n)
    log_rho, log_1m_rho = logs.reshape(2, g * t)
    # Rows 0..M-1: X_m = exp(B m log rho + (N - B m) log(1 - rho)), exponents <= 0 so no overflow.
    # Rows M..M+B-1: Y_j = u^j with u = rho / (1 - rho), by repeated multiplication (cheaper than exp).
    # Elementwise loops over these M + B rows rather than a BLAS product, whose FMA use varies with the
    # chunk size: results are then independent of chunking.
    z = np.empty((m_blocks + b_width, g * t))
    for m in range(m_blocks):
        np.multiply(log_rho, b_width * m, out=z[m])
        z[m] += (n - b_width * m) * log_1m_rho
    np.exp(z[:m_blocks], out=z[:m_blocks])
    z[m_blocks] = 1.0
    if b_width > 1:
        u = z[m_blocks + 1]
        with np.errstate(over="ignore"):  # u = inf only where rho == 1, fixed below
            np.exp(np.subtract(log_rho, log_1m_rho, out=u), out=u)
            for j in range(2, b_width):
                np.multiply(z[m_blocks + j - 1], u, out=z[m_blocks + j])
    z = z.reshape(m_blocks + b_width, g, t)
    ones = rho == 1.0
    if ones.any():  # delta at k = N: X_m = [m == N // B], Y_j = [j == N % B]
        onehot = np.zeros(m_blocks + b_width)
        onehot[n // b_width] = 1.0
        onehot[m_blocks + n % b_width] = 1.0
        z[:, ones] = onehot[:, None]
    # sum_t X[g, t, m] Y[g, t, j]: one small BLAS product per galaxy, [M, T] @ [T, B].
    s = np.matmul(z[:m_blocks].transpose(1, 0, 2), z[m_blocks:].transpose(1, 2, 0))
    return s.reshape(g, m_blocks * b_width)[:, : n + 1] * (np.exp(log_comb) / t)


def _mutual_information_common_n(rho: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Eq. 24 for one chunk whose galaxies share N: rho [g, T], n [g] (all equal) -> [g] nats."""
    rho, n = validate_passes(rho, n)  # per chunk, so its [g, T] temporaries stay chunk-sized
    if n.size == 0 or n[0] == 0:  # N = 0: nothing to observe, the pmf is a delta at k = 0
        return np.zeros(rho.shape[0])
    n = int(n[0])
    log_comb = log_binomial_coefficients(n)
    logs = _clipped_logs(rho)
    if n <= _MAX_N_FACTORISED:
        pbar = _mixture_pmf_factorised(rho, n, log_comb, logs)
    else:
        pbar = mixture_pmf(rho, np.full(rho.shape[0], n))
    # Renormalise away round-off in sum_k pbar_k: it would otherwise leak (sum - 1) * N h(rho) into the
    # difference below, ~1e-11 for N = 150 where passes agree; exact arithmetic gives sum = 1 anyway.
    pbar /= pbar.sum(axis=1, keepdims=True)
    # <H[Bin(k | rho_t, N)]>_t = N <h(rho_t)>_t - sum_k pbar_k log C(N, k)  (exact, see module docstring)
    mean_pass_entropy = n * bernoulli_entropy(rho, logs).mean(axis=1) - np.sum(pbar * log_comb, axis=1)
    return entropy(pbar) - mean_pass_entropy


def _default_chunk_size(n_passes: int, n: int) -> int:
    """Galaxies per chunk so the float64 work arrays fit in _CHUNK_BYTES."""
    m_blocks, b_width = _block_shape(n)
    # per galaxy: exponent/exp array (M + B) T; logs, entropy temporaries, mask ~6 T; product M B; pbar ~3 (N + 1)
    floats = (m_blocks + b_width + 6) * n_passes + m_blocks * b_width + 3 * (n + 1)
    if n > _MAX_N_FACTORISED:  # mixture_pmf chunks itself; keep our pbar and [g, T] temporaries small
        floats = 6 * n_passes + 3 * (n + 1)
    return max(1, _CHUNK_BYTES // (8 * floats))


def mutual_information(rho: np.ndarray, n: int | np.ndarray, chunk_size: int | None = None) -> np.ndarray:
    """BALD acquisition score, eq. 24: mutual information between votes k and weights, in nats.

    rho: [G, T] predicted typical vote fractions, T MC-dropout passes per galaxy,
    each in [0, 1] (0 and 1 allowed: the pmf is then a delta).
    n: expected number of volunteers answering the question (eq. 21's <N>), a
    non-negative integer for all galaxies or an integer array [G].  N = 0 gives 0.
    chunk_size: galaxies per chunk; default from a ~4 MiB float64 work budget.

    Returns [G] float64, >= 0 up to round-off (~1e-13); 0 when all passes agree.
    """
    rho = np.asarray(rho, dtype=np.float64)
    if rho.ndim != 2 or rho.shape[1] == 0:
        raise ValueError(f"rho must be [galaxies, passes >= 1], got shape {rho.shape}")
    n_arr = np.asarray(n)
    if n_arr.ndim == 0:
        n_arr = np.broadcast_to(n_arr, rho.shape[:1])  # a view: no [G] copy
    if n_arr.shape != rho.shape[:1]:
        raise ValueError(f"n must be a scalar or [galaxies] = [{rho.shape[0]}], got shape {n_arr.shape}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")

    out = np.empty(rho.shape[0])
    # Group galaxies by N (usually one group); loop over distinct N and chunks, never over galaxies.
    # Values are validated per chunk (posterior.validate_passes), so invalid N fail there.
    common = np.ndim(n) == 0 or n_arr.size == 0 or bool(np.all(n_arr == n_arr[0]))
    values = n_arr[:1] if common else np.unique(n_arr)
    for value in values:
        index = None if common else np.flatnonzero(n_arr == value)
        count = rho.shape[0] if index is None else index.size
        n_guess = int(value) if np.isfinite(value) and 0 <= value <= 10**6 else 0  # sizes chunks; bad N fail below
        step = chunk_size or _default_chunk_size(rho.shape[1], n_guess)
        for start in range(0, count, step):
            # common N: slices, no copy of rho; otherwise gather this chunk's galaxies only
            sel = slice(start, start + step) if index is None else index[start : start + step]
            out[sel] = _mutual_information_common_n(rho[sel], n_arr[sel])
    return out


def expected_votes(total_votes: np.ndarray, min_total_votes: int = 0) -> int:
    """<N> for eq. 21: mean total votes over labelled galaxies with >= min_total_votes, rounded to nearest.

    NaN entries (unlabelled galaxies) are ignored.  Raises ValueError when no galaxy passes the cut.
    """
    total = np.asarray(total_votes, dtype=np.float64).ravel()
    total = total[np.isfinite(total)]
    if np.any(total < 0):
        raise ValueError("total_votes must be non-negative")
    labelled = total[total >= min_total_votes]
    if labelled.size == 0:
        raise ValueError(f"no galaxies with total_votes >= {min_total_votes} to estimate the expected N from")
    return int(np.rint(labelled.mean()))


def acquire(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k highest scores, best first; ties go to the lower index.

    exclude: indices (int array) or a boolean mask [G] of galaxies never to return
    (e.g. already labelled).  Returns fewer than k indices when fewer remain.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    keep = np.ones(scores.size, dtype=bool)
    if exclude is not None:
        exclude = np.asarray(exclude)
        if exclude.dtype == bool:
            if exclude.shape != scores.shape:
                raise ValueError(f"boolean exclude must have shape {scores.shape}, got {exclude.shape}")
            keep &= ~exclude
        else:
            keep[exclude.astype(np.int64)] = False
    candidates = np.flatnonzero(keep)
    # Stable sort on -score keeps ascending index order among equal scores.
    order = np.argsort(-scores[candidates], kind="stable")
    return candidates[order[:k]]


# ---------------------------------------------------------------------------------------------- tree BALD

# Largest number of count vectors C(N + A - 1, A - 1) summed exactly: three answers up to N = 61 (N ~ 40 in
# Galaxy Zoo, 861 vectors); four or more answers with N ~ 40 go to the Monte-Carlo estimate.
MAX_EXACT_SUPPORT = 2000
# Monte-Carlo draws of k per pass (T x this per galaxy): ~5 % mean relative error (see _dm_mi_monte_carlo).
MC_SAMPLES_PER_PASS = 32


def compositions(n: int, parts: int) -> np.ndarray:
    """Every count vector of ``n`` votes over ``parts`` answers, [C(n + parts - 1, parts - 1), parts] int64.

    Stars and bars: choose the parts - 1 bar positions among n + parts - 1 slots; in lexicographic order.
    """
    if parts < 1 or n < 0:
        raise ValueError(f"need parts >= 1 and n >= 0, got parts={parts}, n={n}")
    chosen = list(combinations(range(n + parts - 1), parts - 1))
    bars = np.array(chosen, dtype=np.int64).reshape(len(chosen), parts - 1)
    edges = np.concatenate([np.full((len(bars), 1), -1), bars, np.full((len(bars), 1), n + parts - 1)], axis=1)
    return np.diff(edges, axis=1) - 1


def _log_gamma_tables(alpha: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pass the k-independent part of log DM and, per answer, log Gamma(j + alpha_a) - log Gamma(alpha_a).

    alpha [g, T, A] -> (base [g, T], table [g, T, A, n + 1]); log DM(k) = base + log N! - sum_a log k_a!
    + sum_a table[..., a, k_a].  One lgamma per (answer, j) instead of one per (answer, count vector).
    """
    a0 = alpha.sum(axis=2)
    base = gammaln(a0) - gammaln(n + a0)
    j = np.arange(n + 1, dtype=np.float64)
    table = gammaln(alpha[..., None] + j) - gammaln(alpha)[..., None]
    return base, table


def _dm_mi_exact(alpha: np.ndarray, n: int, support: np.ndarray) -> np.ndarray:
    """MI by summing over every count vector: alpha [g, T, A], support [S, A] -> [g]."""
    base, table = _log_gamma_tables(alpha, n)
    log_p = base[..., None] + (gammaln(n + 1.0) - gammaln(support + 1.0).sum(axis=1))  # [g, T, S]
    for a in range(alpha.shape[2]):
        log_p += table[:, :, a, support[:, a]]
    p = np.exp(log_p)
    pbar = p.mean(axis=1)
    mean_pass_entropy = -np.sum(p * log_p, axis=2).mean(axis=1)
    return entropy(pbar) - mean_pass_entropy


def _dm_mi_monte_carlo(alpha: np.ndarray, n: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Monte-Carlo MI from ``samples`` draws of k out of each pass's DM: alpha [g, T, A] -> [g].

    With d = log(pbar(k) / DM_t(k)) for k drawn from pass t, MI = E[-d] (the log-ratio form, 0 up to round-off
    when the passes agree).  c = exp(d) - 1 has mean exactly 0 (sum_k pbar(k) = 1), and -d ~ -c + c^2/2
    when the passes nearly agree, so c is a control variate: the estimate is mean(-d) - beta mean(c), beta
    the per-galaxy regression coefficient clipped to [-1, 0] (heavy tails of c, when passes disagree
    strongly, would otherwise make a noisy beta worse than none).  Measured against exact sums
    (tests/test_acquisition.py): ~5 % mean relative error over a wide range of disagreement; without the
    control variate 28-74 % where the MI is small (~0.005-0.02 nats).
    """
    g, t, a = alpha.shape
    rho = rng.standard_gamma(np.broadcast_to(alpha[:, :, None, :], (g, t, samples, a)))
    rho /= rho.sum(axis=3, keepdims=True)
    k = rng.multinomial(n, rho)  # [g, T(drawn from), S, A]
    base, table = _log_gamma_tables(alpha, n)
    rows, passes = np.arange(g)[:, None, None, None], np.arange(t)[None, None, None, :]
    log_p = base[:, None, None, :] + (gammaln(n + 1.0) - gammaln(k + 1.0).sum(axis=3))[..., None]  # [g, T, S, T']
    for j in range(a):
        log_p += table[rows, passes, j, k[..., j][..., None]]
    own = np.take_along_axis(log_p, np.arange(t)[None, :, None, None], axis=3)[..., 0]  # log DM_t(k) of its pass
    d = (logsumexp(log_p, axis=3) - np.log(t) - own).reshape(g, -1)
    r, c = -d, np.expm1(d)
    rc, cc = r - r.mean(axis=1, keepdims=True), c - c.mean(axis=1, keepdims=True)
    var = np.mean(cc**2, axis=1)
    beta = np.clip(np.mean(rc * cc, axis=1) / np.where(var > 0, var, 1.0), -1.0, 0.0)
    return r.mean(axis=1) - beta * c.mean(axis=1)


def dm_mutual_information(alpha: np.ndarray, n: int | np.ndarray, *, max_support: int = MAX_EXACT_SUPPORT,
                          samples: int = MC_SAMPLES_PER_PASS, seed: int = 0,
                          chunk_size: int | None = None) -> np.ndarray:
    """BALD for one question of a whole-tree model: I[k, w] under the T-mixture of DM(k | alpha_t, N), in nats.

    alpha: [G, T, A] concentrations (T MC-dropout passes, A answers); n: expected volunteers answering the
    question, a non-negative integer or [G] integers (N = 0 gives 0).  Exact, enumerating the count vectors
    (:func:`compositions`), while C(N + A - 1, A - 1) <= ``max_support``; beyond, a Monte-Carlo estimate with
    ``samples`` draws of k from each pass and ``numpy.random.default_rng(seed)`` (reproducible for the same
    inputs and chunks; 0 up to round-off when the passes agree).  Chunked over galaxies like
    :func:`mutual_information`.  Returns [G] float64.
    """
    alpha = validate_concentrations(alpha)
    g, t, a = alpha.shape
    n_arr = np.broadcast_to(np.asarray(n), (g,))
    if np.any(n_arr < 0) or np.any(n_arr != np.round(n_arr)):
        raise ValueError("n must be non-negative integers")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    rng = np.random.default_rng(seed)
    out = np.zeros(g)
    for value in np.unique(n_arr):
        value = int(value)
        index = np.flatnonzero(n_arr == value)
        if value == 0 or a == 1:  # nothing to observe: a single possible count vector
            continue
        exact = comb(value + a - 1, a - 1) <= max_support
        support = compositions(value, a) if exact else None
        # float64 temporaries per galaxy: [T, S] (~4 alive) or [T, samples, T] (~3 alive), plus the tables
        per_galaxy = t * (4 * len(support) if exact else 3 * samples * (t + a)) + 2 * t * a * (value + 1)
        step = chunk_size or max(1, _CHUNK_BYTES // (8 * per_galaxy))
        for start in range(0, index.size, step):
            sel = index[start : start + step]
            out[sel] = (_dm_mi_exact(alpha[sel], value, support) if exact
                        else _dm_mi_monte_carlo(alpha[sel], value, samples, rng))
    return out


def question_votes(tree: DecisionTree, n_votes: int | Mapping[str, int]) -> dict[str, int]:
    """Per question the volunteers who would answer it if asked: one number for all, or a {question: N} map."""
    if isinstance(n_votes, Mapping):
        missing = [q for q in tree.question_names if q not in n_votes]
        if missing:
            raise KeyError(f"expected votes missing for questions {missing} of tree {tree.name!r}")
        return {q: int(n_votes[q]) for q in tree.question_names}
    return dict.fromkeys(tree.question_names, int(n_votes))


def tree_mutual_information(alpha: np.ndarray, tree: DecisionTree, n_votes: int | Mapping[str, int], *,
                            per_question: bool = False, asked: np.ndarray | None = None,
                            **kwargs) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Tree BALD: sum over questions of p_asked(q) * I_q[k, w] (:func:`dm_mutual_information`), in nats.

    alpha: [G, T, answers of the tree] on ``tree.answer_columns``' axis; n_votes: the volunteers who would
    answer a question if asked (N of each question's DM), one int or per question.  p_asked is the expected
    proportion of volunteers asked (:func:`gzmorph.posterior.proportion_asked` of the mean fractions over
    passes): a question reached by few volunteers can teach the network little.  kwargs go to
    :func:`dm_mutual_information`.  ``asked`` [G, questions]: p_asked already computed by the caller (the
    posterior catalog has it).  Returns [G]; with ``per_question`` also the unweighted MI [G, questions].
    """
    alpha = validate_concentrations(alpha)
    weights = proportion_asked(tree_expected_fractions(alpha, tree), tree) if asked is None else asked
    votes = question_votes(tree, n_votes)
    mi = np.column_stack([dm_mutual_information(alpha[:, :, sl], votes[q], **kwargs)
                          for q, sl in tree.answer_slices.items()])
    score = np.sum(weights * mi, axis=1)
    return (score, mi) if per_question else score
