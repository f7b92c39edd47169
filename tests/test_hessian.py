"""The second-order certificate (ufm.hessian) against closed forms: the origin's spectrum of the
bias-free model at imbalanced counts on both sides of λ_Wλ_H = n_max/N², the optimum's symmetry
dimension and positive restricted spectrum, the declared symmetries as true invariances, Lanczos
against the dense spectrum, and escaping the origin saddle to the closed form."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import ortho_group

from ufm import hessian, theory
from ufm.cli import main
from ufm.models import Sizes, get_model
from ufm.runner import train


def origin_min_eigenvalue(lam_W, lam_H, counts):
    """(λ_min, multiplicity/d) of the bias-free Hessian at 0, derived independently: per
    coordinate and class k the block [[λ_W, −1ᵀ/N], [−1/N, λ_H·I_(n_k)]] has the pair
    (λ_W + λ_H)/2 ± √(((λ_W − λ_H)/2)² + n_k/N²) and λ_H (n_k − 1 times)."""
    N, n_max = sum(counts), max(counts)
    value = (lam_W + lam_H) / 2 - math.sqrt(((lam_W - lam_H) / 2) ** 2 + n_max / N ** 2)
    return value, sum(1 for n in counts if n == n_max)


@pytest.mark.parametrize("counts", [(5, 3, 5), (4, 1, 2, 2)])
@pytest.mark.parametrize("side", [0.3, 3.0])  # λ_Wλ_H = side · n_max/N²: a saddle, a minimum
def test_origin_spectrum_is_the_closed_form_on_both_sides_of_the_threshold(counts, side):
    K, d, N = len(counts), 3, sum(counts)
    lam_W = 0.7 * math.sqrt(side * max(counts)) / N
    lam_H = side * max(counts) / N ** 2 / lam_W
    hyper = {"lam_W": lam_W, "lam_H": lam_H}
    params = {"W": np.zeros((K, d)), "H": np.zeros((d, N))}
    expected, classes = origin_min_eigenvalue(lam_W, lam_H, counts)
    model, sizes = get_model("bias-free"), Sizes(K, counts, d)
    dense = hessian.classify(model, sizes, hyper, params, method="dense")
    assert dense.kind == ("saddle" if side < 1 else "strict local minimum")
    assert dense.symmetry_dim == 0  # every tangent (W·A, −A·H) vanishes at the origin
    assert dense.min_eigenvalue == pytest.approx(expected, abs=1e-12)
    spectrum = np.array(dense.eigenvalues)
    assert np.sum(np.abs(spectrum - expected) < 1e-10) == d * classes
    lanczos = hessian.classify(model, sizes, hyper, params, method="lanczos", k=2)
    assert lanczos.kind == dense.kind
    assert lanczos.min_eigenvalue == pytest.approx(expected, abs=1e-10)


def bias_free_optimum(K, n, d, hyper, seed=0):
    """The balanced bias-free minimiser from Theorem 3.1: W = √(x/s)·R with R Rᵀ = I_K (a random
    point of the Stiefel manifold), h_(k,i) = s·w_k, s = √(λ_W/(nλ_H))."""
    prediction = theory.plain(hyper, Sizes(K, n, d), None)
    s = math.sqrt(hyper["lam_W"] / (n * hyper["lam_H"]))
    R = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, K)))[0].T
    W = math.sqrt(prediction.x / s) * R
    return {"W": W, "H": s * W.T @ np.kron(np.eye(K), np.ones((1, n)))}, prediction


@pytest.mark.parametrize("K, n, d", [(3, 4, 5), (4, 2, 4), (2, 3, 6)])
def test_optimum_is_a_strict_local_minimum_modulo_its_orbit(K, n, d):
    hyper = {"lam_W": 1e-2, "lam_H": 2e-2}
    params, prediction = bias_free_optimum(K, n, d, hyper)
    model, sizes = get_model("bias-free"), Sizes(K, n, d)
    so = hessian.classify(model, sizes, hyper, params, method="dense")
    assert so.kind == "strict local minimum"
    assert so.grad_norm < 1e-13  # the closed form is a critical point
    # the orbit of a rank-K point: O(d) less the stabiliser O(d − K)
    assert so.symmetry_dim == d * (d - 1) // 2 - (d - K) * (d - K - 1) // 2
    # independently: the unrestricted Hessian has exactly that many zero eigenvalues, and its
    # smallest nonzero one is the restricted minimum
    with hessian.x64():
        point = hessian.flat_point(model, sizes, hyper, params)
        full = np.linalg.eigvalsh(np.asarray(hessian.dense_hessian(point.f, point.x)))
    zero = np.abs(full) < 1e-10
    assert zero.sum() == so.symmetry_dim
    assert so.min_eigenvalue == pytest.approx(full[~zero].min(), abs=1e-12)
    lanczos = hessian.classify(model, sizes, hyper, params, method="lanczos", k=3)
    assert lanczos.min_eigenvalue == pytest.approx(so.min_eigenvalue, abs=1e-8)
    assert lanczos.max_eigenvalue == pytest.approx(so.max_eigenvalue, rel=1e-8)


def random_params(model, sizes, seed=0, scale=0.7):
    return jax.tree.map(np.array, model.init(jax.random.PRNGKey(seed),
                                                {"init_scale": scale}, sizes))


@pytest.mark.parametrize("name, options", [("bias-free", {}), ("ce-bias", {}),
                                           ("deep-linear", {"depth": 3}),
                                           ("deep-relu", {"depth": 3}),
                                           ("deep-linear-ce", {"depth": 2})])
def test_declared_symmetries_leave_the_objective_unchanged(name, options):
    """Each declared interface (left, right): f(left·Q, Qᵀ·right) = f for orthogonal Q (for a
    local ReLU interface, Q mixing only units of one activation pattern)."""
    model, sizes = get_model(name, **options), Sizes(3, 4, 5)
    params = random_params(model, sizes)
    hyper = dict(model.defaults())
    with hessian.x64():
        f = lambda p: float(model.objective({k: jnp.asarray(v) for k, v in p.items()}, hyper,
                                            sizes))
        base = f(params)
        for spec in model.symmetries:
            left, right = spec[:2]
            b = params[left].shape[1]
            if len(spec) == 3:  # rotate within one activation pattern: make two units share one
                params = dict(params)
                rows = np.array(params[right])  # its rows set the pre-activations' rows
                rows[1] = 0.8 * rows[0]  # units 0 and 1 now have the same sign pattern
                params[right] = rows
                base = f(params)
                groups = hessian.pattern_labels(spec[2](params))
                assert groups[0] == groups[1]
                Q = np.eye(b)
                c, s = math.cos(0.3), math.sin(0.3)
                Q[:2, :2] = [[c, -s], [s, c]]
            else:
                Q = ortho_group.rvs(b, random_state=1)
            moved = dict(params, **{left: params[left] @ Q, right: Q.T @ params[right]})
            assert f(moved) == pytest.approx(base, rel=1e-12), spec[:2]


def test_gram_from_block_products_equals_autodiff_and_tangents_are_flat_at_a_critical_point():
    model, sizes = get_model("deep-linear", depth=3), Sizes(3, 4, 4)
    result = train("deep-linear", K=3, n=4, d=4, depth=3, optimizer="lbfgs", steps=3000,
                   init_scale=0.6, lam_H1=1e-3, lam_W=1e-3)
    assert result.certificate["converged"]
    hyper = {k: result.config[k] for k in model.hyper_names}
    with hessian.x64():
        point = hessian.flat_point(model, sizes, hyper, result.params)
        orbit = hessian.orbit(model, point.unravel(point.x), 1e-8)
        m = orbit.gram.shape[0]
        assert m == 3 * 6
        by_autodiff = jax.vmap(lambda a: orbit.JT(orbit.J(a)))(jnp.eye(m))
        np.testing.assert_allclose(np.asarray(orbit.gram), np.asarray(by_autodiff), atol=1e-12)
        T = orbit.basis()
        np.testing.assert_allclose(T.T @ T, np.eye(int(orbit.rank)), atol=1e-12)
        H = np.asarray(hessian.dense_hessian(point.f, point.x))
    # ∇²f·t = A·∇f = 0 along the orbit at a critical point (gradient ≈ 1e-12 here)
    assert np.abs(H @ T).max() < 1e-8 * np.abs(H).max()


def test_lanczos_agrees_with_the_dense_spectrum_away_from_a_critical_point():
    model, sizes = get_model("ce"), Sizes(3, 3, 4)
    params = random_params(model, sizes, seed=3)
    hyper = dict(model.defaults())
    dense = hessian.classify(model, sizes, hyper, params, method="dense")
    assert dense.kind == "not stationary"
    k = 4
    lanczos = hessian.classify(model, sizes, hyper, params, method="lanczos", k=k)
    ends = np.r_[dense.eigenvalues[:k], dense.eigenvalues[-k:]]
    np.testing.assert_allclose(lanczos.eigenvalues, ends, atol=1e-8)
    assert lanczos.symmetry_dim == dense.symmetry_dim == 4 * 3 // 2  # rank 3 = K < d = 4: 6 − 0


def test_spectral_density_quadrature_reproduces_each_start_vectors_rayleigh_quotient():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(40, 40))
    A = jnp.asarray(A + A.T)
    with hessian.x64():
        key = jax.random.PRNGKey(2)
        nodes, weights = hessian.spectral_density(lambda v: A @ v, 40, key, vectors=3, steps=40)
        starts = jax.random.rademacher(key, (3, 40), jnp.float64)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    rayleigh = [float(v @ A @ v / (v @ v)) for v in starts]
    np.testing.assert_allclose((weights * nodes).sum(axis=1), rayleigh, atol=1e-10)
    # 40 steps on a 40-dimensional space: the nodes are the eigenvalues
    np.testing.assert_allclose(np.sort(nodes[0]), np.linalg.eigvalsh(np.asarray(A)), atol=1e-9)


def test_escape_from_the_origin_reaches_the_closed_form():
    result = train("bias-free", K=3, n=4, d=5, optimizer="lbfgs", steps=200, init_scale=0.0,
                   escape=True)
    escapes = result.certificate["escapes"]
    assert len(escapes) >= 1 and escapes[0]["objective"] == pytest.approx(0.5)
    assert all(e["min_eigenvalue"] < 0 for e in escapes)
    assert result.second_order["kind"] == "strict local minimum"
    assert result.final["objective"] == pytest.approx(result.theory.objective, rel=1e-10)


def test_relu_point_on_a_kink_makes_no_second_order_claim():
    model, sizes = get_model("deep-relu", depth=2), Sizes(2, 3, 3)
    params = random_params(model, sizes, seed=1)
    params["W1"][0] = 0.0  # unit 0's pre-activation is exactly 0 on every sample
    so = hessian.classify(model, sizes, dict(model.defaults()), params)
    assert so.kind == "not twice differentiable"
    assert so.kinks == sizes.N and so.min_eigenvalue is None
    assert f"{sizes.N} ReLU pre-activation" in so.reason


def test_refusals_name_what_is_wrong(monkeypatch):
    with pytest.raises(ValueError, match="fixed-etf is a constrained model"):
        hessian.check_smooth(get_model("fixed-etf"))
    model, sizes = get_model("bias-free"), Sizes(2, 2, 2)
    params = random_params(model, sizes)
    with pytest.raises(ValueError, match="must be one of auto, dense, lanczos, got 'full'"):
        hessian.classify(model, sizes, dict(model.defaults()), params, method="full")
    monkeypatch.setattr(hessian.limits, "machine_memory", lambda: (1000, "host memory"))
    with pytest.raises(ValueError, match=r"dense Hessian of 12 parameters needs about .* use "
                                         r"the Lanczos method"):
        hessian.classify(model, sizes, dict(model.defaults()), params, method="dense")


def test_cli_train_hessian_and_hessian_of_a_saved_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "bias-free", "--K", "2", "--n", "3", "--d", "3", "--optimizer", "lbfgs",
               "--quiet", "--hessian", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "second order: strict local minimum — restricted λ_min" in printed
    doc = json.loads((out / "result.json").read_text())
    assert doc["second_order"]["kind"] == "strict local minimum"
    assert doc["second_order"]["symmetry_dim"] == 3  # d = K + 1: 3 − 0
    del doc["second_order"]
    (out / "result.json").write_text(json.dumps(doc))
    assert main(["hessian", str(out), "--method", "lanczos", "--k", "2"]) == 0
    assert "lanczos" in capsys.readouterr().out
    doc = json.loads((out / "result.json").read_text())
    assert doc["second_order"]["method"] == "lanczos"
    assert main(["hessian", str(tmp_path / "nothing")]) == 2
    assert "is not a ufm train output" in capsys.readouterr().err


def test_sweep_classifies_every_point_as_the_single_run_does(tmp_path, capsys):
    """The traced (vmapped) certificate of `ufm sweep --hessian` against `classify` on the same
    runs: the origin saddle (init 0: L-BFGS cannot leave it) with its closed-form eigenvalue, and
    the seeded run (the sweep's point uses PRNGKey(seed), as `ufm train` does)."""
    out = tmp_path / "sweep"
    rc = main(["sweep", "bias-free", "--K", "3", "--n", "4", "--d", "5", "--lam-W", "1e-2",
               "--lam-H", "2e-2", "--init-scale", "0,0.5", "--optimizer", "lbfgs", "--quiet",
               "--hessian", "60", "--out", str(out)])
    assert rc == 0
    assert "second order: saddle 1, strict local minimum 1" in capsys.readouterr().out
    arrays = np.load(out / "sweep.npz")
    assert list(arrays["second_order_kind"]) == ["saddle", "strict local minimum"]
    expected, _ = origin_min_eigenvalue(1e-2, 2e-2, (4, 4, 4))
    assert arrays["min_eigenvalue"][0] == pytest.approx(expected, abs=1e-10)
    single = train("bias-free", K=3, n=4, d=5, lam_W=1e-2, lam_H=2e-2, init_scale=0.5,
                   optimizer="lbfgs", hessian="dense")
    assert single.second_order["kind"] == "strict local minimum"
    assert arrays["min_eigenvalue"][1] == pytest.approx(single.second_order["min_eigenvalue"],
                                                        abs=1e-8)
    # the orbit of a rank-3 point in d = 5: O(5) less O(2)
    assert arrays["symmetry_dim"][1] == single.second_order["symmetry_dim"] == 10 - 1


def test_imbalanced_checked_values_origin_and_lbfgs_optimum():
    """Counts (4, 3, 2), d = 5, λ_W = 1e-2, λ_H = 2e-2 (values checked by jax.hessian outside
    ufm): the origin's λ_min −0.207278465104883 (multiplicity 5); at an L-BFGS optimum the orbit
    has dimension 10 − 1 = 9 and the restricted minimum is λ_H (features leaving W's row space)."""
    model, sizes = get_model("bias-free"), Sizes(3, (4, 3, 2), 5)
    hyper = {"lam_W": 1e-2, "lam_H": 2e-2}
    origin = hessian.classify(model, sizes, hyper, {"W": np.zeros((3, 5)), "H": np.zeros((5, 9))})
    assert origin.min_eigenvalue == pytest.approx(-0.207278465104883, abs=1e-13)
    assert np.sum(np.abs(np.array(origin.eigenvalues) - origin.min_eigenvalue) < 1e-10) == 5
    run = train("bias-free", K=3, n=(4, 3, 2), d=5, optimizer="lbfgs", hessian="dense", **hyper)
    assert run.certificate["global"]
    so = run.second_order
    assert (so["kind"], so["symmetry_dim"]) == ("strict local minimum", 9)
    assert so["min_eigenvalue"] == pytest.approx(2e-2, abs=1e-9)


# --- constructions -----------------------------------------------------------------------------

def ce_lams(depth, lam):
    return {"lam_H1": lam, **{f"lam_W{layer}": lam for layer in range(1, depth + 1)}}


@pytest.mark.parametrize("depth", [1, 3])
def test_shape_objective_reproduces_the_dnc_and_low_rank_references(depth):
    sizes, lam = Sizes(6, 5, 16), 2 ** -9
    th = theory.deep_cross_entropy(ce_lams(depth, lam), sizes, depth)
    found = theory.deep_ce_constructions(ce_lams(depth, lam), sizes, depth)
    assert found["dnc"].objective == pytest.approx(th.dnc, abs=1e-10)
    assert found["low-rank"].objective == pytest.approx(th.low_rank, abs=1e-10)
    assert "triangular" not in found  # T(4) is the blocks' octahedron, not a new construction


@pytest.mark.parametrize("r", [5, 6])
def test_triangular_shape_is_a_tight_frame_of_rank_r_minus_one(r):
    S = theory.triangular_shape(r)
    K = r * (r - 1) // 2
    assert S.shape == (K, K) and theory.triangular_rank(K) == r
    sigma = np.linalg.svd(S, compute_uv=False)
    np.testing.assert_allclose(sigma[:r - 1], r - 2, atol=1e-12)  # T(r)'s eigenvalue r − 4, + 2
    np.testing.assert_allclose(sigma[r - 1:], 0, atol=1e-12)


def test_triangular_construction_is_the_k10_finding_and_a_strict_local_minimum():
    """The best of 200 L-BFGS seeds at K = 10, n = 5, λ = 2⁻⁹ (docs/findings.md, recorded before
    this construction existed): 0.112098 at L = 3 and 0.096531 at L = 4 — the triangular tight
    frame's exact objective. Its balanced factors are a strict local minimum modulo symmetry."""
    for depth, best in [(3, 0.112098), (4, 0.096531)]:
        c = theory.deep_ce_construction(theory.triangular_shape(5), ce_lams(depth, 2 ** -9),
                                        Sizes(10, 5, 16), depth)
        assert c.objective == pytest.approx(best, abs=1e-6) and c.rank == 4
    depth, sizes, hyper = 3, Sizes(10, 2, 5), ce_lams(3, 2 ** -9)
    model = get_model("deep-linear-ce", depth=depth)
    c = theory.deep_ce_construction(theory.triangular_shape(5), hyper, sizes, depth)
    params = model.constructions(hyper, sizes)["triangular"]
    with hessian.x64():
        value = float(model.objective({k: jnp.asarray(v) for k, v in params.items()}, hyper,
                                      sizes))
    assert value == pytest.approx(c.objective, rel=1e-12)
    product = params["W3"] @ params["W2"] @ params["W1"] @ params["H1"]
    np.testing.assert_allclose(product, np.kron(c.alpha * c.shape, np.ones((1, 2))), atol=1e-10)
    so = hessian.classify(model, sizes, hyper, params)
    assert so.kind == "strict local minimum" and so.grad_norm < 1e-6


def test_init_from_a_construction_or_a_file_and_its_refusals(tmp_path):
    hyper = ce_lams(3, 2 ** -9)
    run = train("deep-linear-ce", K=10, n=2, d=9, depth=3, optimizer="lbfgs", steps=50,
                init_from="triangular", **hyper)
    assert run.reference["reached"] == "triangular"
    np.savez(tmp_path / "p.npz", **run.params)
    again = train("deep-linear-ce", K=10, n=2, d=9, depth=3, optimizer="lbfgs", steps=50,
                  init_from=str(tmp_path / "p.npz"), **hyper)
    assert again.final["objective"] == pytest.approx(run.final["objective"], rel=1e-12)
    with pytest.raises(ValueError, match="deep-linear-ce's constructions at these sizes "
                                         r"\(dnc, low-rank, triangular\), got 'spiral'"):
        train("deep-linear-ce", K=10, n=2, d=9, depth=3, init_from="spiral", **hyper)
    with pytest.raises(ValueError, match=r"holds blocks .* needs"):
        train("deep-linear-ce", K=10, n=2, d=10, depth=3, init_from=str(tmp_path / "p.npz"),
              **hyper)
    with pytest.raises(ValueError, match="not with --restarts"):
        train("deep-linear-ce", K=10, n=2, d=9, depth=3, init_from="dnc", restarts=2, **hyper)


def smaller_root(beta, M):
    """The other positive root s of s^(2M−2) − s^(M−2) + β (a local maximum of φ_β), t = s^M."""
    coeffs = np.zeros(2 * M - 1)
    coeffs[0], coeffs[M], coeffs[-1] = 1.0, -1.0, beta
    roots = np.roots(coeffs)
    real = np.sort(roots[(np.abs(roots.imag) < 1e-9) & (roots.real > 0)].real)
    return real[0] ** M


@pytest.mark.parametrize("beta", [0.30, 0.45])  # below the window, and in it (β_c < β < β_max)
def test_three_factor_stationary_points_classify_as_the_scalar_problem_says(beta):
    """Linear extended model (M = 3), K = 3: `fit` classes at a stationary point t of the scalar
    problem φ_β (docs/theory.md §3.10), the rest at 0. All classes at φ's local minimiser t*: a
    strict local minimum modulo symmetry; the origin too (three factors: no second-order fit term
    at 0); at φ's local maximum (the smaller root) a saddle. With 0 < fit < K classes at t* the
    point is degenerate: exactly fit·(K − fit) zero eigenvalues beyond the symmetries (a zero
    class may borrow a fit class's path at no second-order cost; the objective grows like t⁴)."""
    K, n, d, M = 3, 4, 4, 3
    lam = beta / (K * n ** (1 / M))  # balanced: β = K·(n·λ³)^(1/3)
    hyper = {"lam_H1": lam, "lam_W1": lam, "lam_W2": lam}
    model, sizes = get_model("linear-extended"), Sizes(K, n, d)
    t_min, t_max = theory.nonzero_stationary(beta, M), smaller_root(beta, M)
    cases = [(t_min, 3, "strict local minimum"), (t_max, 3, "saddle"), (0.0, 0,
             "strict local minimum"), (t_min, 2, "degenerate"), (t_min, 1, "degenerate")]
    for t, fit, kind in cases:
        Zbar = np.diag([t] * fit + [0.0] * (K - fit))
        params = (theory.balanced_factors(Zbar, hyper, sizes, 2) if fit else
                  {"H1": np.zeros((d, K * n)), "W1": np.zeros((d, d)), "W2": np.zeros((K, d))})
        so = hessian.classify(model, sizes, hyper, params, method="dense")
        assert so.grad_norm < 1e-10  # the scalar problem's stationary points are the model's
        assert so.kind == kind, (t, fit, so.min_eigenvalue, so.tol)
        if kind == "degenerate":
            assert np.sum(np.abs(np.array(so.eigenvalues)) <= so.tol) == fit * (K - fit)


@pytest.mark.parametrize("K, n, d, L, lams", [
    (3, 2, 4, 2, (5e-3, 5e-3, 5e-3)), (3, 2, 3, 3, (5e-3,) * 4),
    (4, 1, 5, 3, (2e-3, 3e-3, 1e-3, 4e-3)), (2, 3, 4, 4, (5e-3, 1e-2, 2e-3, 5e-3, 3e-3)),
    (3, 4, 3, 1, (1e-2, 2e-2))])
def test_restricted_spectrum_of_the_deep_linear_mse_ufm_at_dnc_is_the_closed_form(K, n, d, L, lams):
    """Garrod & Keating's setting, every eigenvalue: the dense restricted Hessian at the deep linear
    MSE optimum (DNC, balanced factors) against theory.deep_linear_hessian (derived in
    docs/theory.md §6.4: the in-frame blocks H₊ and H₋, the interfaces, the within-class moves),
    with a λ of its own at every factor, depths 1 to 4, d = K and d > K; at L = 1 it is the
    bias-free model's spectrum too."""
    hyper = {"lam_H1": lams[0], **{f"lam_W{l}": lams[l] for l in range(1, L + 1)}}
    sizes = Sizes(K, n, d)
    params = theory.deep_linear_dnc(hyper, sizes, L)
    so = hessian.classify(get_model("deep-linear", depth=L), sizes, hyper, params,
                          method="dense")
    assert so.grad_norm < 1e-10 and so.kind == "strict local minimum"
    predicted = np.concatenate([[v] * m for v, m in theory.deep_linear_hessian(hyper, sizes, L)])
    assert len(predicted) == len(so.eigenvalues)  # the orbit's zeros are exactly what was removed
    np.testing.assert_allclose(np.sort(so.eigenvalues), np.sort(predicted), rtol=1e-10,
                               atol=1e-12)
    if L == 1:  # the same point and spectrum as the bias-free model's closed form
        two = {"lam_W": lams[1], "lam_H": lams[0]}
        np.testing.assert_allclose(
            np.sort(predicted), np.sort(np.concatenate(
                [[v] * m for v, m in theory.bias_free_hessian(two, sizes)])), rtol=1e-12)


@pytest.mark.parametrize("K, n, d, L, scale", [(4, 2, 5, 2, 1.0), (3, 2, 3, 3, 2.0),
                                               (5, 1, 6, 2, 0.5), (4, 3, 4, 3, 1.0),
                                               (6, 2, 5, 1, 1.0)])
def test_restricted_spectrum_of_the_deep_linear_ce_ufm_at_dnc_is_the_closed_form(K, n, d, L, scale):
    """The cross-entropy counterpart, every eigenvalue: the dense restricted Hessian at DNC (the
    construction S = P at its best scale, balanced factors) against theory.deep_ce_hessian
    (docs/theory.md §6.4: the softmax's curvature splits the symmetric in-frame sector three ways,
    one coupled to H_1's common move), a λ of its own at every factor, d = K − 1 and d > K."""
    lam = scale * 2.0 ** -9
    hyper = {"lam_H1": lam, **{f"lam_W{l}": lam * (1 + 0.3 * l) for l in range(1, L + 1)}}
    sizes = Sizes(K, n, d)
    model = get_model("deep-linear-ce", depth=L)
    so = hessian.classify(model, sizes, hyper, model.constructions(hyper, sizes)["dnc"],
                          method="dense")
    assert so.kind == "strict local minimum"
    predicted = np.concatenate([[v] * m for v, m in theory.deep_ce_hessian(hyper, sizes, L)])
    assert len(predicted) == len(so.eigenvalues)
    np.testing.assert_allclose(np.sort(so.eigenvalues), np.sort(predicted), rtol=1e-10,
                               atol=1e-12)


def test_the_deep_linear_spectrum_is_predicted_only_where_dnc_fits_every_class():
    """Beyond the threshold (§3.10: every class at zero) or at unbalanced counts there is no DNC
    optimum to predict: None, not a wrong spectrum."""
    zero = {"lam_H1": 0.3, "lam_W1": 0.3, "lam_W2": 0.3}
    assert not any(theory.layered(zero, Sizes(3, 2, 4), 2).fit)
    assert theory.deep_linear_hessian(zero, Sizes(3, 2, 4), 2) is None
    assert theory.deep_linear_hessian({"lam_H1": 1e-3, "lam_W1": 1e-3, "lam_W2": 1e-3},
                                      Sizes(3, (2, 3, 2), 4), 2) is None


@pytest.mark.parametrize("K, n, d, lam_W, lam_H", [(3, 4, 5, 1e-2, 2e-2), (4, 3, 6, 1e-2, 1e-2),
                                                    (3, 2, 4, 5e-3, 3e-2), (2, 5, 2, 1e-3, 4e-2),
                                                    (5, 1, 7, 2e-2, 1e-2)])
def test_restricted_spectrum_at_the_bias_free_optimum_is_the_closed_form(K, n, d, lam_W, lam_H):
    """Every eigenvalue of the dense restricted Hessian at Theorem 3.1's optimum, with its
    multiplicity, against theory.bias_free_hessian (derived in docs/theory.md §6.4)."""
    hyper = {"lam_W": lam_W, "lam_H": lam_H}
    params, _ = bias_free_optimum(K, n, d, hyper, seed=K + d)
    so = hessian.classify(get_model("bias-free"), Sizes(K, n, d), hyper, params, method="dense")
    predicted = np.concatenate([[v] * m for v, m in theory.bias_free_hessian(hyper,
                                                                            Sizes(K, n, d))])
    assert len(predicted) == len(so.eigenvalues)  # the orbit's zeros are exactly what was removed
    np.testing.assert_allclose(np.sort(so.eigenvalues), np.sort(predicted), rtol=1e-10,
                               atol=1e-12)
