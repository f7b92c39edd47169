"""The global certificate (docs/theory.md §5): a dual lower bound that is valid from any point and
tight at the optimum, and the convex solver that reaches the optimum for any counts.

Tolerances. The bound and the solver's gap are float64 computations on K×K arrays: their
round-off is ~1e-15 relative, so "tight" is checked at 1e-10 relative (the issue's target) and
"valid" (bound ≤ optimum) at 1e-12 relative slack. The solver stops at a 1e-12 relative duality
gap, so its objective is within 1e-12 of the optimum; L-BFGS multi-starts stop at a relative
gradient of 1e-10, whose objective error is quadratic in that (≪ 1e-9).
"""
import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ufm
from ufm import convex
from ufm.cli import main
from ufm.models import Sizes
from ufm.models.plain import MSE_LOSS

# (model, K, counts, d, λ's): imbalanced CE and MSE, with every kind of bias, and scaled targets
IMBALANCED = [
    ("ce", (6, 3, 1), 5, dict(lam_W=1e-2, lam_H=1e-2)),
    ("unregularized-bias", (6, 3, 1), 5, dict(lam_W=1e-2, lam_H=1e-2)),
    ("bias-free", (5, 2, 2, 1), 6, dict(lam_W=3e-3, lam_H=2e-2)),
    ("regularized-bias", (5, 2, 2, 1), 6, dict(lam_W=3e-3, lam_H=2e-2, lam_b=0.2)),
    ("ce-bias", (8, 4, 2, 1), 6, dict(lam_W=1e-3, lam_H=1e-3, lam_b=1e-2)),
    ("scaled-target", (4, 4, 1), 4, dict(lam_W=1e-2, lam_H=1e-2, gamma=3.0)),
]


def convex_run(model, counts, d, lams, **kw):
    return ufm.train(model, K=len(counts), n=counts, d=d, optimizer="convex", steps=50000,
                     log_every=50000, **lams, **kw)


@pytest.fixture(scope="module")
def optima():
    return {case[0]: convex_run(*case) for case in IMBALANCED}


def test_published_values():
    """The checked values of imbalanced CE and MSE (counts 6, 3, 1; d = 5; λ = 1e-2) and of the
    layer-peeled model (counts 8, 4, 2, 1; E = 1; d = 8), found by multi-start L-BFGS and an SDP."""
    assert convex_run(*IMBALANCED[0]).final["objective"] == pytest.approx(0.1766090823, abs=1e-10)
    assert convex_run(*IMBALANCED[1]).final["objective"] == pytest.approx(0.0306979179, abs=1e-10)
    r = ufm.train("lpm", K=4, n=(8, 4, 2, 1), d=8, lr=1.0, steps=20000, log_every=20000)
    cert = r.certificate
    assert r.final["objective"] == pytest.approx(0.5503561507, abs=1e-9)
    assert cert["global"] and abs(cert["global_gap"]) < 1e-8


@pytest.mark.parametrize("case", IMBALANCED[:4], ids=[c[0] for c in IMBALANCED[:4]])
def test_solver_agrees_with_lbfgs_multistarts(case, optima):
    model, counts, d, lams = case
    solved = optima[model]
    assert solved.certificate["global"] and solved.certificate["converged"]
    assert solved.certificate["global_gap"] <= 1e-10 * solved.final["objective"]
    best = ufm.train(model, K=len(counts), n=counts, d=d, optimizer="lbfgs", restarts=3,
                     steps=3000, log_every=3000, init_scale=0.5, **lams)
    assert best.final["objective"] == pytest.approx(solved.final["objective"], rel=1e-9)
    # each restart carries its own verdict: a certified one is at the optimum, and the kept
    # (best) restart's verdict is the result's
    assert len(best.restart_global) == 3
    for f, is_global in zip(best.restart_objectives, best.restart_global):
        if is_global:
            assert f <= solved.final["objective"] * (1 + 2e-9)
    kept = int(np.argmin(best.restart_objectives))
    assert best.restart_global[kept] == best.certificate["global"]
    # the solver's factors have the written shapes, balanced: λ_W‖W‖² = λ_H‖H‖²
    W, H = solved.params["W"], solved.params["H"]
    assert W.shape == (len(counts), d) and H.shape == (d, sum(counts))
    assert lams["lam_W"] * np.sum(W * W) == pytest.approx(lams["lam_H"] * np.sum(H * H), rel=1e-8)


