import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ufm.cli import main


def ufm_cmd(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ufm.cli", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_train_writes_result_and_params(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "unregularized-bias", "--K", "3", "--n", "4", "--d", "5", "--steps", "300",
               "--log-every", "100", "--x64", "--out", str(out), "--quiet"])
    assert rc == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["model"] == "unregularized-bias" and doc["diverged"] is False and doc["diverged_at"] is None
    cfg = doc["config"]
    for key in ("K", "n", "d", "lam_W", "lam_H", "lr", "steps", "seed", "init_scale", "restarts",
                "log_every", "dtype"):
        assert key in cfg
    assert cfg["lam_W"] == 5e-3 and cfg["init_scale"] == 1.0 and cfg["dtype"] == "float64"
    assert doc["history"]["step"] == [0, 100, 200, 300]
    for key in ("objective", "nc1_H", "nc2_etf_H", "nc2_of_H", "nc2_etf_W", "nc2_of_W", "nc3_etf", "nc3_of"):
        assert key in doc["final"] and len(doc["history"][key]) == 4
    assert doc["theory"]["structure"] == "ETF" and doc["theory"]["objective"] > 0
    params = np.load(out / "params.npz")
    assert set(params.files) == {"W", "H", "b"} and params["H"].shape == (5, 12)
    stdout = capsys.readouterr().out
    assert "closed form" in stdout and "nc1_H" in stdout
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]


def test_extended_params_and_theory_null_for_small_d(tmp_path):
    out = tmp_path / "ext"
    rc = main(["train", "relu-extended", "--K", "4", "--d", "3", "--n", "2", "--steps", "20",
               "--log-every", "10", "--allow-small-d", "--restarts", "3", "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["theory"] is None and len(doc["restarts"]["objectives"]) == 3
    assert set(np.load(out / "params.npz").files) == {"W2", "W1", "H1"}


@pytest.mark.parametrize("args,needle", [
    (["train", "nope"], "unknown model 'nope'"),
    (["train", "bias-free", "--lam-b", "0.1"], "(--lam-b) does not apply to model 'bias-free'"),
    (["train", "bias-free", "--lam-W", "-1"], "lam_W (--lam-W) must be finite and >= 0, got -1.0"),
    (["train", "bias-free", "--lr", "nan"], "lr (--lr) must be finite"),
    (["train", "bias-free", "--steps", "0"], "steps (--steps) must be >= 1, got 0"),
    (["train", "bias-free", "--K", "1"], "K (--K) must be >= 2, got 1"),
    (["train", "bias-free", "--n", "0"], "n (--n) must be >= 1"),
    (["train", "bias-free", "--d", "3"], "--allow-small-d"),
    (["train", "linear-extended", "--lam-H", "0.1"], "(--lam-H) does not apply"),
    (["train", "bias-free", "--steps", "ten"], "invalid int value: 'ten'"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, args, needle, capsys):
    """In this process (`main` as the console script calls it; argparse's own errors exit 2);
    the next test checks the same through a real process."""
    out = tmp_path / "never"
    try:
        rc = main([*args, "--out", str(out)])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err
    assert not out.exists()


def test_bad_input_exits_2_from_a_real_process(tmp_path):
    out = tmp_path / "never"
    for args, needle in ((["train", "nope"], "unknown model 'nope'"),
                         (["train", "bias-free", "--steps", "ten"], "invalid int value: 'ten'")):
        proc = ufm_cmd(*args, "--out", str(out))
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
        assert not out.exists()


def test_divergence_writes_files_and_exits_nonzero(tmp_path):
    out = tmp_path / "div"
    proc = ufm_cmd("train", "bias-free", "--lr", "40", "--steps", "200", "--log-every", "50",
                   "--out", str(out), "--quiet")
    assert proc.returncode == 1
    doc = json.loads((out / "result.json").read_text())
    assert doc["diverged"] is True and isinstance(doc["diverged_at"], int)
    assert f"step {doc['diverged_at']}" in proc.stdout
    assert doc["config"]["dtype"] == "float32"  # float32 unless --x64
