"""Hardening, round 3: every class of silent wrong result, crash and missing refusal found by the
hostile-input round has a test here that fails on the code before the fix.

Certificates cannot be satisfied by an explosion; resumes cannot mix point layouts or delete
another configuration's chunks; `ufm measure` reads only what a file really holds and stays exact
at large offsets; decisions with ties are undefined, not accuracies."""
import io
import json
import os
import time
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ufm import certificate, measure, optimise, store, sweep
from ufm.certificate import stationary_warning
from ufm.cli import main
from ufm.models import get_model
from ufm.runner import train


# --- 1. certificates that cannot lie -----------------------------------------------------------

@pytest.mark.parametrize("objectives, steps, expected", [
    ([1.0, 0.5, 1e-26, 1e64], [0, 10, 20, 30], 30),  # the L-BFGS jump: finite, huge
    ([1.0, 0.5, 0.25], [0, 10, 20], -1),  # descending
    ([1.0, 2.0, 0.5], [0, 10, 20], -1),  # a transient rise, ends below the start
    ([1.0, 1e-3, 3e-3], [0, 10, 20], 20),  # ends > best + max(|best|, floor)
    ([1.0, 1e-3, 1.5e-3], [0, 10, 20], -1),  # within it
    ([1.0, 0.5, np.nan], [0, 10, 20], 20),  # non-finite
    ([1.0, 3.0, 0.9, 5.0], [0, 10, 20, 30], 10),  # the first record above the start
    ([1.0, 0.5, np.nan], [0, 10, -1], -1),  # a record after a stop is not the run's
    ([2.0, 2.0, 2.0], [0, 10, 20], -1),  # never moved: not an explosion
])
def test_blown_up_finds_explosions_the_gradient_test_cannot_see(objectives, steps, expected):
    f, s = np.array(objectives), np.array(steps, np.int32)
    assert int(optimise.blown_up(s, f)) == expected
    # the same rule inside a compiled program, and batched
    assert int(jax.jit(optimise.blown_up)(jnp.asarray(s), jnp.asarray(f))) == expected
    both = optimise.blown_up(np.stack([s, s]), np.stack([f, f]))
    np.testing.assert_array_equal(both, [expected, expected])


def test_a_diverged_run_is_never_converged():
    cert = certificate.certificate([1.0, 1e64], 1e-18, 5, 10, 1e-6, diverged=True)
    assert not cert["converged"] and cert["converged_at"] is None
    assert certificate.certificate([1.0, 0.5], 1e-18, 5, 10, 1e-6)["converged"]


def test_an_exploding_run_is_diverged_not_converged():
    """Plain GD with a step far past stability: the objective grows by orders of magnitude while
    staying finite, so ‖∇f‖/|f| becomes tiny. The run must say it diverged, and where."""
    r = train("bias-free", K=3, n=2, d=3, lr=2.0, steps=5, log_every=1)
    f = r.history["objective"]
    assert np.isfinite(f[-1]) and f[-1] > 1e60 * f[0]  # finite, exploded
    assert r.certificate["grad_norm"] < r.certificate["tol"]  # the gradient test alone passes
    assert r.diverged_at == 1  # the first record above the start
    assert not r.certificate["converged"] and r.certificate["converged_at"] is None


def test_a_converged_run_far_from_the_optimum_is_warned_about():
    """The origin is a stationary point of the bias-free UFM: `--init-scale 0` converges there
    at step 0 (gradient zero), far from the closed form. The CLI warns instead of passing it."""
    r = train("bias-free", K=3, n=2, d=3, init_scale=0.0, steps=10, log_every=5, tol=1e-6)
    cert = r.certificate
    assert cert["converged"] and cert["closed_form_gap"] > 1.0
    line = stationary_warning(cert, r.config)
    assert line and "not the optimum" in line and "--init-scale 0" in line
    near = dict(cert, closed_form_gap=1e-9)
    assert stationary_warning(near, r.config) is None


