"""Load params.yaml and validate it against workflow/schemas/params.schema.yaml.

Errors name the key path and say what was expected in plain words, e.g.
``params.yaml: shards.shard_size: -3 is less than the minimum of 1``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml


class UserError(ValueError):
    """A problem the person running gzmorph can fix; the CLI prints its one-line message and exits 2."""


class ConfigError(UserError):
    """params.yaml is not valid; the message is meant for a person."""


def schema_path() -> Path:
    """The schema lives in workflow/schemas (where Snakemake users expect it); the package ships a copy."""
    repo = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "params.schema.yaml"
    if repo.exists():
        return repo
    return Path(str(resources.files("gzmorph") / "params.schema.yaml"))


def load_schema() -> dict[str, Any]:
    return yaml.safe_load(schema_path().read_text())


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _explain(error: jsonschema.ValidationError) -> str:
    where = _where(error)
    v = error.validator
    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        return f"{where}: unknown key(s) {', '.join(map(repr, extra))}{hint}"
    if v == "required":
        return f"{where}: {error.message}"
    if v == "type":
        return f"{where}: {error.instance!r} should be of type {error.validator_value}"
    if v == "enum":
        return f"{where}: {error.instance!r} is not one of {', '.join(map(repr, error.validator_value))}"
    desc = error.schema.get("description")
    return f"{where}: {error.message}" + (f" ({desc})" if desc else "")


def _semantic_checks(params: dict[str, Any]) -> list[str]:
    """Rules a JSON schema cannot express."""
    if params["data_source"] == "real" and "real" not in params:
        return ["real: required when data_source is 'real' (the catalogs, image sources and services to fetch from)"]
    problems = []
    split = params["shards"]["split"]
    total = split["train"] + split["val"] + split["test"]
    if abs(total - 1.0) > 1e-6:
        problems.append(f"shards.split: train + val + test must sum to 1, got {total:g}")
    sim = params["simulate"]
    sky = sim["sky"]
    if sky["ra_min"] >= sky["ra_max"]:
        problems.append("simulate.sky: ra_min must be less than ra_max")
    if sky["dec_min"] >= sky["dec_max"]:
        problems.append("simulate.sky: dec_min must be less than dec_max")
    for name, s in sim["surveys"].items():
        if s["ra_min"] >= s["ra_max"]:
            problems.append(f"simulate.surveys.{name}: ra_min must be less than ra_max")
    surveys = active_surveys(params)
    names = ", ".join(surveys)
    where_surveys = "simulate.surveys" if params["data_source"] == "simulated" else "real.surveys"
    xm = params["crossmatch"]
    for side in ("left", "right"):
        if xm[side] not in surveys:
            problems.append(f"crossmatch.{side}: {xm[side]!r} is not a survey under {where_surveys}; surveys: {names}")
    if xm["left"] == xm["right"]:
        problems.append("crossmatch: left and right must be different surveys")
    train = params["train"]
    if train["survey"] not in surveys:
        problems.append(f"train.survey: {train['survey']!r} is not a survey under {where_surveys}; surveys: {names}")
    else:
        from gzmorph.tree import get_tree

        tree = get_tree(surveys[train["survey"]])
        for question, spec in train["questions"].items():
            where = f"train.questions.{question}"
            if question not in tree.question_names:
                problems.append(f"{where}: no such question in the {tree.name} tree; questions: "
                                f"{', '.join(tree.question_names)}")
            elif spec["answer"] not in tree.question(question).answer_names:
                problems.append(f"{where}.answer: {spec['answer']!r} is not an answer; answers: "
                                f"{', '.join(tree.question(question).answer_names)}")
            low, high = spec["crop_zoom"]
            if low > high:
                problems.append(f"{where}.crop_zoom: low {low:g} is above high {high:g}")
    if params["data_source"] == "real":
        problems += _real_checks(params["real"])
    vol = sim["volunteers"]
    if vol["fewer_min"] > vol["per_galaxy"]:
        problems.append("simulate.volunteers: fewer_min must not exceed per_galaxy")
    return problems


# Published catalog formats of the real sources and the decision tree each one's votes follow.
REAL_CATALOG_TREES = {"gz2-hart16": "gz2", "gz-decals-dr5": "decals-dr5"}


def active_surveys(params: dict[str, Any]) -> dict[str, str]:
    """Survey name -> decision-tree name, for the data source the params select."""
    if params["data_source"] == "real":
        return {name: REAL_CATALOG_TREES[s["catalog"]] for name, s in params["real"]["surveys"].items()}
    return {name: s["tree"] for name, s in params["simulate"]["surveys"].items()}


def _real_checks(real: dict[str, Any]) -> list[str]:
    problems = []
    for name, s in real["surveys"].items():
        where = f"real.surveys.{name}"
        if s["catalog"] == "gz2-hart16" and "location" not in s:
            problems.append(f"{where}.location: required for catalog gz2-hart16 (path or URL of gz2_hart16.csv.gz)")
        if s["catalog"] == "gz-decals-dr5":
            for key in ("zenodo_record", "catalog_file"):
                if key not in s:
                    problems.append(f"{where}.{key}: required for catalog gz-decals-dr5")
        if s["images"] == "zenodo" and not s.get("image_files"):
            problems.append(f"{where}.image_files: required when images is zenodo (record file names or patterns)")
        if s["images"] == "zenodo" and s["catalog"] == "gz2-hart16":
            for key in ("zenodo_record", "mapping_file"):
                if key not in s:
                    problems.append(f"{where}.{key}: required when images is zenodo for catalog gz2-hart16 "
                                    "(record 3565489, gz2_filename_mapping.csv)")
        if "mapping_file" in s and s["catalog"] != "gz2-hart16":
            problems.append(f"{where}.mapping_file: only catalog gz2-hart16 joins its images through a mapping file")
        if s.get("fallback", "none") == s["images"]:
            problems.append(f"{where}.fallback: must differ from images ({s['images']!r})")
        for source in (s["images"], s.get("fallback", "none")):
            key = f"{source}_cutout"
            if source in ("skyserver", "legacysurvey") and key not in s:
                problems.append(f"{where}.{key}: required when images or fallback is {source}")
    return problems


def validate(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    """Return ``params`` unchanged if valid, else raise ConfigError listing every problem."""
    if not isinstance(params, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(params).__name__}")
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: list(map(str, e.absolute_path)))
    problems = [_explain(e) for e in errors]
    if not problems:
        problems = _semantic_checks(params)
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return params


def _read(path: Path) -> dict[str, Any]:
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(params).__name__}")
    return params


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Later files override earlier ones key by key, as Snakemake merges --configfile."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = "params.yaml") -> dict[str, Any]:
    """Read one params file, or several merged in order, and validate the result."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        paths = ["params.yaml"]
    params: dict[str, Any] = {}
    for path in paths:
        params = deep_merge(params, _read(Path(path)))
    return validate(params, source=", ".join(map(str, paths)))


