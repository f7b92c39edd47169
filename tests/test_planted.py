"""Behaviours a planted mistake got past the suite with (issue 35's survivors), each pinned by a
test that compares with an independent value: the global tolerance at its boundary and in its
relative form, the d-versus-rank note at d = K, the convex solver's own stopping test with a
regularized bias, the program cache's key following ufm's source, and the fixed classifiers'
certificates away from E_H = E_W = 1."""
import math

import numpy as np
import pytest

import ufm
from ufm import cache
from ufm import certificate as cert_mod
from ufm.models import Sizes, get_model


def _stub(bound):
    """A model record whose lower bound is `bound`, for the certificate's arithmetic alone."""
    return get_model("bias-free")._replace(lower_bound=lambda inputs, hyper, sizes: bound)


@pytest.mark.parametrize("objective", [1e-9, 0.37, 4e6])
def test_global_tolerance_boundary_and_relative_form(objective):
    """global ⇔ f − bound ≤ tol·max(|f|, 1e-6): at the boundary (a hair inside) true, a hair
    outside false; relative to f for large f, to the floor 1e-6 for tiny f."""
    tol = cert_mod.GLOBAL_TOL["float64"]
    scale = max(abs(objective), 1e-6)
    inputs, sizes = {"M": np.zeros((2, 2))}, Sizes(2, 1, 2)
    for factor, expected in ((0.999, True), (1.001, False)):
        bound = objective - factor * tol * scale
        out = cert_mod.global_certificate(_stub(bound), inputs, {}, sizes, objective,
                                          dtype="float64")
        assert out["global"] is expected, (objective, factor, out)
        assert out["global_gap"] == pytest.approx(factor * tol * scale, rel=1e-6, abs=0)


def test_rank_note_appears_below_k_and_not_at_k():
    """CE, K = 3: at d = K no note (and the optimum certified); at d = 1, below the optimum's
    rank 2, the gap stays open and the note says why."""
    for d, noted in ((3, False), (1, True)):
        r = ufm.train("ce", K=3, n=2, d=d, optimizer="lbfgs", allow_small_d=True, steps=500,
                      log_every=500)
        note = r.certificate["global_note"] or ""
        assert (f"d = {d} < 3" in note) is noted, note


def test_convex_solver_stopping_test_with_a_regularized_bias():
    """The solver stops at its own relative duality gap (not at the cap), and a tighter gap
    takes more iterations; the certified value is the same."""
    kw = dict(K=4, n=(10, 5, 2, 1), d=5, lam_b=0.3, optimizer="convex", steps=100000,
              log_every=100000)
    loose = ufm.train("regularized-bias", tol=1e-6, **kw)
    tight = ufm.train("regularized-bias", tol=1e-12, **kw)
    for r in (loose, tight):
        assert r.certificate["converged_at"] is not None
        assert r.certificate["converged_at"] == r.certificate["steps_taken"] < 100000
    assert loose.certificate["steps_taken"] < tight.certificate["steps_taken"]
    assert tight.certificate["global"]
    assert loose.final["objective"] == pytest.approx(tight.final["objective"], rel=1e-5)


def test_program_key_follows_ufms_own_source(monkeypatch):
    args = (np.zeros(3),)
    monkeypatch.setattr(cache, "_SOURCE", "a" * 64)
    first = cache.program_key(args, ("simulate", "bias-free"))
    monkeypatch.setattr(cache, "_SOURCE", "b" * 64)
    assert cache.program_key(args, ("simulate", "bias-free")) != first
    monkeypatch.setattr(cache, "_SOURCE", None)  # computed from the files: stable
    assert cache.program_key(args, ("x",)) == cache.program_key(args, ("x",))


@pytest.mark.parametrize("E_H, E_W", [(2.0, 2.0), (0.5, 3.0)])
def test_layer_peeled_certificate_away_from_unit_norms(E_H, E_W):
    """The layer-peeled model's SDP bound at E_H ≠ 1 and E_W ≠ E_H: the certified optimum is
    global and scales as the balanced closed form's product √(E_H·E_W) of the norms predicts at
    balanced counts (an ETF of feature norm √E_H and classifier norm √E_W)."""
    r = ufm.train("lpm", K=3, n=4, d=6, E_H=E_H, E_W=E_W, optimizer="convex", steps=20000,
                  log_every=20000)
    assert r.certificate["global"]
    K = 3
    margin = math.sqrt(E_H * E_W) * K / (K - 1)  # ⟨w_k − w_j, h_k⟩ at an ETF
    expected = math.log1p((K - 1) * math.exp(-margin))
    assert r.final["objective"] == pytest.approx(expected, rel=1e-8)


def test_screens_with_features_and_classifier_scaled_apart():
    """Features of size 1e-41 (float32 subnormals) read by a classifier of size 1e3: the screens'
    subnormal term must scale with the classifier, not with the features; every count equals
    the plain float64 rules."""
    from test_measure_scale import _screened_and_exact

    from ufm import measure

    rng = np.random.default_rng(11)
    K, d, n = 4, 8, 2000
    means = rng.normal(size=(K, d)) * 1e-41
    y = rng.integers(0, K, n)
    raw = means[y] + rng.normal(size=(n, d)) * 1e-41
    W = rng.normal(size=(K, d)) * 1e3
    with np.errstate(under="ignore"):
        screened, exact = _screened_and_exact(means, measure.span_basis(means), W, None,
                                              np.zeros(d), raw, y)
    assert screened == exact