def test_a_tolerance_with_steps_below_log_every_runs(capsys):
    """A zero-length loop (every step in the tail) used to crash the tolerance path."""
    r = train("bias-free", K=3, n=2, d=3, steps=10, log_every=50, tol=1e-3)
    assert list(r.steps) == [0, 10] and r.certificate["steps_taken"] == 10


# --- 2. resumes that cannot mix ------------------------------------------------------------------

class _Stop(Exception):
    pass


def _partial_sweep(out, axes, static=None):
    """A sweep into `out` interrupted after its first chunk (chunks of 2 points)."""
    def progress(done, total):
        if done > 0:
            raise _Stop
    with pytest.raises(_Stop):
        sweep.run_grid("bias-free", static or {"K": [3], "d": [3], "n": [2]}, {}, axes,
                       order=list(axes), steps=30, chunk=2, out=str(out), progress=progress)
    assert any(f.startswith("chunk_") for _, _, fs in os.walk(out / "chunks") for f in fs)


def test_a_resume_with_reordered_axes_is_refused_and_a_finished_one_is_reordered(tmp_path):
    a = {"lam_W": np.array([1e-3, 1e-2]), "lam_H": np.array([2e-3, 2e-2])}
    b = {"lam_H": a["lam_H"], "lam_W": a["lam_W"]}  # same axes, same lengths, other order
    _partial_sweep(tmp_path / "p", a)
    with pytest.raises(ValueError, match="another configuration"):
        sweep.run_grid("bias-free", {"K": [3], "d": [3], "n": [2]}, {}, b, order=list(b),
                       steps=30, chunk=2, out=str(tmp_path / "p"))
    static = {"K": [3], "d": [3], "n": [2]}
    done, _ = sweep.run_grid("bias-free", static, {}, a, order=list(a), steps=30, chunk=2,
                             out=str(tmp_path / "p"))
    again, cfg = sweep.run_grid("bias-free", static, {}, b, order=list(b), steps=30, chunk=2,
                                out=str(tmp_path / "p"))  # finished: loaded, in the new order
    assert cfg["axes_order"] == ["lam_H", "lam_W"]
    # nothing computed, every point loaded (the work record a caller reports)
    assert cfg["work"] == {"computed_points": 0, "loaded_points": 4, "computed_config_steps": 0}
    np.testing.assert_array_equal(again["objective"], done["objective"].T)
    fresh, _ = sweep.run_grid("bias-free", static, {}, b, order=list(b), steps=30, chunk=2)
    np.testing.assert_array_equal(again["objective"], fresh["objective"])


def test_a_rerun_with_another_static_axis_keeps_the_partial_chunks(tmp_path):
    axes = {"lam_W": np.array([1e-3, 1e-2, 1e-1])}
    _partial_sweep(tmp_path / "p", axes)
    before = sorted(os.listdir(tmp_path / "p" / "chunks"))
    with pytest.raises(ValueError, match="unfinished chunks of another sweep"):
        sweep.run_grid("bias-free", {"K": [4], "d": [4], "n": [2]}, {}, axes, order=["lam_W"],
                       steps=30, chunk=2, out=str(tmp_path / "p"))
    assert sorted(os.listdir(tmp_path / "p" / "chunks")) == before


@pytest.mark.parametrize("text", ["", '[1, 2]', '"text"', '{"host": "%s"}', '{"pid": "12"}'])
def test_a_lock_this_module_did_not_write_is_garbled(tmp_path, text):
    """An empty lock (its writer died between creating and writing it), or JSON that is not a
    lock record (a list, a string, a record with no integer pid — even on this host): held while
    young, taken over once old, released after; never a traceback."""
    import socket

    out = tmp_path / "sw"
    out.mkdir()
    (out / ".lock").write_text(text.replace("%s", socket.gethostname()))
    with pytest.raises(ValueError, match="in use by another sweep"):
        with store.folder_lock(str(out)):
            pass
    old = time.time() - 2 * store.EMPTY_LOCK_SECONDS
    os.utime(out / ".lock", (old, old))
    with store.folder_lock(str(out)):
        assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()