BALANCED = [("bias-free", 4, 5, 6, dict(lam_W=5e-3, lam_H=5e-3)),
            ("bias-free", 3, 4, 3, dict(lam_W=0.2, lam_H=0.1)),  # c > 1: the zero solution
            ("unregularized-bias", 4, 5, 3, dict(lam_W=1e-2, lam_H=2e-2)),
            ("regularized-bias", 4, 5, 6, dict(lam_W=1e-2, lam_H=1e-2, lam_b=0.3)),
            ("regularized-bias", 4, 5, 6, dict(lam_W=1e-2, lam_H=1e-2, lam_b=0.01)),  # saturated
            ("ce", 4, 5, 6, dict(lam_W=5e-3, lam_H=5e-3)),
            ("scaled-target", 4, 5, 6, dict(lam_W=0.1, lam_H=0.1, gamma=0.5))]  # c > γ: zero


@pytest.mark.parametrize("case", BALANCED)
def test_bound_and_solver_equal_the_closed_form(case):
    model, K, n, d, lams = case
    r = ufm.train(model, K=K, n=n, d=d, optimizer="convex", steps=50000, log_every=50000,
                  **lams)
    f_star = r.theory.objective
    assert r.final["objective"] == pytest.approx(f_star, rel=1e-10)
    assert r.certificate["lower_bound"] == pytest.approx(f_star, rel=1e-10)
    assert r.certificate["lower_bound"] <= f_star * (1 + 1e-12)


def _random_point(model, sizes, seed, scale):
    params = model.init(jax.random.PRNGKey(seed), {"init_scale": scale}, sizes)
    return model.bound_inputs(params, sizes)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(case=st.sampled_from(IMBALANCED), seed=st.integers(0, 2 ** 31 - 1),
       scale=st.floats(1e-3, 10.0))
def test_bound_never_exceeds_the_optimum(case, seed, scale, optima):
    """From any point (Gaussian factors of any scale) the bound is below the global minimum."""
    model_name, counts, d, lams = case
    model = ufm.get_model(model_name)
    sizes = Sizes(len(counts), counts, d)
    hyper = ufm.get_model(model_name).defaults() | lams
    bound = model.lower_bound(_random_point(model, sizes, seed, scale), hyper, sizes)
    f_star = optima[model_name].final["objective"]
    assert bound <= f_star * (1 + 1e-12)


def test_small_d_is_reported_honestly():
    """d < K: the bound (the convex problem's minimum) stays below anything the model reaches at
    this d, the gap stays open, and the result says why."""
    lams = dict(lam_W=1e-2, lam_H=1e-2)
    best = ufm.train("ce", K=5, n=4, d=3, optimizer="lbfgs", restarts=3, steps=3000,
                     log_every=3000, init_scale=0.5, allow_small_d=True, **lams)
    cert = best.certificate
    assert not cert["global"] and cert["global_gap"] > 0.1
    assert "d = 3 < 5" in cert["global_note"]
    full = ufm.train("ce", K=5, n=4, d=5, optimizer="convex", steps=50000, log_every=50000,
                     **lams)
    assert cert["lower_bound"] <= full.final["objective"] * (1 + 1e-12)
    small = ufm.train("ce", K=5, n=4, d=3, optimizer="convex", steps=50000, log_every=50000,
                      allow_small_d=True, **lams)
    assert not small.certificate["global"] and small.final["objective"] > full.final["objective"]