def add_params_argument(parser: Any) -> None:
    """``--params FILE`` (repeatable): what every stage CLI reads its settings from."""
    parser.add_argument(
        "--params", action="append", default=None, metavar="FILE",
        help="params file (repeat to merge several, later ones win; default params.yaml)",
    )


def select(params: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The values of dotted keys (``"simulate.sky"``), keyed by those keys.

    Snakemake rules pass this as ``params`` so that a change to exactly these
    settings, and no others, reruns the rule, the same keys dvc.yaml lists.
    """
    out = {}
    for key in keys:
        node: Any = params
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"no setting {key!r} in the configuration")
            node = node[part]
        out[key] = node
    return out


def available_cores() -> int:
    """Cores this process may use (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _threads(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 (all available cores) or more")
    return value or available_cores()


def add_threads_argument(parser: Any, what: str = "work") -> None:
    """``--threads N``: worker processes; 0, the default, means every available core."""
    parser.add_argument(
        "--threads", type=_threads, default="0",
        help=f"worker processes for {what} (default 0: all available cores; Snakemake passes its own)",
    )


def write_resolved(params: dict[str, Any], directory: str | os.PathLike[str]) -> Path:
    """Write settings to ``<directory>/params-<digest>.yaml`` and return its path.

    Snakemake's ``--config key=value`` overrides exist only in memory; the stage CLIs read them
    from this file.  The name is content-addressed, so equal settings give the same path (and
    the same rule params, so no spurious reruns) and nothing is written twice.
    """
    import hashlib

    from gzmorph import io

    text = yaml.safe_dump(params, sort_keys=True)
    path = Path(directory) / f"params-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.exists():
        io.write_text(path, text)
    return path
