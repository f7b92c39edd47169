"""Bad input: one clear line naming the flag (exit 2, nothing written, no traceback) before any
work; the Python API raises ValueError naming the argument; sweeps cannot mix or corrupt."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import ufm
from ufm import geometry, metrics, optimise
from ufm.cli import main
from ufm.models import Sizes

# (argv, text the one-line message must contain); "--out DIR" is added where the subcommand has it
CASES = [
    (["train", "bias-free", "--K", "4", "--n", "5,5"], "n (--n)"),
    (["train", "bias-free", "--K", "4", "--n", "5,5,5,5,5,5"], "n (--n)"),
    (["train", "bias-free", "--seed", "4294967296"], "seed (--seed)"),
    (["train", "bias-free", "--seed", "18446744073709551616"], "seed (--seed)"),
    (["train", "bias-free", "--seed", "-1"], "seed (--seed)"),
    (["train", "bias-free", "--n", "1000000000000"], "needs about"),
    (["train", "bias-free", "--K", "1000000", "--d", "1000000"], "needs about"),
    (["train", "bias-free", "--d", "1000000000000"], "needs about"),
    (["train", "bias-free", "--restarts", "10000000"], "needs about"),
    (["train", "bias-free", "--K", "2", "--n", "1", "--d", "2", "--restarts", "50384645",
      "--steps", "1", "--log-every", "1"], "needs about"),  # found by hypothesis: 29 GB
    (["train", "bias-free", "--steps", "1000000000000000"], "steps (--steps)"),
    (["train", "bias-free", "--steps", "0"], "steps (--steps)"),
    (["train", "bias-free", "--log-every", "0"], "log_every (--log-every)"),
    (["train", "bias-free", "--lam-W", "-1e-3"], "lam_W (--lam-W)"),
    (["train", "bias-free", "--lam-W", "nan"], "lam_W (--lam-W)"),
    (["train", "bias-free", "--lam-W", "1e309"], "lam_W (--lam-W)"),
    (["train", "bias-free", "--lam-H", "1e308", "--x64"], "closed form"),
    (["train", "bias-free", "--K", "1"], "K (--K)"),
    (["train", "bias-free", "--K", "6", "--d", "3"], "d (--d)"),
    (["train", "bias-free", "--lr", "0"], "lr (--lr)"),
    (["train", "bias-free", "--optimizer", "newton"], "--optimizer"),
    (["train", "fixed-etf", "--optimizer", "lbfgs"], "optimizer (--optimizer)"),
    (["train", "bias-free", "--optimizer", "lbfgs", "--lr", "0.1"], "--lr"),
    (["train", "bias-free", "--tol", "-1"], "tol (--tol)"),
    (["train", "bias-free", "--tol", "1"], "tol (--tol) must be in (0, 1)"),
    (["train", "bias-free", "--tol", "0"], "tol (--tol) must be in (0, 1)"),
    (["sweep", "bias-free", "--tol", "2"], "tol (--tol) must be in (0, 1)"),
    (["sweep", "bias-free", "--seeds", "0"], "seeds (--seeds) must be >= 1"),
    (["train", "deep-linear", "--depth", "0"], "depth (--depth)"),
    (["train", "deep-linear", "--depth", "65"], "depth (--depth) must be at most 64"),
    (["train", "no-such-model"], "no-such-model"),
    (["train", "bias-free", "--sigma", "0.1"], "--sigma"),
    (["sweep", "bias-free", "--lam-W", "-1e-3:1e-1:5:log"], "--lam-W"),
    (["sweep", "bias-free", "--n", "-1,2,3,4"], "n (--n)"),
    (["sweep", "bias-free", "--log-every", "0"], "--log-every"),  # a sweep records the end only
    (["sweep", "bias-free", "--log-every", "-1"], "--log-every"),
    (["sweep", "bias-free", "--host-devices", "0"], "host-devices"),
    (["sweep", "bias-free", "--host-devices", "-1"], "host-devices"),
    (["sweep", "bias-free", "--host-devices", "100000"], "host-devices"),
    (["sweep", "bias-free", "--seeds", "100000000"], "points"),
    (["sweep", "bias-free", "--lam-W", "1e-5:1e-1:100000000:log"], "points"),
    (["sweep", "bias-free", "--chunk", "0"], "chunk (--chunk)"),
    (["sweep", "bias-free", "--K", "4", "--n", "5,5"], "--n"),
    (["sweep", "bias-free", "--seed", "4294967295", "--seeds", "2"], "seed (--seed)"),
    (["proof", "3.1", "--random", "1000000000"], "--random"),
    (["proof", "3.1", "--random", "-1"], "random (--random)"),
    (["proof", "3.1", "--sigma", "0.1"], "--sigma"),
    (["proof", "3.1", "--log-every", "10"], "--log-every"),
    (["proof", "9.9"], "9.9"),
    (["figures", "--only", ""], "only (--only)"),
    (["figures", "--only", "nope"], "only (--only)"),
    (["measure", "/nonexistent/features.npz"], "FILE"),
    (["bench", "--only", "nope"], "--only"),
    # round 4 (issue 35): each was a traceback
    (["train", "fixed-etf", "--sessions", "2", "--optimizer", "convex"], "sessions (--sessions)"),
    (["sweep", "fixed-orthogonal", "--sessions", "2", "--optimizer", "convex"],
     "sessions (--sessions)"),
    (["train", "scaled-target", "--gamma", "-2"], "gamma (--gamma) must be finite and > 0"),
    (["sweep", "bias-free", "--distributed"], "found no cluster to join"),
    (["sweep", "bias-free", "--distributed", "--coordinator", "foo", "--num-processes", "1",
      "--process-id", "0"], "coordinator (--coordinator) must be HOST:PORT"),
    (["sweep", "bias-free", "--distributed", "--coordinator", "localhost:notaport",
      "--num-processes", "1", "--process-id", "0"], "coordinator (--coordinator) must be"),
    (["sweep", "bias-free", "--distributed", "--coordinator", "no.such.host.invalid:1234",
      "--num-processes", "2", "--process-id", "0"], "does not resolve"),
    (["sweep", "bias-free", "--distributed", "--coordinator", "localhost:1234",
      "--num-processes", "0", "--process-id", "0"], "num-processes (--num-processes) must be"),
    # the second-order certificate (issue 31)
    (["train", "fixed-etf", "--hessian"], "constrained model"),
    (["train", "bias-free", "--init-from", "nowhere.npz"], "init_from (--init-from)"),
    (["train", "deep-linear-ce", "--init-from", "spiral"], "init_from (--init-from)"),
    (["sweep", "bias-free", "--hessian", "0"], "hessian (--hessian)"),
    (["hessian", "/nonexistent/run"], "is not a ufm train output"),
]
NO_OUT = {"figures", "bench", "hessian"}


@pytest.mark.parametrize("argv, needle", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_cli_input_is_one_line_exit_2_and_writes_nothing(argv, needle, tmp_path, capsys):
    out = tmp_path / "out"
    extra = [] if argv[0] in NO_OUT else ["--out", str(out)]
    extra += ["--quiet"] if argv[0] in ("train", "sweep", "measure") else []
    rc = _run(argv + extra)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert needle in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def _run(argv):
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own errors exit 2 with one usage line + message
        return e.code


def test_a_lambda_that_overflows_float32_is_refused_up_front(tmp_path):
    """The tests run in float64 (conftest), so float32 is checked in a fresh process."""
    proc = subprocess.run([sys.executable, "-m", "ufm.cli", "train", "bias-free", "--lam-W",
                           "1e39", "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and "overflows float32" in proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "o").exists()


def test_empty_out_is_an_error_not_a_default_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "bias-free", "--out", "", "--steps", "1", "--quiet"]) == 2
    assert "out (--out)" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("where", ["file", "under-file", "/proc/ufm-test", "/dev/null"])
def test_unusable_out_is_refused_before_any_work(where, tmp_path, capsys):
    path = {"file": tmp_path / "f", "under-file": tmp_path / "f" / "sub"}.get(where, where)
    (tmp_path / "f").write_text("x")
    for sub in (["train", "bias-free", "--quiet"], ["sweep", "bias-free", "--quiet"],
                ["proof", "3.1"], ["measure", str(tmp_path / "f")]):
        assert _run(sub + ["--out", str(path)]) == 2
        err = capsys.readouterr().err
        assert "out (--out)" in err and "Traceback" not in err


def test_divergence_covers_a_non_finite_objective(tmp_path):
    """lr = 5 in float32 (a fresh process: the tests run in float64): the objective overflows
    while the parameters are still finite; the run is diverged at that step and exits 1."""
    out = tmp_path / "d"
    proc = subprocess.run([sys.executable, "-m", "ufm.cli", "train", "bias-free", "--lr", "5",
                           "--steps", "4", "--log-every", "1", "--out", str(out), "--quiet"],
                          capture_output=True, text=True)
    doc = json.loads((out / "result.json").read_text())
    assert proc.returncode == 1 and doc["diverged"] is True
    params = np.load(out / "params.npz")
    assert any(np.isfinite(params[k]).all() for k in params.files)
    first_bad = next(i for i, f in enumerate(doc["history"]["objective"]) if f is None)
    assert doc["diverged_at"] == doc["history"]["step"][first_bad]


def test_the_zero_solution_reports_undefined_measurements(tmp_path):
    r = ufm.train("bias-free", K=3, n=4, d=4, lam_W=10.0, lam_H=10.0, steps=300, log_every=300)
    assert r.final["norm_W"] == 0.0 and r.final["nc4_mismatch"] == 0.0
    for name in ("nc1_H", "nc2_etf_H", "nc2_etf_W", "nc3_etf", "self_duality", "equinorm_H",
                 "equiangularity_W"):
        assert np.isnan(r.final[name]) and name in r.undefined, name
    assert "objective" not in r.undefined


# --- the Python API --------------------------------------------------------------------------

H = jnp.asarray(np.random.default_rng(0).normal(size=(5, 12)))
W = jnp.asarray(np.random.default_rng(1).normal(size=(4, 5)))


@pytest.mark.parametrize("call, fragment", [
    (lambda: metrics.nc1(H, 5), "not a multiple of K=5"),
    (lambda: metrics.nc1(H, 1), "K must be >= 2"),
    (lambda: metrics.nc1(H[0], 4), "2-D array"),
    (lambda: metrics.nc1(H, (3, 3, 3)), "sum to 9"),
    (lambda: metrics.nc1(H, 4.0), "K must be the number of classes"),
    (lambda: metrics.class_means(H.T, (6, 6)), "transposed"),
    (lambda: metrics.nc3_etf(W.T, H), "W must have K >= 2 rows|d must agree"),
    (lambda: metrics.nc3_etf(W, H.T), "d must agree"),
    (lambda: metrics.self_duality(W, H, 3), "3 classes"),
    (lambda: metrics.nc4_mismatch(W, H, jnp.zeros(3)), "b must have shape"),
    (lambda: metrics.nc2_etf_weights(W[0]), "2-D array"),
    (lambda: metrics.equinorm_weights(W[:1]), "K >= 2 rows"),
    (lambda: geometry.etf_distance(W), "square"),
    (lambda: geometry.simplex_etf(None, 1, 4), "K must be >= 2"),
    (lambda: geometry.orthogonal_frame(None, 5, 3), "needs d >= 5"),
    (lambda: ufm.train("bias-free", K=4, n=(5, 5)), "per-class counts"),
    (lambda: ufm.train("bias-free", K=4, steps=0), "steps"),
    (lambda: ufm.train("bias-free", seed=2 ** 32), "seed"),
    (lambda: ufm.train("bias-free", lam_Q=1.0), "unknown hyperparameter"),
    (lambda: optimise.simulate(ufm.get_model("bias-free"), Sizes(3, 2, 3), None,
                               {"lam_W": 1.0, "lr": 0.1, "init_scale": 1.0}, 10, 10),
     "hyper lacks \\['lam_H'\\]"),
    (lambda: optimise.simulate(ufm.get_model("bias-free"), Sizes(3, 2, 3), None, {}, 0, 1),
     "steps must be"),
])
def test_public_api_raises_value_error_naming_the_argument(call, fragment):
    with pytest.raises(ValueError, match=fragment):
        call()


# derandomized (the same examples on every CI run) and without shrinking, so a failure is reported
# at once with its generated example instead of minutes of shrinking
FAST = dict(deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate])


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow], **FAST)
@given(d=st.integers(0, 6), N=st.integers(0, 13), K=st.one_of(st.integers(-1, 7),
       st.lists(st.integers(-1, 6), min_size=0, max_size=5)), rows=st.integers(0, 6))
def test_metrics_on_random_shapes_return_a_scalar_or_raise_value_error(d, N, K, rows):
    rng = np.random.default_rng(d * 100 + N)
    H_ = jnp.asarray(rng.normal(size=(d, N)))
    W_ = jnp.asarray(rng.normal(size=(rows, d)))
    for fn in (lambda: metrics.nc1(H_, K), lambda: metrics.nc2_etf_features(H_, K),
               lambda: metrics.equinorm_features(H_, K), lambda: metrics.nc3_of(W_, H_, K),
               lambda: metrics.nc4_mismatch(W_, H_, None, K)):
        try:
            value = fn()
        except ValueError:
            continue
        assert np.shape(value) == ()


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture], **FAST)
@given(flag=st.sampled_from(["--K", "--n", "--d", "--steps", "--lam-W", "--lr", "--seed",
                             "--log-every", "--restarts", "--init-scale"]),
       value=st.one_of(st.integers(-10 ** 20, 10 ** 20).map(str),
                       st.floats(allow_nan=True, allow_infinity=True).map(repr),
                       st.text(max_size=6), st.sampled_from(["1e400", "-0", "3,3", "1/2", ""])))
def test_cli_train_either_runs_or_refuses_cleanly(flag, value, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("h") / "run"
    argv = ["train", "bias-free", "--K", "2", "--n", "1", "--d", "2", "--steps", "1",
            "--log-every", "1", "--quiet", "--out", str(out), f"{flag}={value}"]
    rc = _run(argv)
    err = capsys.readouterr().err
    assert rc in (0, 1, 2), (argv, rc, err)
    assert "Traceback" not in err
    if rc == 2:
        assert len(err.strip().splitlines()) <= 2 and "error" in err and not out.exists()
    else:
        assert (out / "result.json").exists()


# --- sweeps: one folder, one sweep; a killed sweep resumes to the same arrays ----------------

SWEEP = ["sweep", "bias-free", "--K", "3", "--n", "4", "--d", "4", "--lam-W", "1e-3:1e-1:8:log",
         "--steps", "100000", "--chunk", "2", "--quiet", "--x64"]


def test_a_second_sweep_into_a_held_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "sw"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                           "started": time.time()}))
    assert main(SWEEP + ["--out", str(out)]) == 2
    assert "in use by another sweep" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == [".lock"]
    # a holder that is another live process on this host: refused, and the holder only asked
    # whether it lives (signal 0), never sent a signal
    # (SIGHUP's default restored: under nohup a child inherits it ignored)
    holder = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal("
                               "signal.SIGHUP, signal.SIG_DFL); print('ready', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        (out / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                               "started": time.time()}))
        assert main(SWEEP + ["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and time.strftime("%Y-%m-%d") in err
        (out / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        assert main(SWEEP + ["--out", str(out)]) == 2  # no start time recorded: not 1970
        assert "since an unknown time" in capsys.readouterr().err
        time.sleep(0.2)
        assert holder.poll() is None  # still running
    finally:
        holder.kill()
        holder.wait()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                           "started": 0}))
    assert main(SWEEP[:-6] + ["--steps", "10", "--out", str(out), "--quiet"]) == 0  # stale
    assert not (out / ".lock").exists() and (out / "sweep.npz").exists()


KILLABLE = """
import os, signal, sys, threading
import jax
jax.config.update("jax_enable_x64", True)
import ufm
from ufm import sweep
from ufm.config import hyper_for
from ufm.models import Sizes
import numpy as np

