import json

import pytest

from gzmorph.cli import main
from gzmorph.config import UserError
from gzmorph.metrics import merge_metrics


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def test_merge_keys_by_question(tmp_path):
    a = write(tmp_path / "a/metrics.json", {"question": "bar", "n_galaxies": 3})
    b = write(tmp_path / "b/metrics.json", {"question": "smooth-or-featured", "n_galaxies": 5})
    assert merge_metrics([a, b]) == {"bar": {"question": "bar", "n_galaxies": 3},
                                     "smooth-or-featured": {"question": "smooth-or-featured", "n_galaxies": 5}}
    out = tmp_path / "metrics.json"
    assert main(["metrics", str(a), str(b), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["bar"]["n_galaxies"] == 3


def test_bad_inputs_are_user_errors(tmp_path):
    a = write(tmp_path / "a.json", {"question": "bar"})
    with pytest.raises(UserError, match="appears twice"):
        merge_metrics([a, a])
    with pytest.raises(UserError, match="no 'question' field"):
        merge_metrics([write(tmp_path / "c.json", {"n": 1})])
    with pytest.raises(UserError, match="no such metrics file"):
        merge_metrics([tmp_path / "missing.json"])


def test_learnability_section_passes_through(tmp_path):
    """`gzmorph metrics` keeps each question's learnability section (null for real data) as evaluate wrote it."""
    section = {"vote_cut": 10, "reference_galaxies": 120,
               "all": {"n_galaxies": 30, "rmse_model": 0.08, "rmse_class_only": 0.12, "gain_over_class": 1 / 3},
               "visibility": {"arms_0p3_0p5": {"n_galaxies": 4, "rmse_model": None}}}
    a = write(tmp_path / "a/metrics.json", {"question": "bar", "learnability": section})
    b = write(tmp_path / "b/metrics.json", {"question": "smooth-or-featured", "learnability": None})
    merged = merge_metrics([a, b])
    assert merged["bar"]["learnability"] == section and merged["smooth-or-featured"]["learnability"] is None
