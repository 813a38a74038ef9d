"""gzmorph: calibrated, probabilistic galaxy morphology from Galaxy Zoo votes."""

__version__ = "0.1.0"