out, kill = sys.argv[1], sys.argv[2] == "kill"
model = ufm.get_model("bias-free")
base = hyper_for(model, {"lam_H": 1e-2}, 0.1, None)
axes = {"lam_W": np.logspace(-3, -1, 12)}

def progress(done, total):  # after the 2nd chunk, SIGKILL this process while the 3rd computes
    if kill and done == 2:
        threading.Timer(0.005, os.kill, (os.getpid(), signal.SIGKILL)).start()

arrays, config = sweep.run_sweep(model, Sizes(3, 4, 4), base, axes, steps=20000, chunk=2,
                                 out=out, progress=progress)
np.savez(os.path.join(out, "arrays.npz"), **arrays)
"""


@pytest.mark.long
def test_a_sweep_killed_mid_chunk_resumes_bit_identical(tmp_path):
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    run = lambda out, mode: subprocess.run([sys.executable, str(script), str(out), mode],
                                           capture_output=True, text=True)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run(whole, "keep").returncode == 0
    proc = run(killed, "kill")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (killed / "arrays.npz").exists()
    assert any(f.name.startswith("chunk_") for f in (killed / "chunks").iterdir())
    resumed = run(killed, "keep")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = np.load(whole / "arrays.npz"), np.load(killed / "arrays.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not list(killed.rglob(".tmp-*")) and not (killed / ".lock").exists()
