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

with key-value metadata ``tree, passes, model, source, split``.  Answers are in the tree's ``answer_columns``
order.  The proportion asked is 1 for a question asked of everyone; a question asked after any of the
(question, answer) pairs in ``Question.asked_after`` gets the sum over those pairs of asked(parent) x
fraction(parent, answer): the chance that a volunteer reaches it, if every volunteer answered like the expected
vote fractions.  It says how much a question's prediction matters (a bar posterior for a smooth elliptical is
about a question few would be asked).

:func:`load_concentrations` reads the file back as (ids, alpha [galaxies, T, answers]) for evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gzmorph.config import UserError

if TYPE_CHECKING:
    import pyarrow as pa

    from gzmorph.tree import DecisionTree

CONCENTRATION = "_concentration"
FRACTION = "_fraction"
ASKED = "_proportion_volunteers_asked"
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


def expected_fractions(alpha: np.ndarray, tree: DecisionTree) -> np.ndarray:
    """E[vote fraction] [G, A] from concentrations [G, T, A]: the mean over T of each pass's Dirichlet mean."""
    alpha = np.asarray(alpha, np.float64)
    means = np.empty_like(alpha)
    for s in tree.answer_slices.values():
        means[..., s] = alpha[..., s] / alpha[..., s].sum(axis=-1, keepdims=True)
    return means.mean(axis=1)


def proportion_asked(fractions: np.ndarray, tree: DecisionTree) -> np.ndarray:
    """Expected share of volunteers asked each question [G, Q] from expected fractions [G, A].

    Questions come in topological order, so every parent's share is known before its children's.
    """
    fractions = np.asarray(fractions, np.float64)
    question_index = {q.name: j for j, q in enumerate(tree.questions)}
    answer_index = {(q.name, a): tree.answer_slices[q.name].start + i
                    for q in tree.questions for i, a in enumerate(q.answer_names)}
    asked = np.ones((len(fractions), len(tree.questions)))
    for j, q in enumerate(tree.questions):
        if q.asked_after:
            asked[:, j] = sum(asked[:, question_index[pq]] * fractions[:, answer_index[pq, pa]]
                              for pq, pa in q.asked_after)
    return asked


def catalog_schema(tree: DecisionTree, metadata: Mapping[str, Any] | None = None) -> pa.Schema:
    import pyarrow as pa

    fields = [pa.field("id_str", pa.string()), pa.field("ra", pa.float64()), pa.field("dec", pa.float64())]
    fields += [pa.field(c, pa.list_(pa.float32())) for c in concentration_columns(tree)]
    fields += [pa.field(c, pa.float32()) for c in fraction_columns(tree)]
    fields += [pa.field(c, pa.float32()) for c in asked_columns(tree)]
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return pa.schema(fields, metadata={"tree": tree.name, **meta})


def catalog_table(ids: np.ndarray, ra: np.ndarray, dec: np.ndarray, alpha: np.ndarray, tree: DecisionTree,
                  schema: pa.Schema) -> pa.Table:
    """One chunk of the catalog: ids [G] (str or bytes), ra/dec [G], concentrations [G, T, A]."""
    import pyarrow as pa

    n, passes, n_answers = alpha.shape
    if n_answers != tree.n_answers():
        raise ValueError(f"concentrations have {n_answers} answers, the {tree.name} tree {tree.n_answers()}")
    fractions = expected_fractions(alpha, tree)
    asked = proportion_asked(fractions, tree)
    offsets = pa.array(np.arange(0, n * passes + 1, passes, dtype=np.int32))
    per_answer = np.ascontiguousarray(np.moveaxis(alpha.astype(np.float32, copy=False), 2, 0))  # [A, G, T]
    arrays = [pa.array(id_strings(ids), type=pa.string()), pa.array(np.asarray(ra, np.float64)),
              pa.array(np.asarray(dec, np.float64))]
    arrays += [pa.ListArray.from_arrays(offsets, pa.array(per_answer[a].ravel())) for a in range(n_answers)]
    arrays += [pa.array(fractions[:, a].astype(np.float32)) for a in range(n_answers)]
    arrays += [pa.array(asked[:, j].astype(np.float32)) for j in range(asked.shape[1])]
    return pa.Table.from_arrays(arrays, schema=schema)


def load_concentrations(path: str | Path, tree: DecisionTree) -> tuple[np.ndarray, np.ndarray]:
    """(ids [G] str, alpha float32 [G, T, n_answers] in ``tree.answer_columns`` order) of a posterior catalog."""
    import pyarrow.parquet as pq

    columns = concentration_columns(tree)
    schema = pq.read_schema(path)
    missing = [c for c in ("id_str", *columns) if c not in schema.names]
    if missing:
        raise UserError(f"{path}: not a {tree.name} posterior catalog (missing {missing[:3]}"
                        f"{' ...' if len(missing) > 3 else ''})")
    table = pq.read_table(path, columns=["id_str", *columns])
    n = len(table)
    values = [table.column(c).combine_chunks().flatten().to_numpy(zero_copy_only=False) for c in columns]
    passes = len(values[0]) // max(n, 1)
    for c, v in zip(columns, values, strict=True):
        if len(v) != n * passes:
            raise UserError(f"{path}: column {c}: concentration lists are not all of length {passes}")
    alpha = np.stack([v.reshape(n, passes) for v in values], axis=-1).astype(np.float32, copy=False)
    return table.column("id_str").to_numpy(zero_copy_only=False).astype(str), alpha
