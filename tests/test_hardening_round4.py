"""Hardening, round 4 (the caches): `ufm cache --clear` removes only what ufm wrote, a cache
folder that cannot be one never costs a run, and `ufm cache` shows the folder training uses."""
import os
import subprocess
import sys

from ufm import cache
from ufm.cli import main

JAX_ENTRY = "jit_f-" + "ab" * 32 + "-cache"
PROGRAM = "cd" * 20 + ".jaxexport"


def _plant(folder):
    """A cache folder shared with a user's files: ufm's entries, and things it did not write."""
    (folder / "programs").mkdir(parents=True)
    (folder / JAX_ENTRY).write_bytes(b"x" * 10)
    (folder / "programs" / PROGRAM).write_bytes(b"y" * 20)
    (folder / "notes.txt").write_text("mine")
    (folder / "programs" / "mine.jaxexport").write_text("not hex")
    (folder / "data").mkdir()
    (folder / "data" / ("jit_g-" + "ef" * 32 + "-cache")).write_text("below the top: not JAX's")


def test_clear_removes_only_ufm_entries_and_counts_only_them(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "shared"
    _plant(folder)
    monkeypatch.setenv("UFM_CACHE_DIR", str(folder))
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    assert cache.size() == (2, 30)
    assert main(["cache"]) == 0
    assert "(2 files" in capsys.readouterr().out
    assert main(["cache", "--clear"]) == 0
    assert "removed ufm's 2 files" in capsys.readouterr().out
    assert not (folder / JAX_ENTRY).exists() and not (folder / "programs" / PROGRAM).exists()
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "programs" / "mine.jaxexport").exists()
    assert len(list((folder / "data").iterdir())) == 1


def test_clear_of_the_current_directory_leaves_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "work.py").write_text("x = 1")
    (tmp_path / JAX_ENTRY).write_bytes(b"z")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UFM_CACHE_DIR", ".")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    assert main(["cache", "--clear"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["work.py"]


