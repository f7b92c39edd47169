"""L-BFGS, stopping at a tolerance, and the convergence certificate (float64)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm import optimise, sweep
from ufm.config import hyper_for
from ufm.cli import main
from ufm.models import MODELS, Sizes

SIZES = Sizes(3, 4, 5)
KEY = jax.random.PRNGKey(1)


def hyper(**kw):
    return optimise.as_hyper(dict(dict(lam_W=0.02, lam_H=0.03, lr=0.1, init_scale=1.0), **kw))


# Small λ: GD's rate scales with step·λ, so 3000 GD steps end far from the optimum, while L-BFGS
# stops at a relative gradient of 1e-10. Near a minimiser f − f* ≈ ‖∇f‖²/(2μ), so its gap is
# ≈ 1e-20·f/(2μ) ≪ 1e-10 for μ ≳ λ ≥ 1e-4: a 1e-10 relative gap is met with room to spare.
# Both regularized-bias branches: ETF (c ≥ λ_b/(1+λ_b)) and saturated bias (c < λ_b/(1+λ_b)).
SMALL_LAMBDA = [
    ("bias-free", dict(lam_W=1e-4, lam_H=3e-4)),
    ("unregularized-bias", dict(lam_W=1e-4, lam_H=3e-4)),
    ("regularized-bias", dict(lam_W=1e-4, lam_H=3e-4, lam_b=1e-3)),
    ("regularized-bias", dict(lam_W=1e-4, lam_H=3e-4, lam_b=0.5)),
    ("ce", dict(lam_W=1e-3, lam_H=1e-3)),
    ("ce-bias", dict(lam_W=1e-3, lam_H=1e-3, lam_b=1e-3)),
    ("linear-extended", dict(lam_W1=1e-3, lam_W2=2e-3, lam_H1=1e-3)),
]


@pytest.mark.parametrize("name,lams", SMALL_LAMBDA)
def test_lbfgs_reaches_the_closed_form_where_gd_cannot(name, lams):
    kw = dict(K=4, n=10, d=8, steps=3000, log_every=3000, init_scale=1.0, **lams)
    fast = ufm.train(name, optimizer="lbfgs", **kw)
    assert fast.theory.structure != "zero"
    if name == "regularized-bias":  # the two branches of the closed form
        expect = "ETF" if lams["lam_b"] < 0.01 else "ETF+mean"
        assert fast.theory.structure == expect
    cert = fast.certificate
    assert abs(cert["closed_form_gap"]) <= 1e-10, cert
    assert cert["converged"] and cert["converged_at"] is not None and cert["steps_taken"] < 3000
    slow = ufm.train(name, optimizer="gd", **kw)
    assert slow.certificate["closed_form_gap"] > 1e-3  # GD: still far after the same steps
    assert not slow.certificate["converged"]  # … and its certificate says so


@pytest.mark.parametrize("opt,tol", [("gd", 1e-6), ("momentum", 1e-6), ("lbfgs", 1e-9)])
def test_tol_stops_and_the_stopped_state_is_frozen(opt, tol):
    model = MODELS["bias-free"]
    run = lambda steps, t, every=100: optimise.compiled_simulation(
        model, SIZES, steps, every, opt, 1, t)(KEY, hyper())
    a = run(5000, tol)
    t = int(a.converged_at)
    assert 0 < t < 5000 and int(a.diverged_at) == -1
    assert float(a.grad_norm) <= tol
    # A longer cap and other intervals: the run stops at the same step in the same state.
    b = run(9000, tol, every=300)
    assert int(b.converged_at) == t
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    # The stopped state is the state after exactly t steps of the uninterrupted run: bit for bit
    # for first-order methods. L-BFGS's line search compiles differently inside the stopping
    # loop; its rounding (1e-15 per step, amplified by the quasi-Newton updates) allows 1e-8.
    c = run(t, None, every=t)
    for k in a.params:
        if opt == "lbfgs":
            np.testing.assert_allclose(a.params[k], c.params[k], rtol=1e-8, atol=1e-12)
        else:
            np.testing.assert_array_equal(a.params[k], c.params[k])
    assert np.all(np.diff(optimise.trim(a).steps) > 0) and optimise.trim(a).steps[-1] == t


@pytest.mark.parametrize("opt", ["gd", "lbfgs"])
def test_a_vmapped_grid_stops_when_every_point_has_and_keeps_stopped_points_frozen(opt):
    model = MODELS["bias-free"]
    tol = 1e-6 if opt == "gd" else 1e-9
    lams = jnp.array([0.01, 0.03, 0.08])
    grid = dict(hyper(), lam_H=lams)
    axes = {k: (0 if k == "lam_H" else None) for k in grid}
    run = lambda cap: jax.jit(jax.vmap(lambda h: optimise.simulate(
        model, SIZES, KEY, h, cap, 100, opt, tol), in_axes=(axes,)))(grid)
    a, b = run(20000), run(30000)
    stops = np.asarray(a.converged_at)
    assert np.all(stops > 0) and len(set(stops.tolist())) == 3  # each point stops at its own step
    np.testing.assert_array_equal(b.converged_at, stops)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])  # frozen bit for bit
    # each point is the run it would be alone (vmap batches the products: rounding only)
    single = optimise.compiled_simulation(model, SIZES, 20000, 100, opt, 1, tol)
    for i, lam in enumerate(lams):
        alone = single(KEY, hyper(lam_H=lam))
        assert abs(int(alone.converged_at) - int(stops[i])) <= 1
        f_alone = optimise.trim(alone).history["objective"][-1]
        f_grid = optimise.trim(optimise.pick(a, i)).history["objective"][-1]
        assert f_grid == pytest.approx(float(f_alone), rel=1e-12)


def test_vmapped_lbfgs_equals_per_point_lbfgs():
    """A fixed number of iterations (before convergence), so both follow the same trajectory."""
    model = MODELS["linear-extended"]
    grid = optimise.as_hyper(dict(lam_H1=jnp.array([1e-3, 1e-2]), lam_W1=0.01, lam_W2=0.02,
                                  lr=0.1, init_scale=0.5))
    axes = {k: (0 if k == "lam_H1" else None) for k in grid}
    run = jax.jit(lambda h: optimise.simulate(model, SIZES, KEY, h, 25, 5, "lbfgs"))
    batched = jax.jit(jax.vmap(run, in_axes=(axes,)))(grid)
    for i in range(2):
        single = run({k: (v[i] if k == "lam_H1" else v) for k, v in grid.items()})
        np.testing.assert_allclose(batched.history["objective"][i], single.history["objective"],
                                   rtol=1e-11)
        for k in single.params:
            np.testing.assert_allclose(batched.params[k][i], single.params[k], rtol=1e-8,
                                       atol=1e-12)


def test_lbfgs_refuses_constrained_models():
    with pytest.raises(ValueError, match="lbfgs is for the unconstrained models; 'fixed-etf'"):
        ufm.train("fixed-etf", optimizer="lbfgs")


def test_certificate_of_an_unconverged_run_and_the_cli_warning(tmp_path, capsys):
    r = ufm.train("bias-free", K=3, n=4, d=5, lam_W=1e-6, lam_H=1e-6, steps=2000, log_every=500)
    cert = r.certificate
    assert not cert["converged"] and cert["grad_norm"] > cert["tol"] == 1e-6
    assert cert["closed_form_gap"] > 1 and cert["steps_taken"] == 2000
    assert cert["rel_decrease"] > 0 and cert["converged_at"] is None
    out = tmp_path / "r"
    rc = main(["train", "bias-free", "--K", "3", "--n", "4", "--d", "5", "--lam-W", "1e-6",
               "--lam-H", "1e-6", "--steps", "2000", "--x64", "--quiet", "--out", str(out)])
    assert rc == 0
    err = capsys.readouterr().err
    assert "warning: the run did not converge" in err and "--optimizer lbfgs" in err
    doc = json.loads((out / "result.json").read_text())
    assert doc["certificate"]["converged"] is False
    rc = main(["train", "bias-free", "--K", "3", "--n", "4", "--d", "5", "--optimizer", "lbfgs",
               "--x64", "--quiet", "--out", str(out)])
    assert rc == 0 and "warning" not in capsys.readouterr().err
    doc = json.loads((out / "result.json").read_text())
    assert doc["certificate"]["converged"] and doc["config"]["tol"] == 1e-10


def test_sweep_records_the_certificate_and_counts_unconverged(tmp_path, capsys):
    model = MODELS["bias-free"]
    base = hyper_for(model, {"lam_W": 0.05}, 0.1, 1.0)
    axes = {"lam_H": np.array([1e-6, 0.1])}
    arrays, config = sweep.run_sweep(model, SIZES, base, axes, steps=4000, optimizer="gd")
    for k in ("converged", "grad_norm", "steps_taken"):
        assert arrays[k].shape == (2,)
    assert arrays["converged"].tolist() == [False, True] and config["certificate_tol"] == 1e-6
    fast, _ = sweep.run_sweep(model, SIZES, base, axes, steps=4000, optimizer="lbfgs")
    assert fast["converged"].all() and np.all(fast["steps_taken"] < 4000)
    gap = np.abs(fast["objective"] - fast["theory_objective"]) / fast["theory_objective"]
    assert np.all(gap < 1e-10)
    rc = main(["sweep", "bias-free", "--K", "3", "--n", "4", "--d", "5", "--lam-W", "0.05",
               "--lam-H", "1e-6,0.1", "--init-scale", "1", "--steps", "4000", "--x64", "--quiet",
               "--out", str(tmp_path / "s")])
    assert rc == 0 and "not converged (relative gradient norm > 1e-06): 1" in capsys.readouterr().out


def test_proof_optimum_carries_the_certificate():
    from ufm import proofs

    doc = proofs.run_proof("3.1", K=3, n=4, d=5, random=0, steps=2000, optimizer="lbfgs")
    cert = doc["config"]["certificate"]
    assert cert["converged"] and abs(cert["closed_form_gap"]) < 1e-10
    assert all(row["holds"] for row in doc["steps"])
