import pytest

from gzmorph.tree import DECALS_DR5, GZ2, TREES, Answer, DecisionTree, Question, get_tree


def test_gz2_has_37_answers_with_hart16_columns():
    assert GZ2.n_answers() == 37
    raws = [a.raw for q in GZ2.questions for a in q.answers]
    assert all(r and r.startswith("t") for r in raws)
    assert len(set(raws)) == 37
    assert GZ2.question("smooth-or-featured").column("smooth") == "smooth-or-featured_smooth"
    assert GZ2.question("bar").total_column == "bar_total-votes"


def test_decals_dr5_matches_published_columns():
    # 10 questions, 34 answers (facts.md); names as in gz_decals_volunteers_5
    assert len(DECALS_DR5.questions) == 10
    assert DECALS_DR5.n_answers() == 34
    assert "bar_strong" in DECALS_DR5.answer_columns
    assert "spiral-arm-count_more-than-4" in DECALS_DR5.answer_columns
    assert "merging_total-votes" in DECALS_DR5.total_columns
    assert DECALS_DR5.question("merging").asked_after == ()


def test_dependencies_follow_the_published_trees():
    assert GZ2.question("bar").asked_after == (("disk-edge-on", "no"),)
    assert GZ2.question("edge-on-bulge").asked_after == (("disk-edge-on", "yes"),)
    # artifact ends a GZ2 classification: "odd" follows only smooth or featured
    assert ("smooth-or-featured", "artifact") not in GZ2.question("something-odd").asked_after
    assert DECALS_DR5.question("spiral-winding").asked_after == (("has-spiral-arms", "yes"),)


def test_vote_columns_group_total_then_answers():
    cols = GZ2.vote_columns
    assert cols[:4] == ("smooth-or-featured_total-votes", "smooth-or-featured_smooth",
                        "smooth-or-featured_featured-or-disk", "smooth-or-featured_artifact")
    assert len(cols) == len(GZ2.questions) + GZ2.n_answers()


def test_tree_rejects_out_of_order_dependency():
    with pytest.raises(ValueError, match="must come earlier"):
        DecisionTree("bad", (Question("b", (Answer("x"),), (("a", "y"),)), Question("a", (Answer("y"),))))


def test_unknown_names_raise_helpful_errors():
    with pytest.raises(KeyError, match="known"):
        get_tree("gz3")
    with pytest.raises(KeyError, match="questions"):
        GZ2.question("colour")
    with pytest.raises(KeyError, match="answers"):
        GZ2.question("bar").column("strong")


@pytest.mark.parametrize("tree", list(TREES.values()), ids=lambda t: t.name)
def test_answer_slices_cover_answer_columns_in_order(tree):
    slices = tree.answer_slices
    assert list(slices) == list(tree.question_names)
    flat = []
    for q in tree.questions:
        s = slices[q.name]
        assert s.stop - s.start == len(q.answers)
        flat.extend(tree.answer_columns[s])
        assert tuple(tree.answer_columns[s]) == q.answer_columns
    assert tuple(flat) == tree.answer_columns
    assert slices[tree.questions[-1].name].stop == tree.n_answers()
