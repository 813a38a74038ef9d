import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
# tests import shared helpers (test_catalog.make_catalog) and run CLIs from the repo root
sys.path.insert(0, str(Path(__file__).parent))
os.chdir(ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
