import copy
from pathlib import Path

import pytest
import yaml

from gzmorph import config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def params():
    return config.load(ROOT / "params.yaml")


def _error(params) -> str:
    with pytest.raises(config.ConfigError) as info:
        config.validate(params, source="params.yaml")
    return str(info.value)


def test_default_params_are_valid(params):
    assert params["shards"]["split"] == {"train": 0.7, "val": 0.2, "test": 0.1}


def test_wrong_type_names_key_and_type(params):
    params["simulate"]["n_galaxies"] = "many"
    assert _error(params) == "params.yaml: simulate.n_galaxies: 'many' should be of type integer"


def test_negative_size_names_minimum(params):
    params["shards"]["shard_size"] = -3
    msg = _error(params)
    assert msg.startswith("params.yaml: shards.shard_size: -3 is less than the minimum of 1")


def test_unknown_key_lists_allowed_keys(params):
    params["shards"]["colour"] = "red"
    msg = _error(params)
    assert "shards: unknown key(s) 'colour'" in msg and "shard_size" in msg


def test_every_problem_reported_once(params):
    params["shards"]["shard_size"] = 0
    params["crossmatch"]["radius_arcsec"] = -1
    assert len(_error(params).splitlines()) == 2


def test_split_must_sum_to_one(params):
    params["shards"]["split"]["test"] = 0.3
    assert "must sum to 1" in _error(params)


def test_crossmatch_surveys_must_exist(params):
    params["crossmatch"]["right"] = "euclid"
    assert "crossmatch.right: 'euclid' is not a survey" in _error(params)


def test_later_files_override_earlier(tmp_path, params):
    override = tmp_path / "small.yaml"
    override.write_text(yaml.safe_dump({"simulate": {"n_galaxies": 10}}))
    merged = config.load([ROOT / "params.yaml", override])
    expected = copy.deepcopy(params)
    expected["simulate"]["n_galaxies"] = 10
    assert merged == expected


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(bad)


def test_select_returns_dotted_keys(params):
    got = config.select(params, ["seed", "simulate.sky.ra_min"])
    assert got == {"seed": params["seed"], "simulate.sky.ra_min": params["simulate"]["sky"]["ra_min"]}
    with pytest.raises(config.ConfigError, match="no setting 'simulate.nope'"):
        config.select(params, ["simulate.nope"])


def test_write_resolved_is_content_addressed(tmp_path):
    a = config.write_resolved({"seed": 3, "shards": {"shard_size": 5}}, tmp_path)
    b = config.write_resolved({"shards": {"shard_size": 5}, "seed": 3}, tmp_path)
    c = config.write_resolved({"seed": 4}, tmp_path)
    assert a == b != c
    assert yaml.safe_load(a.read_text()) == {"seed": 3, "shards": {"shard_size": 5}}
    merged = config.load([ROOT / "params.yaml", a])
    assert merged["seed"] == 3 and merged["shards"]["shard_size"] == 5


def test_paper_sizes_override_is_valid():
    merged = config.load([ROOT / "params.yaml", ROOT / "params" / "paper.yaml"])
    assert merged["active_learning"]["questions"]["bar"] == {"initial": 512, "per_iteration": 256, "iterations": 20}
    assert merged["train"]["input_size"] == 128


def test_real_source_config_is_valid_and_names_its_surveys():
    params = config.load([ROOT / "params.yaml", ROOT / "params" / "real.yaml"])
    config.validate(params)
    assert config.active_surveys(params) == {"sdss": "gz2", "decals": "decals-dr5"}


def test_real_config_applies_the_papers_gz2_vote_cut(params):
    real = config.load([ROOT / "params.yaml", ROOT / "params" / "real.yaml"])
    smooth = real["train"]["questions"]["smooth-or-featured"]
    assert smooth["min_total_votes"] == 36  # Walmsley et al. 2020 section 2.5.1: N < 36 dropped
    default = params["train"]["questions"]["smooth-or-featured"]
    assert {k: v for k, v in smooth.items() if k != "min_total_votes"} == {
        k: v for k, v in default.items() if k != "min_total_votes"}  # the rest of the question is merged in
    assert default["min_total_votes"] == 0  # the simulated default keeps every galaxy
    assert real["train"]["questions"]["bar"] == params["train"]["questions"]["bar"]


def test_real_source_requires_the_real_section(params):
    params["data_source"] = "real"
    del params["real"]
    assert _error(params) == ("params.yaml: real: required when data_source is 'real' "
                              "(the catalogs, image sources and services to fetch from)")


def test_real_surveys_are_what_crossmatch_and_train_must_name(params):
    params["data_source"] = "real"
    params["real"]["surveys"] = {"gz2": params["real"]["surveys"]["sdss"]}
    params["crossmatch"]["right"] = "gz2"
    msg = _error(params)
    assert "crossmatch.left: 'sdss' is not a survey under real.surveys; surveys: gz2" in msg
    assert "train.survey: 'sdss' is not a survey under real.surveys; surveys: gz2" in msg


def test_real_survey_needs_the_settings_of_its_sources(params):
    params["data_source"] = "real"
    decals = params["real"]["surveys"]["decals"]
    del decals["legacysurvey_cutout"]
    del decals["image_files"]
    msg = _error(params)
    assert "real.surveys.decals.legacysurvey_cutout: required when images or fallback is legacysurvey" in msg
    assert "real.surveys.decals.image_files: required when images is zenodo" in msg
    sdss = params["real"]["surveys"]["sdss"]
    sdss["images"] = "zenodo"
    for key in ("image_files", "mapping_file", "zenodo_record"):
        sdss.pop(key, None)
    msg = _error(params)
    assert "real.surveys.sdss.image_files: required when images is zenodo" in msg
    assert "real.surveys.sdss.mapping_file: required when images is zenodo for catalog gz2-hart16" in msg
    assert "real.surveys.sdss.zenodo_record: required when images is zenodo for catalog gz2-hart16" in msg
    decals["mapping_file"] = "gz2_filename_mapping.csv"
    assert "real.surveys.decals.mapping_file: only catalog gz2-hart16" in _error(params)


def test_real_service_url_must_be_a_url(params):
    params["real"]["services"]["zenodo"]["base_url"] = "zenodo.org/"
    assert _error(params).startswith("params.yaml: real.services.zenodo.base_url: 'zenodo.org/' does not match")


def test_quick_profile_is_a_small_marked_smoke_run(params):
    """params/quick.yaml: valid over params.yaml, marked as a smoke run, a smaller sky and every training short."""
    quick = config.load([ROOT / "params.yaml", ROOT / "params" / "quick.yaml"])
    assert quick["smoke_run"] is True and params["smoke_run"] is False
    assert quick["simulate"]["n_galaxies"] <= params["simulate"]["n_galaxies"] / 10
    epochs = [quick["train"]["max_epochs"], quick["train"]["tree"]["max_epochs"],
              *(q["max_epochs"] for q in quick["train"]["questions"].values())]
    assert max(epochs) <= 5


def test_precision_and_mc_settings_are_checked(params):
    params["train"]["mixed_precision"] = "fast"
    assert "train.mixed_precision" in _error(params)
    params["train"]["mixed_precision"] = "auto"
    params["predict"]["dropout_masks"] = 0
    assert "predict.dropout_masks" in _error(params)


def test_tree_trunk_needs_three_block_widths(params):
    params["train"]["tree"]["trunk_filters"] = [64, 64]
    assert "train.tree.trunk_filters: [64, 64] is too short" in _error(params)
