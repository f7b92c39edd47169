import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ufm
from ufm import sweep
from ufm.config import hyper_for
from ufm.cli import main
from ufm.models import Sizes

SIZES = Sizes(3, 4, 5)
AXES = {"lam_H": np.array([1e-3, 1e-2, 5e-2]), "lr": np.array([0.05, 0.1])}


def small_sweep(**kw):
    model = ufm.get_model("unregularized-bias")
    base = hyper_for(model, {"lam_W": 2e-2}, 0.1, None)
    return sweep.run_sweep(model, SIZES, base, AXES, steps=400, seed=3, **kw)


def test_parse_axis():
    np.testing.assert_allclose(sweep.parse_axis("lam_W", "0:1:5"), [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(sweep.parse_axis("lam_W", "1e-3:1e-1:3:log"), [1e-3, 1e-2, 1e-1])
    np.testing.assert_allclose(sweep.parse_axis("lr", "0.1,0.2"), [0.1, 0.2])
    for bad in ("1:2", "a,b", "1:2:0", "0:1:3:log", "1:2:3:lin"):
        with pytest.raises(ValueError, match="--lam-W must be a number, a comma list"):
            sweep.parse_axis("lam_W", bad)


def test_grid_equals_separate_train_runs():
    arrays, config = small_sweep()
    assert arrays["objective"].shape == (3, 2) and config["shape"] == [3, 2]
    for i, lam_H in enumerate(AXES["lam_H"]):
        for j, lr in enumerate(AXES["lr"]):
            r = ufm.train("unregularized-bias", K=3, n=4, d=5, lam_W=2e-2, lam_H=float(lam_H),
                          lr=float(lr), steps=400, log_every=400, seed=3)
            for k, v in r.final.items():
                np.testing.assert_allclose(arrays[k][i, j], v, rtol=1e-10, atol=1e-14)
            assert arrays["theory_objective"][i, j] == pytest.approx(r.theory.objective, rel=1e-14)


@pytest.mark.long
def test_four_virtual_devices_give_the_same_numbers(tmp_path):
    script = textwrap.dedent(f"""
        import jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        assert jax.local_device_count() == 4, jax.devices()
        import ufm
        from ufm import sweep
        from ufm.config import hyper_for
        from ufm.models import Sizes
        model = ufm.get_model("unregularized-bias")
        base = hyper_for(model, {{"lam_W": 2e-2}}, 0.1, None)
        axes = {{"lam_H": np.array([1e-3, 1e-2, 5e-2]), "lr": np.array([0.05, 0.1])}}
        arrays, cfg = sweep.run_sweep(model, Sizes(3, 4, 5), base, axes, steps=400, seed=3, chunk=4)
        np.savez({str(tmp_path / 'four.npz')!r}, **arrays)
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    four = np.load(tmp_path / "four.npz")
    one, _ = small_sweep(chunk=4)
    for k in one:
        np.testing.assert_allclose(four[k], one[k], rtol=1e-12, atol=1e-15, err_msg=k)


def test_a_grid_on_every_host_device_with_batched_svds_finishes(tmp_path):
    """Regression: one host device per core, each measuring NC1 (a batched SVD) of 32 seeds at
    K = 10, d = 64 wedged jaxlib's thread pool (ufm/linalg.py) and never returned."""
    devices = os.cpu_count()
    cmd = [sys.executable, "-m", "ufm.cli", "sweep", "bias-free", "--K", "10", "--n", "100", "--d", "64", "--steps", "10",
           "--seeds", str(32 * devices), "--host-devices", str(devices), "--quiet",
           "--out", str(tmp_path / "sw")]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(cmd)} did not finish in 240 s (the thread-pool deadlock)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    nc1 = np.load(tmp_path / "sw" / "sweep.npz")["nc1_H"]
    assert nc1.shape == (32 * devices,) and np.all(np.isfinite(nc1))


def test_interrupted_sweep_resumes_with_the_same_results(tmp_path):
    full, _ = small_sweep(chunk=2)
    out = str(tmp_path / "sw")

    class Interrupted(Exception):
        """A stop after two chunks, as an interrupt would (KeyboardInterrupt itself, raised in a
        test, could reach an unraisable-exception hook and print a warning)."""

    def stop_after_two(done, total):
        if done == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        small_sweep(chunk=2, out=out, progress=stop_after_two)
    done_chunks = sorted(f for f in os.listdir(os.path.join(out, "chunks")) if f.startswith("chunk_"))
    assert len(done_chunks) == 2
    stamps = {f: os.path.getmtime(os.path.join(out, "chunks", f)) for f in done_chunks}
    seen = []
    resumed, config = small_sweep(chunk=2, out=out, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 1)]  # only the missing chunk is computed
    assert config["work"]["computed_points"] == 2 and config["work"]["loaded_points"] == 4
    assert {f: os.path.getmtime(os.path.join(out, "chunks", f)) for f in done_chunks} == stamps
    for k in full:
        np.testing.assert_array_equal(resumed[k], full[k])
    with pytest.raises(ValueError, match="was computed with another configuration"):
        model = ufm.get_model("unregularized-bias")
        sweep.run_sweep(model, SIZES, hyper_for(model, {}, 0.1, None), AXES, steps=10,
                        out=out, chunk=2)


def test_cli_sweep_files_axis_order_and_seed_axis(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["sweep", "bias-free", "--K", "3", "--n", "4", "--d", "5", "--lr", "0.05,0.1",
               "--lam-W", "1e-3:1e-2:3:log", "--steps", "100", "--seeds", "2", "--out", str(out),
               "--quiet", "--x64"])
    assert rc == 0
    f = np.load(out / "sweep.npz")
    assert f["objective"].shape == (2, 3, 2)  # lr, lam_W (order given), seed last
    np.testing.assert_allclose(f["lr"], [0.05, 0.1])
    np.testing.assert_allclose(f["seed"], [0, 1])
    for k in ("theory_objective", "diverged", "nc1_H", "nc2_of_W"):
        assert f[k].shape == (2, 3, 2)
    cfg = json.loads((out / "sweep.json").read_text())
    assert list(cfg["axes"]) == ["lr", "lam_W"] and cfg["seeds"] == 2
    assert "config-steps/s" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["--lam-b", "1,2"], "(--lam-b) does not apply"),
    (["--lam-W=-1,1"], "lam_W (--lam-W) must be finite and >= 0, got -1.0"),
    (["--lam-W", "1:x:2"], "--lam-W must be a number"),
    (["--steps", "0"], "steps (--steps) must be >= 1"),
])
def test_cli_sweep_bad_input(tmp_path, capsys, args, needle):
    out = tmp_path / "bad"
    assert main(["sweep", "bias-free", "--out", str(out), "--quiet", *args]) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()  # nothing written
