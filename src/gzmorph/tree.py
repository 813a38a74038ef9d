"""The Galaxy Zoo decision trees: one object per tree, used by every stage.

A tree knows its questions, their answers, which earlier answer leads to each
question, and the catalog column names (``<question>_<answer>`` vote counts and
``<question>_total-votes``).  The simulator walks it, the catalog validator
checks columns against it, the sharder stores every answer's counts from it,
and the loss reads (k, N) for a question from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

TOTAL_SUFFIX = "total-votes"


@dataclass(frozen=True)
class Answer:
    name: str
    raw: str | None = None  # raw column stem in a published catalog (GZ2 Hart16), if any


@dataclass(frozen=True)
class Question:
    name: str
    answers: tuple[Answer, ...]
    # Asked when ANY of these (question, answer) pairs was given; empty = always asked.
    asked_after: tuple[tuple[str, str], ...] = ()

    @property
    def answer_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.answers)

    @property
    def total_column(self) -> str:
        return f"{self.name}_{TOTAL_SUFFIX}"

    def column(self, answer: str) -> str:
        if answer not in self.answer_names:
            raise KeyError(f"question {self.name!r} has no answer {answer!r}; answers: {self.answer_names}")
        return f"{self.name}_{answer}"

    @property
    def answer_columns(self) -> tuple[str, ...]:
        return tuple(self.column(a) for a in self.answer_names)


@dataclass(frozen=True)
class DecisionTree:
    name: str
    questions: tuple[Question, ...]
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for q in self.questions:
            for dep_q, dep_a in q.asked_after:
                # Topological order lets a volunteer walk the tree front to back.
                if dep_q not in seen:
                    raise ValueError(f"{self.name}: {q.name!r} depends on {dep_q!r}, which must come earlier")
                self.question(dep_q).column(dep_a)
            if q.name in seen:
                raise ValueError(f"{self.name}: duplicate question {q.name!r}")
            seen.add(q.name)

    @cached_property
    def _by_name(self) -> dict[str, Question]:
        return {q.name: q for q in self.questions}

    def question(self, name: str) -> Question:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(
                f"tree {self.name!r} has no question {name!r}; questions: {list(self._by_name)}"
            ) from None

    @property
    def question_names(self) -> tuple[str, ...]:
        return tuple(q.name for q in self.questions)

    @property
    def answer_columns(self) -> tuple[str, ...]:
        return tuple(c for q in self.questions for c in q.answer_columns)

    @property
    def total_columns(self) -> tuple[str, ...]:
        return tuple(q.total_column for q in self.questions)

    @property
    def vote_columns(self) -> tuple[str, ...]:
        """Every count column: per question its total, then its answers."""
        return tuple(c for q in self.questions for c in (q.total_column, *q.answer_columns))

    def n_answers(self) -> int:
        return sum(len(q.answers) for q in self.questions)

    @cached_property
    def answer_slices(self) -> dict[str, slice]:
        """Per question, its answers' slice of the flat answer axis (``answer_columns`` order).

        A whole-tree model's head has one output per answer in this order; the loss, the posterior
        catalog and tree BALD read a question's answers through these slices (as zoobot's Schema).
        """
        slices, start = {}, 0
        for q in self.questions:
            slices[q.name] = slice(start, start + len(q.answers))
            start += len(q.answers)
        return slices

    @cached_property
    def answer_question_index(self) -> tuple[int, ...]:
        """Per answer (``answer_columns`` order), the index of its question in ``questions``."""
        return tuple(j for j, q in enumerate(self.questions) for _ in q.answers)


def _q(name: str, answers: list[str] | list[tuple[str, str]], after: list[tuple[str, str]] | None = None) -> Question:
    ans = tuple(Answer(a) if isinstance(a, str) else Answer(a[0], raw=a[1]) for a in answers)
    return Question(name, ans, tuple(after or ()))


# Galaxy Zoo 2 (Willett et al. 2013; Hart et al. 2016), answers named in the
# hyphenated GZ DECaLS style; ``raw`` keeps the Hart16 column stem.
GZ2 = DecisionTree(
    name="gz2",
    description="Galaxy Zoo 2 (SDSS DR7), Hart et al. 2016 catalog",
    questions=(
        _q("smooth-or-featured", [
            ("smooth", "t01_smooth_or_features_a01_smooth"),
            ("featured-or-disk", "t01_smooth_or_features_a02_features_or_disk"),
            ("artifact", "t01_smooth_or_features_a03_star_or_artifact"),
        ]),
        _q("disk-edge-on", [("yes", "t02_edgeon_a04_yes"), ("no", "t02_edgeon_a05_no")],
           [("smooth-or-featured", "featured-or-disk")]),
        _q("bar", [("yes", "t03_bar_a06_bar"), ("no", "t03_bar_a07_no_bar")], [("disk-edge-on", "no")]),
        _q("has-spiral-arms", [("yes", "t04_spiral_a08_spiral"), ("no", "t04_spiral_a09_no_spiral")],
           [("disk-edge-on", "no")]),
        _q("bulge-size", [
            ("no-bulge", "t05_bulge_prominence_a10_no_bulge"),
            ("just-noticeable", "t05_bulge_prominence_a11_just_noticeable"),
            ("obvious", "t05_bulge_prominence_a12_obvious"),
            ("dominant", "t05_bulge_prominence_a13_dominant"),
        ], [("disk-edge-on", "no")]),
        _q("how-rounded", [
            ("completely-round", "t07_rounded_a16_completely_round"),
            ("in-between", "t07_rounded_a17_in_between"),
            ("cigar-shaped", "t07_rounded_a18_cigar_shaped"),
        ], [("smooth-or-featured", "smooth")]),
        _q("edge-on-bulge", [
            ("rounded", "t09_bulge_shape_a25_rounded"),
            ("boxy", "t09_bulge_shape_a26_boxy"),
            ("none", "t09_bulge_shape_a27_no_bulge"),
        ], [("disk-edge-on", "yes")]),
        _q("spiral-winding", [
            ("tight", "t10_arms_winding_a28_tight"),
            ("medium", "t10_arms_winding_a29_medium"),
            ("loose", "t10_arms_winding_a30_loose"),
        ], [("has-spiral-arms", "yes")]),
        _q("spiral-arm-count", [
            ("1", "t11_arms_number_a31_1"),
            ("2", "t11_arms_number_a32_2"),
            ("3", "t11_arms_number_a33_3"),
            ("4", "t11_arms_number_a34_4"),
            ("more-than-4", "t11_arms_number_a36_more_than_4"),
            ("cant-tell", "t11_arms_number_a37_cant_tell"),
        ], [("has-spiral-arms", "yes")]),
        # Asked of everyone at the end, except that star_or_artifact ends the classification.
        _q("something-odd", [("yes", "t06_odd_a14_yes"), ("no", "t06_odd_a15_no")],
           [("smooth-or-featured", "smooth"), ("smooth-or-featured", "featured-or-disk")]),
        _q("odd-feature", [
            ("ring", "t08_odd_feature_a19_ring"),
            ("lens-or-arc", "t08_odd_feature_a20_lens_or_arc"),
            ("disturbed", "t08_odd_feature_a21_disturbed"),
            ("irregular", "t08_odd_feature_a22_irregular"),
            ("other", "t08_odd_feature_a23_other"),
            ("merger", "t08_odd_feature_a24_merger"),
            ("dust-lane", "t08_odd_feature_a38_dust_lane"),
        ], [("something-odd", "yes")]),
    ),
)

# Galaxy Zoo DECaLS DR5 (Walmsley et al. 2021, ``gz_decals_volunteers_5``).
DECALS_DR5 = DecisionTree(
    name="decals-dr5",
    description="Galaxy Zoo DECaLS DR5 volunteers catalog (Walmsley et al. 2021)",
    questions=(
        _q("smooth-or-featured", ["smooth", "featured-or-disk", "artifact"]),
        _q("disk-edge-on", ["yes", "no"], [("smooth-or-featured", "featured-or-disk")]),
        _q("has-spiral-arms", ["yes", "no"], [("disk-edge-on", "no")]),
        _q("bar", ["strong", "weak", "no"], [("disk-edge-on", "no")]),
        _q("bulge-size", ["dominant", "large", "moderate", "small", "none"], [("disk-edge-on", "no")]),
        _q("how-rounded", ["round", "in-between", "cigar-shaped"], [("smooth-or-featured", "smooth")]),
        _q("edge-on-bulge", ["boxy", "none", "rounded"], [("disk-edge-on", "yes")]),
        _q("spiral-winding", ["tight", "medium", "loose"], [("has-spiral-arms", "yes")]),
        _q("spiral-arm-count", ["1", "2", "3", "4", "more-than-4", "cant-tell"], [("has-spiral-arms", "yes")]),
        _q("merging", ["none", "minor-disturbance", "major-disturbance", "merger"]),
    ),
)

TREES: dict[str, DecisionTree] = {t.name: t for t in (GZ2, DECALS_DR5)}


def get_tree(name: str) -> DecisionTree:
    try:
        return TREES[name]
    except KeyError:
        raise KeyError(f"unknown decision tree {name!r}; known: {sorted(TREES)}") from None