def test_a_cache_folder_that_is_a_file_costs_no_run(tmp_path):
    blocker = tmp_path / "cache-file"
    blocker.write_text("a file")
    env = dict(os.environ, UFM_CACHE_DIR=str(blocker), UFM_COMPILATION_CACHE="1",
               UFM_PROGRAM_CACHE="1")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    run = lambda *args: subprocess.run([sys.executable, "-m", "ufm.cli", *args],
                                       capture_output=True, text=True, env=env, timeout=300)
    proc = run("train", "bias-free", "--steps", "20", "--log-every", "10", "--quiet", "--out",
               str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no compilation cache" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "run" / "result.json").exists()
    proc = run("cache", "--clear")
    assert proc.returncode == 0 and "is a file, not a folder" in proc.stdout
    assert blocker.read_text() == "a file"


def test_ufm_cache_shows_the_folder_jax_was_told_to_use(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jaxs"))
    monkeypatch.setenv("UFM_CACHE_DIR", str(tmp_path / "ufms"))
    assert cache.cache_dir() == str(tmp_path / "jaxs")
    assert main(["cache"]) == 0
    assert str(tmp_path / "jaxs") in capsys.readouterr().out


# --- sweeps keyed by content ---------------------------------------------------------------------

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ufm import sweep  # noqa: E402


def _targets_sweep(path, out, progress=None, chunk=None):
    return sweep.run_grid("scaled-target", {"K": [3], "d": [4], "n": [2]}, {},
                          {"lam_H": np.array([1e-3, 1e-2, 3e-2, 1e-1])}, order=["lam_H"],
                          steps=20, lr=0.1, options={"targets": str(path)}, out=str(out),
                          progress=progress, chunk=chunk)


def test_a_sweep_is_keyed_by_the_targets_file_contents_not_its_name(tmp_path):
    path, out = tmp_path / "T.npy", tmp_path / "sweep"
    np.save(path, np.eye(3))
    first, config = _targets_sweep(path, out)
    assert config["options"]["targets"] == ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    np.save(path, 2 * np.eye(3))  # same name, other contents
    with pytest.raises(ValueError, match="holds a finished sweep of another configuration"):
        _targets_sweep(path, out)
    np.save(path, np.eye(3))  # the same contents again: the finished sweep is loaded
    again, config = _targets_sweep(path, out)
    assert config["work"]["computed_points"] == 0
    np.testing.assert_array_equal(again["objective"], first["objective"])


def test_a_killed_sweep_does_not_resume_with_another_targets_matrix(tmp_path):
    path, out = tmp_path / "T.npy", tmp_path / "sweep"
    np.save(path, np.eye(3))

    class Killed(Exception):
        pass

    def stop(done, total):
        raise Killed  # after the first chunk is stored, as a kill would

    with pytest.raises(Killed):
        _targets_sweep(path, out, progress=stop, chunk=1)
    np.save(path, 2 * np.eye(3))
    with pytest.raises(ValueError, match="unfinished chunks of another sweep configuration"):
        _targets_sweep(path, out, chunk=1)


# --- λ_b = 0 is a free bias ----------------------------------------------------------------------

from ufm import theory  # noqa: E402
from ufm.models import Sizes  # noqa: E402
from ufm.runner import train  # noqa: E402


def test_regularized_bias_at_lam_b_zero_is_certified_as_the_free_bias_model():
    """At λ_b = 0 the regularized-bias model is the unregularized-bias model (Theorem 3.2's closed
    form); its dual bound was identically 0, so the optimum read as 'not the optimum'."""
    run = train("regularized-bias", K=4, n=5, d=6, lam_b=0.0, optimizer="lbfgs")
    free = theory.plain({"lam_W": 5e-3, "lam_H": 5e-3}, Sizes(4, 5, 6), "free")
    assert run.final["objective"] == pytest.approx(free.objective, rel=1e-10)
    assert run.certificate["global"]
    assert run.certificate["lower_bound"] == pytest.approx(free.objective, rel=1e-9)


def test_convex_solver_with_an_unpenalised_bias_stops_at_its_gap():
    """ce-bias at λ_b = 0: the solver's own stopping test was −∞ (every iteration ran)."""
    cap = 20000
    run = train("ce-bias", K=4, n=(20, 20, 2, 2), d=6, lam_b=0.0, optimizer="convex",
                steps=cap)
    assert run.certificate["global"] and run.certificate["converged_at"] < cap
    lbfgs = train("ce-bias", K=4, n=(20, 20, 2, 2), d=6, lam_b=0.0, optimizer="lbfgs")
    assert run.final["objective"] == pytest.approx(lbfgs.final["objective"], rel=1e-9)


# --- ufm plot --out in a place it cannot write --------------------------------------------------

@pytest.mark.parametrize("where", ["file", "unwritable", "folder"])
def test_plot_out_that_cannot_be_written_is_one_line(where, tmp_path, capsys):
    import json

    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"model": "bias-free", "config": {},
                                                 "history": {"step": [0, 1],
                                                             "objective": [1.0, 0.5]}}))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    out = {"file": blocker / "p.png", "unwritable": locked / "p.png", "folder": tmp_path}[where]
    if where == "unwritable" and os.access(locked, os.W_OK):
        pytest.skip("running as a user who can write anywhere (root)")
    assert main(["plot", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "out (--out)" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


# --- cross-entropy at tiny λ: no cancellation ----------------------------------------------------

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ufm import metrics  # noqa: E402
from ufm.models import cross_entropy  # noqa: E402


def test_cross_entropy_near_a_vertex_keeps_its_digits():
    """CE(z, y) = log1p(Σ_(j≠y) e^(z_j − z_y)) evaluated independently, at margins where
    lse(z) − z_y would keep about 16 − log10(1/CE) digits; its gradient is softmax − onehot."""
    rng = np.random.default_rng(0)
    for margin in (5.0, 25.0, 35.0):
        z = rng.normal(size=(4, 6)) * 0.1
        y = np.arange(6) % 4
        z[y, np.arange(6)] += margin
        Y = np.eye(4)[:, y]
        zy = z[y, np.arange(6)]
        expected = sum(np.log1p(np.sum(np.exp(np.delete(z[:, i], y[i]) - zy[i])))
                       for i in range(6))
        got = float(metrics.cross_entropy(jnp.asarray(z), jnp.asarray(Y)))
        assert got == pytest.approx(expected, rel=1e-13, abs=0)  # CE ≈ 1e-14 at margin 35
        grad = np.asarray(jax.grad(lambda x: metrics.cross_entropy(x, jnp.asarray(Y)))(
            jnp.asarray(z)))
        np.testing.assert_allclose(grad, cross_entropy._p_minus_t(z, Y), rtol=1e-12, atol=0)


def test_cross_entropy_at_tiny_lambda_is_never_below_its_minimum_nor_its_bound_above():
    """λ = 1e-12 (float64): the objective, the closed form and the dual bound are ~1.9e-10 and
    were differences of numbers near 1: L-BFGS ended 3.9e-7 (relative) below the closed-form
    minimum and the bound above it, certified 'global' from a negative gap."""
    run = train("ce", K=4, n=5, d=6, lam_W=1e-12, lam_H=1e-12, optimizer="lbfgs")
    best = run.theory.objective
    f, bound = run.final["objective"], run.certificate["lower_bound"]
    assert f >= best * (1 - 1e-12) and f == pytest.approx(best, rel=1e-9)
    assert bound <= best * (1 + 1e-12) and bound <= f
    assert run.certificate["global"] and run.certificate["global_gap"] >= 0


def test_convex_solver_below_the_solution_rank_polishes_and_reports_the_convex_minimum():
    """ce, K = 6, d = 3: the convex solution has rank 5; its top-3 truncation alone was far worse
    than L-BFGS from random starts (0.623 against 0.0898 in the audit's setting). Now it is
    polished on the factorised model, and its lower bound is the convex problem's minimum (the
    objective at d = K), tighter than the bound from a random-start run's point."""
    kw = dict(K=6, n=5, d=3, allow_small_d=True)
    convex_run = train("ce", optimizer="convex", **kw)
    seeds = [train("ce", optimizer="lbfgs", seed=s, **kw) for s in range(3)]
    best = min(r.final["objective"] for r in seeds)
    assert convex_run.final["objective"] <= best * (1 + 1e-9)
    full = train("ce", K=6, n=5, d=6, optimizer="convex")
    assert convex_run.certificate["lower_bound"] == pytest.approx(full.final["objective"],
                                                                  rel=1e-9)
    assert convex_run.certificate["lower_bound"] <= convex_run.final["objective"]
    assert all(convex_run.certificate["lower_bound"] >= r.certificate["lower_bound"]
               for r in seeds)


# --- targets files that are not real matrices --------------------------------------------------

@pytest.mark.parametrize("content, needle", [
    (np.eye(3) * (1 + 1j), "must hold real numbers, got complex128"),
    (np.array([["a", "b", "c"]] * 3), "must hold real numbers, got <U1"),
    ("", "must be a finite K×K matrix"),
    ("a b c\nd e f\ng h i\n", "cannot be read as a K×K matrix"),
])
def test_targets_that_are_not_a_real_matrix_are_one_line(content, needle, tmp_path, capsys):
    if isinstance(content, str):
        path = tmp_path / "T.txt"
        path.write_text(content)
    else:
        path = tmp_path / "T.npy"
        np.save(path, content)
    rc = main(["train", "scaled-target", "--K", "3", "--targets", str(path), "--quiet", "--out",
               str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "targets (--targets)" in err and needle in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_plot_of_a_foreign_result_and_of_a_one_point_sweep(tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "result.json").write_text('{"a": 1}')
    assert main(["plot", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert "not a ufm train result" in err and "--log-every" not in err
    one = tmp_path / "one"
    assert main(["sweep", "bias-free", "--K", "2", "--n", "2", "--d", "2", "--steps", "5",
                 "--quiet", "--out", str(one)]) == 0
    assert main(["plot", str(one)]) == 0
    assert (one / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- plots a person can read ---------------------------------------------------------------------

def test_run_plot_groups_measurements_and_floors_exact_zeros():
    from matplotlib.figure import Figure

    from ufm import plot

    groups = plot.group_series({k: None for k in ("nc1_H", "nc4_mismatch", "rank_H2",
                                                  "norm_W", "cos_margin", "equinorm_H", "xyz")})
    assert groups == {"collapse (NC1–NC4)": ["nc1_H", "nc4_mismatch"],
                      "ranks (linear scale)": ["rank_H2"],
                      "norms, angles and the bias": ["norm_W", "cos_margin", "equinorm_H"],
                      "other measurements": ["xyz"]}
    ax = Figure().add_subplot()
    step = np.arange(5.0)
    plot._floored(ax, step, np.array([1e-2, 1e-3, 0.0, 0.0, 1e-4]), "nc4_mismatch", {})
    ax.set_yscale("log")
    assert ax.get_ylim()[0] > 1e-7  # zeros at a decade below 1e-4, not at 1e-308


def test_lbfgs_run_records_a_curve_by_default(tmp_path):
    """L-BFGS stops after tens of iterations: with the GD default (every 500 steps) its history
    was two records joined by a straight line."""
    out = tmp_path / "run"
    assert main(["train", "bias-free", "--K", "3", "--n", "4", "--d", "4", "--optimizer",
                 "lbfgs", "--quiet", "--out", str(out)]) == 0
    import json

    doc = json.loads((out / "result.json").read_text())
    assert doc["config"]["log_every"] == 10 and len(doc["history"]["step"]) >= 3


# --- a new model's options reach it (issue 34's silent drop) ------------------------------------

@pytest.fixture
def scaled_model():
    """A model registered as a new contributor would (one file's worth): the bias-free objective
    times `power` (an integer option) with a `--flavour` choice; removed after the test."""
    from ufm.models import base, plain

    def build(power=2, flavour="plain"):
        model = plain.plain_model("power-test", None)
        objective = model.objective
        return model._replace(
            name="power-test", description=f"bias-free × {power} ({flavour})",
            objective=lambda p, h, s, session=None: power * objective(p, h, s),
            theory=lambda hyper, sizes: None, lower_bound=None, bound_inputs=None,
            solver=None, two_factor=None)

    options = (base.Option("power", 2, "a multiplier"),
               base.Option("flavour", "plain", "a choice", choices=("plain", "spicy")))
    base.register("power-test", options)(build)
    yield
    del base.REGISTRY["power-test"]  # (its cached builds stay unreachable: get_model checks first)


def test_a_new_models_int_and_choice_options_reach_it(scaled_model, tmp_path, capsys):
    import json

    outs = {}
    for power in ("1", "3"):
        out = tmp_path / power
        assert main(["train", "power-test", "--power", power, "--flavour", "spicy", "--K", "2",
                     "--n", "2", "--d", "2", "--lr", "1e-12", "--steps", "1", "--log-every",
                     "1", "--quiet",
                     "--out", str(out)]) == 0
        assert f"bias-free × {power} (spicy)" in capsys.readouterr().out
        outs[power] = json.loads((out / "result.json").read_text())
    assert outs["1"]["config"]["power"] == 1 and outs["3"]["config"]["flavour"] == "spicy"
    f1, f3 = (outs[p]["history"]["objective"][0] for p in ("1", "3"))
    assert f3 == pytest.approx(3 * f1, rel=1e-12)  # the same initial point, power applied
    assert main(["sweep", "power-test", "--power", "3", "--K", "2", "--n", "2", "--d", "2",
                 "--steps", "1", "--quiet", "--out", str(tmp_path / "sw")]) == 0
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["options"]["power"] == 3
    assert main(["sweep", "power-test", "--power", "x", "--quiet", "--out",
                 str(tmp_path / "bad")]) == 2
    assert "power (--power) must be an integer" in capsys.readouterr().err


# --- ufm measure: labels and W, and a faulty reference -------------------------------------------

def _features(labels, W=None, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(len(labels), 6))
    return X, np.asarray(labels), W


def test_measure_says_how_w_rows_pair_with_labels_and_refuses_ignore_labels():
    from ufm import measure

    X, y, _ = _features(np.repeat([0, 1, 2, 7], 10))
    W = np.random.default_rng(1).normal(size=(4, 6))
    out = measure.measure_arrays(X, y, W)
    assert out["classifier_rows"].startswith("row k is the k-th smallest label")
    assert "3↔7" in out["classifier_rows"] and "3↔7" in measure.format_report(out)
    plain = measure.measure_arrays(X, np.repeat([0, 1, 2, 3], 10), W)
    assert plain["classifier_rows"] == "row k is label k"
    with pytest.raises(ValueError, match="labels must be >= 0: -1 appears in 10 rows"):
        measure.measure_arrays(X, np.repeat([0, 1, 2, -1], 10))
    with pytest.raises(ValueError, match=r"name 4 of W's 5 classes .* W\[\[0, 1, 3, 4\]\]"):
        measure.measure_arrays(X, np.repeat([0, 1, 3, 4], 10),
                               np.random.default_rng(2).normal(size=(5, 6)))


def test_a_nan_in_the_reference_is_the_references_fault(tmp_path, capsys):
    X, y, _ = _features(np.repeat([0, 1, 2, 3], 10))
    bad = X.copy()
    bad[3, 2] = np.nan
    np.savez(tmp_path / "test.npz", features=X, labels=y)
    np.savez(tmp_path / "train.npz", features=bad, labels=y)
    assert main(["measure", str(tmp_path / "test.npz"), "--reference", str(tmp_path / "train.npz"),
                 "--quiet", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"reference (--reference) {tmp_path / 'train.npz'}" in err and "row 3" in err


def _refused_at_registration(name, build, message):
    """Register `build` as model `name`, check get_model refuses it with `message`, unregister."""
    from ufm.models import base

    base.register(name)(build)
    try:
        with pytest.raises(TypeError, match=message):
            base.get_model(name)
    finally:
        del base.REGISTRY[name]


def test_a_malformed_declaration_is_an_error_naming_the_file():
    from ufm.models import base, plain

    def build():
        model = plain.plain_model("broken-test", None)
        return model._replace(name="broken-test",
                              hypers=model.hypers + (base.Hyper("gamma", -1.0, "a scale",
                                                                positive=True),))

    _refused_at_registration("broken-test", build, r"test_hardening_round4 \(model "
                             r"'broken-test'\): malformed Hyper 'gamma': its default must be")


@pytest.fixture
def tied_model():
    """A new model whose two weight decays are tied to one umbrella name, `lam_both` (as the
    layered models tie every lam_W<l> to lam_W): declared in its file only."""
    from ufm.models import base, plain

    def build():
        model = plain.plain_model("tied-test", None)
        hypers = tuple(h._replace(tied="lam_both") if h.name in ("lam_W", "lam_H") else h
                       for h in model.hypers)
        return model._replace(name="tied-test", hypers=hypers)

    base.register("tied-test")(build)
    yield
    del base.REGISTRY["tied-test"]


def test_an_umbrella_hyperparameter_reaches_its_members_with_no_edit_elsewhere(tied_model,
                                                                               tmp_path, capsys):
    """Issue 34: tying is declared by the model (`Hyper.tied`), not recognised by the name lam_W:
    the keyword, the flag and a sweep axis of a new umbrella name set every member not given on
    its own."""
    import json

    from ufm import runner, spec, sweep

    s = spec.build("tied-test", lam_both=0.03, lam_H=0.01)
    assert s.hyper["lam_W"] == 0.03 and s.hyper["lam_H"] == 0.01
    r = runner.train("tied-test", K=2, n=2, d=2, steps=1, lam_both=0.02)
    assert r.config["lam_W"] == 0.02 and r.config["lam_H"] == 0.02
    assert main(["train", "tied-test", "--lam-both", "0.04", "--K", "2", "--n", "2", "--d", "2",
                 "--steps", "1", "--quiet", "--out", str(tmp_path / "t")]) == 0
    config = json.loads((tmp_path / "t" / "result.json").read_text())["config"]
    assert config["lam_W"] == config["lam_H"] == 0.04
    arrays, _ = sweep.run_grid("tied-test", {"K": [2], "d": [2], "n": [2]}, {},
                               {"lam_both": np.array([1e-3, 1e-1])}, order=["lam_both"], steps=3)
    for lam_both, got in zip((1e-3, 1e-1), arrays["objective"]):  # each point: both members set
        want = runner.train("tied-test", K=2, n=2, d=2, steps=3, lam_W=lam_both, lam_H=lam_both)
        assert got == pytest.approx(want.final["objective"], rel=1e-12)
    with pytest.raises(ValueError, match="lam_both .*does not apply to model 'bias-free'"):
        spec.build("bias-free", lam_both=0.1)


@pytest.mark.parametrize("tied", ["", "lam W", 5, "lam_W"])
def test_a_malformed_tie_is_an_error_naming_the_file(tied):
    """`Hyper.tied` must name an umbrella other than the hyperparameter itself."""
    from ufm.models import plain

    def build():
        model = plain.plain_model("tie-test", None)
        return model._replace(name="tie-test", hypers=tuple(
            h._replace(tied=tied) if h.name == "lam_W" else h for h in model.hypers))

    _refused_at_registration("tie-test", build, r"\(model 'tie-test'\): malformed Hyper "
                             r"'lam_W': `tied` must be another identifier")
