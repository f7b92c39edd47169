"""Every experiment script's --smoke into a temporary folder (never into figures/)."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import SCRIPTS
from experiments.common import FIGURES


@pytest.mark.parametrize("name", SCRIPTS)
def test_smoke(name, tmp_path):
    if name == "depthwise_network" and importlib.util.find_spec("sklearn") is None:
        pytest.skip("scikit-learn not installed (pip install -e '.[digits]')")
    before = {f: os.path.getmtime(os.path.join(FIGURES, f)) for f in os.listdir(FIGURES)
              if f.endswith(".png")} if os.path.isdir(FIGURES) else {}
    proc = subprocess.run([sys.executable, "-m", f"experiments.{name}", "--smoke", "--quiet",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = tmp_path / f"{name}.png"
    assert png.exists() and png.stat().st_size > 10000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = list((tmp_path / "data").glob("*.npz"))
    assert data and all(np.load(f).files for f in data)
    for js in (tmp_path / "data").glob("*.json"):
        json.loads(js.read_text())
    assert not list(tmp_path.rglob(".tmp-*"))  # atomic writes leave nothing behind
    after = {f: os.path.getmtime(os.path.join(FIGURES, f)) for f in before}
    assert after == before  # figures/ untouched


def test_runner_rejects_unknown_figure():
    proc = subprocess.run([sys.executable, "-m", "experiments", "--only", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown figure" in proc.stderr