# --- 3. `ufm measure` reads only what is there ---------------------------------------------------

def _npz_with_truncated_features(path, X, y, cut):
    buf = io.BytesIO()
    np.save(buf, X)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("features.npy", buf.getvalue()[:-cut])
        lab = io.BytesIO()
        np.save(lab, y)
        z.writestr("labels.npy", lab.getvalue())


def test_a_truncated_member_is_refused_when_streamed(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), np.repeat(np.arange(4), 10)
    path = str(tmp_path / "t.npz")
    _npz_with_truncated_features(path, X, y, 8 * 3)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        measure.measure_file(path, stream=True, quiet=True)
    with pytest.raises(ValueError, match="not a readable .npz"):
        measure.measure_file(path, quiet=True)
    np.save(tmp_path / "o.npy", np.array([[1.0]], dtype=object), allow_pickle=True)
    np.save(tmp_path / "l.npy", np.arange(1))
    with pytest.raises(ValueError, match="Python objects|not a readable"):
        measure.measure_file(str(tmp_path / "o.npy"), labels=str(tmp_path / "l.npy"),
                             stream=True, quiet=True)


@pytest.mark.parametrize("name", ["empty.npz", "empty.npy"])
def test_a_zero_byte_file_is_a_clear_error(tmp_path, name, capsys):
    (tmp_path / name).write_bytes(b"")
    (tmp_path / "l.npy").write_bytes(b"")
    argv = ["measure", str(tmp_path / name), "--out", str(tmp_path / "o"), "--quiet"]
    if name.endswith(".npy"):
        argv += ["--labels", str(tmp_path / "l.npy")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not a readable" in err and "Traceback" not in err


def test_extra_keys_that_are_not_2d_are_not_layers(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), np.repeat(np.arange(4), 10)
    np.savez(tmp_path / "f.npz", h=X, labels=y, epoch=np.int64(3), lr=np.arange(5.0))
    doc = measure.measure_file(str(tmp_path / "f.npz"), quiet=True)
    assert list(doc["layers"]) == ["h"]


def test_huge_d_with_few_classes_is_measured_without_a_d_by_d_array(tmp_path):
    """Σ_W is gathered in the span of the class means: d = 400,000 with K = 4 needs [3, 3], not
    the 1.3 TB of a d×d scatter (which the estimate once refused)."""
    X = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32,
                                  shape=(8, 400000))
    X[:] = np.random.default_rng(0).normal(size=(8, 400000))
    del X
    np.save(tmp_path / "l.npy", np.arange(8) % 4)
    doc = measure.measure_file(str(tmp_path / "x.npy"), labels=str(tmp_path / "l.npy"),
                               stream=True, quiet=True)
    assert np.isfinite(doc["layers"]["features"]["nc1"])


def test_huge_k_and_d_are_refused_with_an_estimate_before_allocating(tmp_path):
    """K = 100,000 classes of d = 400,000 (a sparse memory-mapped file: nothing is written):
    the class means alone are 300 GB, refused before any of them is allocated."""
    X = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32,
                                  shape=(100000, 400000))
    del X
    np.save(tmp_path / "l.npy", np.arange(100000))
    with pytest.raises(ValueError, match=r"needs about [0-9,.]+ GiB .* host memory"):
        measure.measure_file(str(tmp_path / "x.npy"), labels=str(tmp_path / "l.npy"),
                             stream=True, quiet=True)


