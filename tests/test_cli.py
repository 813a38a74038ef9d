import subprocess
import sys
from pathlib import Path

import pytest

from gzmorph import cli

GZMORPH = str(Path(sys.executable).with_name("gzmorph"))


def test_every_stage_has_a_command():
    for stage in cli.STAGES:
        parser = cli.build_parser(stage)
        with pytest.raises(SystemExit) as info:
            parser.parse_args([stage, "--help"])
        assert info.value.code == 0


def test_bad_params_exit_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("shards:\n  shard_size: -3\n")
    res = subprocess.run([GZMORPH, "validate", "--params", "params.yaml", "--params", str(bad)],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"gzmorph validate: error: params.yaml, {bad}: shards.shard_size: -3 is less than the minimum of 1"
        " (galaxies per TFRecord shard)"
    )


def test_validate_accepts_default_params():
    res = subprocess.run([GZMORPH, "validate"], capture_output=True, text=True)
    assert res.returncode == 0 and "valid" in res.stdout