def test_layer_peeled_bound_below_its_best_at_small_d():
    """At d = 2 < 2K the model cannot reach the SDP value 0.5503561507 (its best is higher), and
    the bound from its point stays below that value: valid, with the gap open and said so."""
    r = ufm.train("lpm", K=4, n=(8, 4, 2, 1), d=2, lr=1.0, steps=20000, log_every=20000,
                  allow_small_d=True)
    cert = r.certificate
    assert cert["lower_bound"] <= 0.5503561507 + 1e-9
    assert r.final["objective"] > 0.5503561507 + 1e-3
    assert not cert["global"] and "d = 2 < 8" in cert["global_note"]


def test_fixed_classifier_bound_is_tight_and_valid():
    r = ufm.train("fixed-orthogonal", K=3, n=(3, 2, 1), d=4, lr=2.0, steps=5000, log_every=5000)
    cert, f_star = r.certificate, r.theory.objective
    assert cert["global"] and cert["lower_bound"] == pytest.approx(f_star, rel=1e-10)
    early = ufm.train("fixed-etf", K=4, n=3, d=5, lr=0.05, steps=3, log_every=3, E_H=2.0)
    assert early.certificate["lower_bound"] <= early.theory.objective * (1 + 1e-12)
    assert not early.certificate["global"]


def test_models_without_a_convex_reformulation_say_so():
    r = ufm.train("linear-extended", K=3, n=2, d=4, steps=10, log_every=10)
    assert r.certificate["lower_bound"] is None and r.certificate["global"] is None
    assert "no convex reformulation" in r.certificate["global_note"]
    s = ufm.train("fixed-etf", K=4, n=2, d=4, steps=10, log_every=10, sessions=2)
    assert s.certificate["lower_bound"] is None and "sessions" in s.certificate["global_note"]


def test_sweep_records_the_global_certificate(tmp_path, capsys):
    rc = main(["sweep", "ce", "--K", "3", "--n", "6/3/1", "--d", "5", "--lam-W", "1e-2",
               "--lam-H", "1e-3,1e-2", "--optimizer", "convex", "--x64", "--quiet",
               "--out", str(tmp_path / "s")])
    assert rc == 0 and "global minimum certified" in capsys.readouterr().out
    with np.load(tmp_path / "s" / "sweep.npz") as f:
        assert f["global"].all() and np.all(np.abs(f["global_gap"]) < 1e-10)
        assert not any(k.startswith("bound_input") for k in f.files)
        assert f["objective"][1] == pytest.approx(0.1766090823, abs=1e-10)