def test_nan_labels_give_the_clean_error_without_a_numpy_warning():
    X = np.random.default_rng(0).normal(size=(6, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="labels must be integers, got nan at row 2"):
            measure.measure_arrays(X, np.array([0, 1, np.nan, 0, 1, 1]), quiet=True)


# --- 4. no catastrophic cancellation at large offsets ------------------------------------------

@pytest.mark.parametrize("offset", [1e8, 1e10, 1e12])
def test_measurements_do_not_depend_on_a_large_common_offset(offset):
    """Features X = Z + c with c ≫ spread. X − c is exact in float64 (Sterbenz), so measuring it
    is the reference: every value must agree to 1e-9 (before centring first, NCC decisions and
    NC1 broke from c ≈ 1e8 × the spread)."""
    rng = np.random.default_rng(1)
    K, d, per = 5, 6, 40
    labels = np.repeat(np.arange(K), per)
    Z = rng.normal(size=(K, d))[labels] * 3 + rng.normal(size=(K * per, d))
    X = Z + offset
    W = rng.normal(size=(K, d))
    ref = measure.measure_arrays(X - offset, labels, W, quiet=True)["layers"]["features"]
    got = measure.measure_arrays(X, labels, W, quiet=True)["layers"]["features"]
    shifted = {"rank_means", "nc2_of_H", "nc3_of", "bias_global_mean", "accuracy",
               "nc4_mismatch", "nc4_mismatch_nobias"}  # depend on the raw means / W·x
    for key, value in ref.items():
        if key in shifted or not isinstance(value, float):
            continue
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert 0.5 < got["ncc_accuracy"] <= 1.0


# --- 8. ties are undefined, every NaN says why --------------------------------------------------

def test_argmax_ties_are_nan_with_a_reason():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 10)
    X = rng.normal(size=(3, 4))[labels] + 0.1 * rng.normal(size=(30, 4))
    doc = measure.measure_arrays(X, labels, np.zeros((3, 4)), quiet=True)["layers"]["features"]
    for key in ("accuracy", "nc4_mismatch", "nc4_mismatch_nobias"):
        assert np.isnan(doc[key]) and "ties" in doc["undefined"][key]
    assert doc["ncc_accuracy"] > 0.9
    X2 = X.copy()
    X2[labels == 1] = X2[labels == 0][:10]  # class 1 the same points as class 0: same mean
    doc = measure.measure_arrays(X2, labels, quiet=True)["layers"]["features"]
    assert np.isnan(doc["ncc_accuracy"]) and "equally near" in doc["undefined"]["ncc_accuracy"]
    nan = [k for k, v in doc.items() if isinstance(v, float) and np.isnan(v)]
    assert nan and set(nan) <= set(doc["undefined"])


# --- tests that pin a number a plausible wrong formula would change -----------------------------

def test_ncc_accuracy_is_the_nearest_centre_rule_not_the_largest_product():
    """Class means of very different norms: the nearest centre and the largest inner product
    disagree for many points. ncc_accuracy must be the nearest centre's, counted directly."""
    rng = np.random.default_rng(3)
    centres = np.array([[1.0, 0.0], [6.0, 0.5], [0.0, 1.5]])
    labels = np.repeat(np.arange(3), 50)
    X = centres[labels] + 0.9 * rng.normal(size=(150, 2))
    doc = measure.measure_arrays(X, labels, quiet=True)["layers"]["features"]
    means = np.stack([X[labels == k].mean(0) for k in range(3)])
    nearest = np.argmin(((X[:, None] - means[None]) ** 2).sum(-1), axis=1)
    product = np.argmax(X @ means.T, axis=1)
    assert np.mean(nearest == labels) != np.mean(product == labels)
    assert doc["ncc_accuracy"] == np.mean(nearest == labels)


def test_max_angle_h_and_the_relative_rank_threshold():
    rng = np.random.default_rng(4)
    K, d = 4, 6
    labels = np.repeat(np.arange(K), 20)
    X = rng.normal(size=(K, d))[labels] * 2 + rng.normal(size=(K * 20, d))
    doc = measure.measure_arrays(X, labels, quiet=True)["layers"]["features"]
    means = np.stack([X[labels == k].mean(0) for k in range(K)])
    M = means - means.mean(0)
    U = M / np.linalg.norm(M, axis=1, keepdims=True)
    cos = (U @ U.T)[~np.eye(K, dtype=bool)]
    assert doc["max_angle_H"] == pytest.approx(np.mean(np.abs(cos + 1 / (K - 1))), rel=1e-12)
    tiny = measure.measure_arrays(X * 1e-9, labels, quiet=True)["layers"]["features"]
    assert tiny["rank_means"] == doc["rank_means"] == K  # relative, not absolute
    assert tiny["rank_centred_means"] == doc["rank_centred_means"] == K - 1