def test_offset_rule_at_a_spread_of_1e10_and_an_offset_of_1e19():
    """Rows 1e19 + (class means and noise of size 1e10): the offset is taken (‖o‖ > the spread)
    and the class means and tr Σ_W equal the direct float64 computation on the centred rows."""
    from ufm import measure

    rng = np.random.default_rng(12)
    K, d, n = 3, 5, 300
    y = np.arange(n) % K
    local = rng.normal(size=(K, d))[y] * 1e10 + rng.normal(size=(n, d)) * 1e9
    base = np.full(d, 1e19)
    out = measure.accumulate(base + local, y, K)
    assert np.any(out["offset"])  # the rule moved the rows
    direct = np.array([local[y == k].mean(axis=0) for k in range(K)])
    np.testing.assert_allclose(out["means"] - base, direct, rtol=0, atol=1e19 * 2e-16 * 4)
    within = sum(np.sum((local[y == k] - direct[k]) ** 2) for k in range(K)) / n
    assert out["trace_w"] == pytest.approx(within, rel=1e-6)  # rows rounded at 1e19·ε ≈ 2e3


def test_smoothing_reports_the_uniform_probability_at_the_zero_solution():
    """Past its threshold the label-smoothed optimum is zero: the reported correct-class
    probability is 1/K, the softmax of zero logits (a formula without the floor goes below)."""
    from ufm.models.label_smoothing import theory

    K, n = 4, 5
    hyper = {"lam_W": 0.2, "lam_H": 0.2, "smoothing": 0.1}
    th = theory(hyper, Sizes(K, n, 6))
    assert th.structure == "zero" and th.p == pytest.approx(1 / K, abs=1e-15)
    r = ufm.train("ce-smoothing", K=K, n=n, d=6, optimizer="convex", steps=20000,
                  log_every=20000, **hyper)
    assert r.certificate["global"] and np.abs(r.params["W"] @ r.params["H"]).max() < 1e-8


def test_a_sweep_point_that_blew_up_is_not_converged(tmp_path):
    """A grid point whose objective exploded (a step far too large) has a tiny relative
    gradient (the objective is huge); it must read converged: False, diverged: True."""
    from ufm import sweep

    arrays, _ = sweep.run_grid("bias-free", {"K": [3], "d": [3], "n": [2]}, {},
                               {"lr": np.array([0.1, 200.0])}, order=["lr"], steps=200)
    assert not arrays["diverged"][0] and arrays["diverged"][1]
    assert not arrays["converged"][1]


@pytest.mark.parametrize("name", ["bias-free", "ce", "squared-hinge"])
def test_the_bound_takes_the_best_scale_of_its_dual_point(name):
    """Away from the optimum the dual point s·Γ is scaled by the best s in [0, s_max] (the
    bound's designed tightness), not by s_max: the returned bound is at least the bound at every
    s of a fine grid, and — the grid's best lying inside — above the bound at s_max. It stays
    below the certified minimum."""
    from ufm import convex
    from ufm.models import get_model

    model = get_model(name)
    K, n, d = 4, 5, 6
    sizes, lam = Sizes(K, n, d), 1.0  # μ = 1: the ball does not bind, the best s is inside
    hyper = {"lam_W": lam, "lam_H": lam}
    f_star = ufm.train(name, K=K, n=n, d=d, optimizer="convex", steps=100000, log_every=100000,
                       **hyper).final["objective"]
    rng = np.random.default_rng(1)
    M = 0.6 * np.eye(K) + 0.2 * rng.normal(size=(K, K))  # away from the optimum
    counts = np.full(K, float(n))
    loss = model.two_factor.loss
    Gamma = convex.loss_gradient(M, np.eye(K), counts, loss)
    op = np.linalg.norm(Gamma * np.sqrt(counts)[None, :], 2)
    s_max = min(lam / op, loss.cap(Gamma, np.eye(K), counts.sum()))
    grid = [convex.conjugate_bound(s * Gamma, np.eye(K), counts, loss)
            for s in np.linspace(0.0, s_max, 401)]
    bound = model.lower_bound({"M": M}, hyper, sizes)
    assert bound >= max(grid) - 1e-9 * max(1.0, abs(max(grid)))
    assert np.argmax(grid) < 400 and bound > grid[-1]  # the best scale is inside, and taken
    assert bound <= f_star * (1 + 1e-12)


def test_a_second_configurations_unmarked_partial_chunks_are_never_deleted(tmp_path):
    """A folder whose chunks/ holds another static combination's partial chunks and no owner
    mark (an older sweep's): a different sweep into it is refused, and those chunks stay."""
    from ufm import sweep

    out = tmp_path / "sw"
    theirs = out / "chunks" / "K=9,d=3,n=2"
    theirs.mkdir(parents=True)
    chunk = theirs / "chunk_000000000_000000003.npz"
    np.savez(chunk, index=np.arange(4))
    with pytest.raises(ValueError, match=r"unfinished chunks of another sweep configuration "
                                         r"\(K=9,d=3,n=2\)"):
        sweep.run_grid("bias-free", {"K": [3], "d": [3], "n": [2]}, {},
                       {"lam_W": np.array([1e-3, 1e-2])}, order=["lam_W"], steps=5,
                       out=str(out))
    assert chunk.exists() and not (out / "sweep.npz").exists()


def test_the_convex_solvers_stopping_gap_is_absolute_below_its_floor():
    """Relative to the objective at ordinary sizes, to the floor 1e-6 below it (a mutant without
    the floor asked a 1e-8 objective for gaps of 1e-20 and survived every other test)."""
    from ufm import convex

    assert float(convex.stopping_gap(2.0, 1.0)) == 0.5
    assert float(convex.stopping_gap(-4.0, -5.0)) == 0.25
    assert float(convex.stopping_gap(1e-8, 0.5e-8)) == pytest.approx(0.5e-8 / 1e-6, rel=1e-15,
                                                                     abs=0)
    assert convex.GAP_FLOOR == 1e-6
