# Helpers shared by the rules.

from gzmorph.config import select


def P(*keys):
    """Settings a rule depends on, by dotted key (as dvc.yaml's params list them).

    Keys may name wildcards, e.g. "simulate.surveys.{survey}".
    """
    if any("{" in k for k in keys):
        return lambda wc: select(config, [k.format(**dict(wc.items())) for k in keys])
    return select(config, keys)


# Threads of the data-parallel stages: Snakemake scales this down to --cores (and to a
# cluster job's allocation), and the stage receives the real number as --threads.
ALL_CORES = 256


def archives_manifest(wildcards):
    """The Zenodo zips a real survey's images come from, if they come from zips."""
    if config["real"]["surveys"][wildcards.survey]["images"] == "zenodo":
        return f"data/real/{wildcards.survey}/archives.json"
    return []