# --- the distributed path, run with two processes -----------------------------------------------

def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.long
def test_two_processes_write_the_single_process_sweep(tmp_path):
    """`ufm sweep --distributed` as two processes on this machine (a local coordinator, one CPU
    device each, JAX's CPU collectives): process 0 writes a sweep.npz equal to one process with
    two host devices (the same sharding)."""
    import subprocess
    import sys

    sweep_argv = [sys.executable, "-m", "ufm.cli", "sweep", "bias-free", "--K", "3", "--n", "2",
                  "--d", "3", "--lam-W", "1e-3:1e-1:5:log", "--lam-H", "1e-2,3e-2", "--steps",
                  "200", "--x64", "--quiet"]
    port = _free_port()
    dist = tmp_path / "dist"
    procs = [subprocess.Popen(sweep_argv + ["--out", str(dist), "--distributed", "--coordinator",
                                            f"localhost:{port}", "--num-processes", "2",
                                            "--process-id", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert "2 × cpu on 2 hosts" in outs[0][0] or "on 2 hosts" in outs[0][0], outs[0][0]
    one = subprocess.run(sweep_argv + ["--out", str(tmp_path / "one"), "--host-devices", "2"],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    a, b = np.load(dist / "sweep.npz"), np.load(tmp_path / "one" / "sweep.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not (dist / "chunks").exists() and not (dist / ".lock").exists()


def test_the_relative_gradient_has_an_objective_floor():
    """A run whose objective is below the floor (|f| < 1e-6, tiny λ's): the certificate's
    ‖∇f‖/max(|f|, 1e-6) is ‖∇f‖/1e-6, computed here independently at the final parameters (a
    version without the floor would divide by |f| and report 1e3× more)."""
    r = train("bias-free", K=3, n=2, d=3, lam_W=1e-9, lam_H=1e-9, steps=300, log_every=100,
              lr=0.5)
    f = r.history["objective"][-1]
    assert 0 < f < 1e-7
    model, hyper = get_model("bias-free"), {"lam_W": 1e-9, "lam_H": 1e-9}
    from ufm.models import Sizes

    params = {k: jnp.asarray(v) for k, v in r.params.items()}
    grads = jax.grad(lambda p: model.objective(p, hyper, Sizes(3, 2, 3)))(params)
    norm = float(np.sqrt(sum(float(jnp.sum(g * g)) for g in grads.values())))
    assert r.certificate["grad_norm"] == pytest.approx(norm / optimise.OBJECTIVE_FLOOR, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 12345, 2 ** 32 - 1])
def test_the_host_made_key_is_jax_s_key(seed):
    np.testing.assert_array_equal(optimise.prng_key(seed), jax.random.PRNGKey(seed))


def test_the_results_of_all_static_combinations_are_checked_together(monkeypatch):
    """Each static combination's results fit on its own; together they do not: refused before
    anything is computed (with a machine of 5 MB for the test's sake)."""
    from ufm import limits

    monkeypatch.setattr(limits, "machine_memory", lambda: (5 * 2 ** 20, "host memory"))
    axes = {"lam_W": np.logspace(-3, -1, 1000)}
    with pytest.raises(ValueError, match=r"this sweep's results \(6 static combinations"):
        sweep.run_grid("bias-free", {"K": [3, 4, 5, 6, 7, 8], "d": [8], "n": [2]}, {}, axes,
                       order=["lam_W"], steps=10)
    sweep.run_grid("bias-free", {"K": [3], "d": [8], "n": [2]}, {}, {"lam_W": axes["lam_W"][:8]},
                   order=["lam_W"], steps=10)  # one combination alone fits


def test_a_run_that_never_moved_is_not_told_to_take_more_steps():
    from ufm.certificate import convergence_warning
    from ufm.models import get_model
    from ufm.runner import Result

    cert = dict(converged=False, grad_norm=3e-3, tol=1e-3, steps_taken=50, closed_form_gap=0.4,
                global_gap=None, global_note=None)
    r = Result(model="bias-free", config=dict(model="bias-free", optimizer="lbfgs",
                                              dtype="float32"),
               params={}, steps=np.arange(3), history={"objective": np.full(3, 0.7)}, final={},
               undefined=None, theory=None, diverged_at=None, restart_objectives=[0.7],
               restart_global=None, sessions=None, certificate=cert, reference=None)
    line = convergence_warning(r, get_model("bias-free"))
    assert "never moved" in line and "--x64" in line and "more --steps" not in line
    moved = r._replace(history={"objective": np.array([0.9, 0.8, 0.7])})
    assert "more --steps" in convergence_warning(moved, get_model("bias-free"))


def test_below_dnc_on_both_sides_and_the_relu_exact_flag():
    from ufm import theory
    from ufm.models import Sizes

    lams = {"lam_H1": 0.004, **{f"lam_W{l}": 0.004 for l in range(1, 5)}}
    deep = theory.layered(lams, Sizes(10, 1, 30), 4, "relu")
    f = deep.objective
    assert theory.landing(deep, f * (1 - 1e-3))["below_dnc"]
    assert not theory.landing(deep, f * (1 - 1e-8))["below_dnc"]  # within the tolerance
    assert not theory.landing(deep, f * 1.01)["below_dnc"]
    assert theory.landing(deep, f * 1.01)["dnc_gap"] == pytest.approx(0.01, rel=1e-9)
    two = {"lam_H1": 0.004, "lam_W1": 0.004, "lam_W2": 0.004}
    assert theory.layered(two, Sizes(10, 1, 30), 2, "relu").exact  # Theorem 4.2: the optimum
    assert not deep.exact  # deeper: the DNC value is a reference only
    assert theory.layered(lams, Sizes(10, 1, 30), 4, "linear").exact


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"a string"'])
def test_a_sweep_json_ufm_did_not_write_is_another_configuration(tmp_path, capsys, text):
    """A finished-looking folder whose sweep.json is not a record of this configuration (garbled,
    or JSON of another shape) is refused with the message that says so — not a JSON parser's
    error, not a traceback — and left as it was."""
    out = tmp_path / "sw"
    out.mkdir()
    (out / "sweep.json").write_text(text)
    assert main(["sweep", "bias-free", "--K", "3", "--n", "2", "--d", "3", "--lam-W",
                 "1e-3,1e-2", "--steps", "5", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds a finished sweep of another configuration" in err and "Traceback" not in err
    assert (out / "sweep.json").read_text() == text


@pytest.mark.parametrize("host", ["", "~~~another-host"])  # sorting before and after ours
def test_a_lock_from_another_host_is_never_taken_over(tmp_path, host):
    """Its pid means nothing here (that process may be alive there): held, whatever the pid and
    however the host names compare."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "sw"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": host, "started": 0}))
    with pytest.raises(ValueError, match="in use by another sweep"):
        with store.folder_lock(str(out)):
            pass


def test_a_holder_this_user_may_not_signal_is_alive(monkeypatch):
    """os.kill(pid, 0) on another user's process raises PermissionError: it exists."""
    def denied(pid, signal):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(store.os, "kill", denied)
    assert store._alive(12345) is True


def test_a_lock_that_vanishes_while_read_counts_as_fresh(tmp_path):
    """Its writer is that instant releasing it (or taking it): never judged stale by its age."""
    assert abs(store._mtime(str(tmp_path / "gone")) - time.time()) < 5


def test_a_finished_one_point_sweep_reloads_as_one_point(tmp_path):
    static = {"K": [3], "d": [3], "n": [2]}
    sweep.run_grid("bias-free", static, {}, {}, order=[], steps=5, out=str(tmp_path / "one"))
    _, cfg = sweep.run_grid("bias-free", static, {}, {}, order=[], steps=5,
                            out=str(tmp_path / "one"))
    assert cfg["work"] == {"computed_points": 0, "loaded_points": 1, "computed_config_steps": 0}
