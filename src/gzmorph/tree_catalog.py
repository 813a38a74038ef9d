"""The posterior catalog of a whole-tree model, in the layout of the GZ DECaLS automated catalog.

Walmsley et al. (2021) publish ``gz_decals_auto_posteriors``: per galaxy its identifiers and coordinates, then
per answer ``<q>_<a>_concentration`` (the Dirichlet concentrations of each MC-dropout model, a list), per answer
``<q>_<a>_fraction`` (the expected vote fraction) and per question ``<q>_proportion_volunteers_asked``.
``gzmorph predict --tree`` writes ``results/posteriors/<survey>.parquet`` in that layout:

    id_str                                 string         the survey's id (GZ DECaLS: iauname; GZ2: dr7objid)
    ra, dec                                float64        degrees; NaN when the input gave none
    <q>_<a>_concentration                  list<float32>  alpha of the answer in each of the T MC passes
    <q>_<a>_fraction                       float32        E[vote fraction] = mean over T of alpha_a / sum_q alpha
    <q>_proportion_volunteers_asked        float32        expected share of volunteers asked q (below)
    <q>_<a>_concentration_deterministic    float32        alpha of the answer without dropout or augmentation
    <q>_mutual_information                 float32        BALD of q: I[k, w] of N votes for q, in nats (below)
    mutual_information                     float32        tree BALD: sum over q of proportion asked x the above

with key-value metadata ``tree, passes, augmentations, dropout_masks, precision, model, source, split,
expected_votes``.  Answers are in the tree's
``answer_columns`` order.  The deterministic concentrations are not in the published catalog: gzmorph adds
them, as ``rho_point`` in the per-question predictions, for the deterministic baseline of the evaluation.  The
proportion asked is 1 for a question asked of everyone; a question asked after any of the (question, answer)
pairs in ``Question.asked_after`` gets the sum over those pairs of asked(parent) x fraction(parent, answer): the
chance that a volunteer reaches it, if every volunteer answered like the expected vote fractions.  It says how
much a question's prediction matters (a bar posterior for a smooth elliptical is about a question few would be
asked).

The mutual information columns are the acquisition function of active learning for the whole tree (Walmsley
et al. 2021; :func:`gzmorph.acquisition.tree_mutual_information`): how much N = ``predict.expected_votes``
volunteers' answers would tell the network, per question and summed over the tree weighted by the proportion
asked.  Sorting by ``mutual_information`` gives the galaxies to show volunteers next.

:func:`load_concentrations` reads the file back as (ids, alpha [galaxies, T, answers]) for evaluation,
:func:`load_deterministic` the deterministic concentrations [galaxies, answers].
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gzmorph.config import UserError
from gzmorph.posterior import proportion_asked, tree_expected_fractions

if TYPE_CHECKING:
    import pyarrow as pa

    from gzmorph.tree import DecisionTree

CONCENTRATION = "_concentration"
DETERMINISTIC = "_concentration_deterministic"
FRACTION = "_fraction"
ASKED = "_proportion_volunteers_asked"
MUTUAL_INFORMATION = "mutual_information"
ID_COLUMNS = ("id_str", "ra", "dec")


def concentration_columns(tree: DecisionTree) -> list[str]:
    return [c + CONCENTRATION for c in tree.answer_columns]


def fraction_columns(tree: DecisionTree) -> list[str]:
    return [c + FRACTION for c in tree.answer_columns]


def asked_columns(tree: DecisionTree) -> list[str]:
    return [q.name + ASKED for q in tree.questions]


def id_strings(ids: Any) -> np.ndarray:
    """Ids as str (TensorFlow gives the shards' ids as utf-8 bytes)."""
    return np.array([i.decode() if isinstance(i, bytes) else str(i) for i in ids], dtype=object)


def deterministic_columns(tree: DecisionTree) -> list[str]:
    return [c + DETERMINISTIC for c in tree.answer_columns]


def mutual_information_columns(tree: DecisionTree) -> list[str]:
    """Per question BALD, then the tree BALD."""
    return [f"{q.name}_{MUTUAL_INFORMATION}" for q in tree.questions] + [MUTUAL_INFORMATION]


def catalog_schema(tree: DecisionTree, metadata: Mapping[str, Any] | None = None) -> pa.Schema:
    import pyarrow as pa

    fields = [pa.field("id_str", pa.string()), pa.field("ra", pa.float64()), pa.field("dec", pa.float64())]
    fields += [pa.field(c, pa.list_(pa.float32())) for c in concentration_columns(tree)]
    fields += [pa.field(c, pa.float32()) for c in fraction_columns(tree)]
    fields += [pa.field(c, pa.float32()) for c in asked_columns(tree)]
    fields += [pa.field(c, pa.float32()) for c in deterministic_columns(tree)]
    fields += [pa.field(c, pa.float32()) for c in mutual_information_columns(tree)]
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return pa.schema(fields, metadata={"tree": tree.name, **meta})


def catalog_table(ids: np.ndarray, ra: np.ndarray, dec: np.ndarray, alpha: np.ndarray, alpha_point: np.ndarray,
                  tree: DecisionTree, schema: pa.Schema, expected_votes: int) -> pa.Table:
    """One chunk of the catalog: ids [G] (str or bytes), ra/dec [G], concentrations [G, T, A] of the MC passes
    and [G, A] of the deterministic pass; ``expected_votes``: N of the mutual information."""
    import pyarrow as pa

    from gzmorph.acquisition import tree_mutual_information

    n, passes, n_answers = alpha.shape
    if n_answers != tree.n_answers() or alpha_point.shape != (n, n_answers):
        raise ValueError(f"concentrations of shapes {alpha.shape} and {alpha_point.shape} do not fit "
                         f"{n} galaxies x the {tree.n_answers()} answers of the {tree.name} tree")
    fractions = tree_expected_fractions(alpha, tree)
    asked = proportion_asked(fractions, tree)
    offsets = pa.array(np.arange(0, n * passes + 1, passes, dtype=np.int32))
    per_answer = np.ascontiguousarray(np.moveaxis(alpha.astype(np.float32, copy=False), 2, 0))  # [A, G, T]
    arrays = [pa.array(id_strings(ids), type=pa.string()), pa.array(np.asarray(ra, np.float64)),
              pa.array(np.asarray(dec, np.float64))]
    arrays += [pa.ListArray.from_arrays(offsets, pa.array(per_answer[a].ravel())) for a in range(n_answers)]
    arrays += [pa.array(fractions[:, a].astype(np.float32)) for a in range(n_answers)]
    arrays += [pa.array(asked[:, j].astype(np.float32)) for j in range(asked.shape[1])]
    arrays += [pa.array(np.asarray(alpha_point[:, a], np.float32)) for a in range(n_answers)]
    bald, per_question = tree_mutual_information(alpha, tree, expected_votes, per_question=True, asked=asked)
    arrays += [pa.array(per_question[:, j].astype(np.float32)) for j in range(per_question.shape[1])]
    arrays += [pa.array(bald.astype(np.float32))]
    return pa.Table.from_arrays(arrays, schema=schema)


def load_concentrations(path: str | Path, tree: DecisionTree) -> tuple[np.ndarray, np.ndarray]:
    """(ids [G] str, alpha float32 [G, T, answers] in ``tree.answer_columns`` order) of a posterior catalog.

    Bad input stops with one line naming file, column and row.
    """
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such posterior catalog") from None
    columns = concentration_columns(tree)
    missing = [c for c in ("id_str", *columns) if c not in schema.names]
    if missing:
        raise UserError(f"{path}: not a posterior catalog of tree {tree.name!r} (missing columns {missing[:3]}"
                        f"{' ...' if len(missing) > 3 else ''})")
    table = pq.read_table(path, columns=["id_str", *columns])
    g = len(table)
    values = [table.column(c).combine_chunks().flatten().to_numpy(zero_copy_only=False) for c in columns]
    passes = len(values[0]) // max(g, 1)
    for column, v in zip(columns, values, strict=True):
        if passes == 0 or len(v) != g * passes:
            raise UserError(f"{path}: column {column!r}: concentration lists are not all of length {passes}")
    alpha = np.stack([v.reshape(g, passes) for v in values], axis=-1).astype(np.float32, copy=False)
    bad = ~np.isfinite(alpha) | (alpha <= 0)
    if bad.any():
        row, _, j = np.argwhere(bad)[0]
        raise UserError(f"{path}: column {columns[j]!r}, row {row}: concentrations {alpha[row, :, j]} are not > 0")
    return table.column("id_str").to_numpy(zero_copy_only=False).astype(str), alpha


def load_deterministic(path: str | Path, tree: DecisionTree) -> np.ndarray | None:
    """[G, answers] concentrations of the network without dropout, if the catalog has
    ``<q>_<a>_concentration_deterministic`` for every answer (catalogs of older versions do not); else None."""
    import pyarrow.parquet as pq

    columns = deterministic_columns(tree)
    if not set(columns) <= set(pq.read_schema(path).names):
        return None
    table = pq.read_table(path, columns=columns)
    return np.column_stack([table.column(c).to_numpy().astype(np.float32) for c in columns])