@pytest.mark.parametrize("argv, message", [
    (["train", "relu-extended", "--optimizer", "convex"], "declares none (its model file"),
    (["train", "deep-linear", "--optimizer", "convex"], "declares none (its model file"),
    (["train", "ce", "--optimizer", "convex", "--lam-H", "0"], "must be > 0 for --optimizer convex"),
    (["train", "ce", "--optimizer", "convex", "--lr", "0.1"], "lr (--lr) does not apply"),
])
def test_convex_refuses_what_it_cannot_solve(argv, message, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_dual_bound_by_hand():
    """The MSE bound from the exact optimum of the bias-free model is its closed form: with
    M* = (1 − c)I, Γ = −cI/N, s = 1, −⟨G, Y⟩ − (N/2)‖G‖² = c − c²/2."""
    K, n, lam = 4, 5, 5e-3
    c = K * math.sqrt(n * lam * lam)
    bound = convex.penalised_bound((1 - c) * np.eye(K), None, lam, lam, (n,) * K, MSE_LOSS)
    assert bound == pytest.approx(c - c * c / 2, rel=1e-14)


@pytest.mark.parametrize("kw", [dict(K=4, n=5, d=6, smoothing=0.2),
                                dict(K=3, n=4, d=3, smoothing=0.3, lam_W=1e-2, lam_H=1e-2),
                                dict(K=4, n=5, d=6, smoothing=0.05, lam_W=0.1, lam_H=0.1),
                                dict(K=4, n=5, d=6, smoothing=0.2, lam_W=0.1, lam_H=0.1)])
def test_label_smoothing_closed_form(kw):
    """Both sides of p = 1/K (the last case is the zero solution): the convex solver, L-BFGS and
    the closed form agree to 1e-10, and both runs are certified global."""
    r = ufm.train("ce-smoothing", optimizer="convex", steps=50000, log_every=50000, **kw)
    lb = ufm.train("ce-smoothing", optimizer="lbfgs", steps=3000, log_every=3000, **kw)
    th = r.theory
    assert th.structure == ("zero" if kw.get("lam_W") == 0.1 and kw["smoothing"] > 0.1 else "ETF")
    for run in (r, lb):
        assert run.final["objective"] == pytest.approx(th.objective, rel=1e-10)
        assert run.certificate["global"]


def test_label_smoothing_at_zero_is_the_cross_entropy_ufm():
    from ufm import theory

    sizes, lams = Sizes(4, 5, 6), dict(lam_W=5e-3, lam_H=2e-3)
    model = ufm.get_model("ce-smoothing")
    assert model.theory(dict(lams, smoothing=0.0), sizes).objective == pytest.approx(
        theory.cross_entropy(lams, sizes).objective, rel=1e-13)
    with pytest.raises(ValueError, match=r"smoothing \(--smoothing\) must be < 1"):
        ufm.train("ce-smoothing", smoothing=1.0, steps=1, log_every=1)


def test_constrained_solver_reaches_the_certified_optimum():
    """The layer-peeled model at imbalanced counts (no closed form): the solver stops at a 1e-12
    duality gap, at the value projected GD reaches; the fixed classifiers at their closed form,
    with the same frame E as the other optimisers draw from the seed."""
    r = ufm.train("lpm", K=4, n=(8, 4, 2, 1), d=8, optimizer="convex", steps=100000,
                  log_every=100000)
    assert r.certificate["global"] and r.certificate["global_gap"] <= 1e-10 * r.final["objective"]
    assert r.final["objective"] == pytest.approx(0.5503561507, abs=1e-9)
    assert np.all(np.sum(r.params["W"] ** 2, axis=1) <= 1 + 1e-12)
    for model, kw in (("fixed-etf", dict(n=(4, 3, 2, 1), d=5)),
                      ("fixed-orthogonal", dict(n=3, d=4, K=3))):
        kw = dict(dict(K=4), **kw)
        c = ufm.train(model, optimizer="convex", steps=100000, log_every=100000, seed=3, **kw)
        g = ufm.train(model, steps=1, log_every=1, seed=3, **kw)
        np.testing.assert_array_equal(c.params["E"], g.params["E"])
        assert c.final["objective"] == pytest.approx(c.theory.objective, rel=1e-10)
        assert c.certificate["global"]


# --- evaluation error: a bound above the objective it was computed beside is never certified ----

def test_a_bound_above_the_objective_beyond_rounding_is_not_certified():
    from ufm.certificate import evaluation_error, global_certificate
    from ufm.models import Sizes, get_model

    model = get_model("bias-free")
    sizes = Sizes(3, 4, 5)
    r = ufm.train("bias-free", K=3, n=4, d=5, steps=300, optimizer="lbfgs")
    f = r.final["objective"]
    inputs = {"M": np.asarray(r.params["W"]) @ np.asarray(
        r.params["H"]).reshape(5, 3, 4).mean(-1)}
    honest = global_certificate(model, inputs, r.config, sizes, f)
    assert honest["global"] and abs(honest["global_gap"]) <= honest["evaluation_error"] + 1e-9 * f
    err = evaluation_error(f, f, sizes)
    assert 0 < err < 1e-12 * f  # float64: far below the global tolerance
    # the same numbers with a bound pushed above the objective: within rounding it still
    # certifies, beyond it it does not (and says why)
    shifted = model._replace(lower_bound=lambda i, h, s: f + 0.5 * err)
    assert global_certificate(shifted, inputs, r.config, sizes, f)["global"]
    broken = model._replace(lower_bound=lambda i, h, s: f + 1e-10 * f)
    out = global_certificate(broken, inputs, r.config, sizes, f)
    assert out["global"] is False and "above the objective" in out["global_note"]
    assert evaluation_error(f, f, sizes, "float32") > 1e6 * err  # float32 rounds far more


def test_the_last_intervals_relative_decrease_and_the_closed_form_gap():
    from ufm.certificate import certificate

    c = certificate([3.0, 2.0, 0.5], 1e-9, 2, 20, 1e-6, reference=0.4)
    assert c["rel_decrease"] == pytest.approx((2.0 - 0.5) / 0.5, rel=1e-15)
    assert c["closed_form_gap"] == pytest.approx((0.5 - 0.4) / 0.4, rel=1e-15)
    assert c["converged"] and c["converged_at"] == 2
    assert certificate([1.0], 1e-2, None, 0, 1e-6)["rel_decrease"] is None
    # a zero optimum: the gap is absolute, of the last record
    assert certificate([1.0, 0.5, 0.25], 1e-9, 2, 5, 1e-6,
                       reference=0.0)["closed_form_gap"] == 0.25
    # the tolerance is an upper bound: above it not converged, at it converged
    assert not certificate([2.0, 1.0], 1e-3, None, 5, 1e-6)["converged"]
    assert certificate([2.0, 1.0], 1e-6, 1, 5, 1e-6)["converged"]


def test_the_evaluation_error_is_its_documented_formula():
    from ufm.certificate import evaluation_error

    sizes = Sizes(4, (3, 5, 2, 6), 7)  # N = 16, n = N·(K + d) = 176 terms: ⌈log₂ 176⌉ = 8
    u, u64 = np.finfo(np.float32).eps / 2, np.finfo(np.float64).eps / 2
    # (abs=0: pytest.approx's default absolute 1e-12 would swallow numbers this small)
    assert evaluation_error(2.0, -3.0, sizes, "float32") == pytest.approx(
        (8 + 16) * u * 2.0 + 256 * u64 * 4 * 3.0, rel=1e-14, abs=0)
    assert evaluation_error(2.0, -3.0, sizes, "float64") == pytest.approx(
        (8 + 16) * u64 * 2.0 + 256 * u64 * 4 * 3.0, rel=1e-14, abs=0)


def test_a_run_whose_objective_rose_is_not_said_to_have_never_moved():
    from ufm.certificate import convergence_warning
    from ufm.models import get_model
    from ufm.runner import Result

    cert = dict(converged=False, grad_norm=3e-3, tol=1e-3, steps_taken=50, closed_form_gap=None,
                global_gap=None, global_note=None)
    r = Result(model="bias-free", config=dict(model="bias-free", optimizer="gd",
                                              dtype="float64"),
               params={}, steps=np.arange(3), history={"objective": np.array([0.7, 0.8, 0.9])},
               final={}, undefined=None, theory=None, diverged_at=None,
               restart_objectives=[0.9], restart_global=None, sessions=None, certificate=cert,
               reference=None)
    line = convergence_warning(r, get_model("bias-free"))
    assert "never moved" not in line and "more --steps" in line
    assert "--optimizer convex" in line and "--optimizer lbfgs" in line  # it has a solver
    convex = r._replace(config=dict(r.config, optimizer="convex"))
    assert "--optimizer convex" not in convergence_warning(convex, get_model("bias-free"))


def test_the_stationary_warning_judges_the_global_gap_relative_to_the_bound():
    from ufm.certificate import stationary_warning

    cert = dict(closed_form_gap=None, grad_norm=1e-9, steps_taken=10, lower_bound=100.0,
                global_gap=0.5, **{"global": False}, global_note=None)
    assert stationary_warning(cert, {}) is None  # 0.5/100 = 5e-3: within 1e-2 of the bound
    far = dict(cert, global_gap=5.0)  # 5e-2 relative: a stationary point elsewhere
    assert "5.0e-02 (relative) from the certified global bound" in stationary_warning(far, {})


def test_no_rank_note_above_the_rank_the_convex_solution_needs():
    r = ufm.train("ce", K=3, n=4, d=6, steps=3, lr=1e-3)  # far from converged, d > K
    assert r.certificate["global"] is False and r.certificate["global_note"] is None
