"""The λ → 0 limit of the CE UFM (ufm.limit, docs/theory.md §5.4): the UFM-SVM solved by ADMM from
random starts against SELI's closed form at balanced and imbalanced counts, its projection
against a generic QP solver, its factors, and the CE optimum's direction converging to it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from ufm import limit, metrics
from ufm.cli import main
from ufm.runner import train


@pytest.mark.parametrize("seed", range(3))
def test_margin_projection_equals_a_generic_qp_solver(seed):
    rng = np.random.default_rng(seed)
    K, k, c = 6, seed % 6, 0.5 + seed
    x = rng.normal(size=K) * 2
    y = np.asarray(limit.project_margins(jnp.asarray(x), k, c))
    cons = [{"type": "ineq", "fun": lambda z, j=j: z[k] - z[j] - c} for j in range(K) if j != k]
    ref = scipy.optimize.minimize(lambda z: np.sum((z - x) ** 2), x, constraints=cons,
                                  method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000}).x
    np.testing.assert_allclose(y, ref, atol=1e-6)  # SLSQP's own accuracy
    assert np.all(y[k] - np.delete(y, k) >= c - 1e-12)


@pytest.mark.parametrize("counts", [(5, 2, 1), (4, 4, 4), (50, 20, 5, 1, 1), (1000, 10, 1),
                                    tuple(range(1, 21))])
def test_svm_from_random_starts_is_seli(counts):
    """SELI: the class-centred logits are I − 11ᵀ/K at any counts, so the minimum is
    ‖(I − 11ᵀ/K)·D^½‖_* (computed here independently); (5, 2, 1): 3.17715055026175, checked
    outside ufm by multi-start SLSQP."""
    K = len(counts)
    P = np.eye(K) - np.ones((K, K)) / K
    expected = np.linalg.svd(P * np.sqrt(np.asarray(counts, float))[None, :],
                             compute_uv=False).sum()
    if counts == (5, 2, 1):
        assert expected == pytest.approx(3.17715055026175, abs=1e-13)
    sol = jax.jit(lambda key: limit.solve_svm(counts, key=key))(jax.random.PRNGKey(7))
    assert float(sol.gap) <= 1e-10
    assert float(sol.value) == pytest.approx(expected, rel=1e-10)
    assert float(sol.bound) <= expected * (1 + 1e-12)  # a lower bound, never above
    assert float(sol.bound) == pytest.approx(expected, rel=1e-9)
    assert limit.seli_error(sol.M) < 1e-8


def test_limit_factors_have_margin_one_and_the_svm_value():
    from ufm.models import Sizes

    counts = (6, 3, 2, 1)
    sizes = Sizes(4, counts, 5)
    sol = jax.jit(lambda: limit.solve_svm(counts))()
    W, H = (np.asarray(v) for v in limit.factors(np.asarray(sol.M), sizes).values())
    assert 0.5 * (np.sum(W * W) + np.sum(H * H)) == pytest.approx(float(sol.value), rel=1e-10)
    Z = W @ H
    y = metrics.class_labels(counts, sizes.N)
    margins = Z[y, np.arange(sizes.N)][None, :] - Z
    margins[y, np.arange(sizes.N)] = np.inf
    assert margins.min() == pytest.approx(1.0, abs=1e-9)


def test_cross_entropy_optimum_turns_toward_the_limit_as_lambda_vanishes():
    """The certified CE optimum at counts (5, 2, 1): the angle between its centred class logits
    and the limit's shrinks as λ falls (1e-2 → 1e-4 → 1e-6), and its norm grows."""
    counts, K = (5, 2, 1), 3
    target = np.eye(K) - np.ones((K, K)) / K
    cosines, norms = [], []
    for lam in (1e-2, 1e-4, 1e-6):
        r = train("ce", K=K, n=counts, d=4, lam_W=lam, lam_H=lam, optimizer="convex",
                  steps=100000)
        assert r.certificate["global"]
        M = r.params["W"] @ np.asarray(metrics.class_means(jnp.asarray(r.params["H"]), counts))
        C = M - M.mean(axis=0, keepdims=True)
        cosines.append(np.sum(C * target) / (np.linalg.norm(C) * np.linalg.norm(target)))
        norms.append(np.linalg.norm(M))
    assert cosines[0] < cosines[1] < cosines[2] and cosines[2] > 1 - 1e-3
    assert norms[0] < norms[1] < norms[2]


def test_cli_limit_writes_the_direction_and_refuses_other_models(tmp_path, capsys):
    out = tmp_path / "lim"
    assert main(["train", "ce", "--K", "3", "--n", "5,2,1", "--d", "4", "--limit", "--quiet",
                 "--out", str(out)]) == 0
    assert "SELI" in capsys.readouterr().out
    with np.load(out / "params.npz") as f:
        assert f["W"].shape == (3, 4) and f["H"].shape == (4, 8)
    assert main(["train", "bias-free", "--limit", "--quiet", "--out", str(tmp_path / "x")]) == 2
    assert "limit (--limit)" in capsys.readouterr().err
    assert main(["train", "ce", "--K", "4", "--d", "2", "--allow-small-d", "--limit",
                 "--quiet", "--out", str(tmp_path / "y")]) == 2
    assert "--limit needs d >= K − 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ---- the margin-scaled problem: the λ → 0 limit of ce-adjusted (CDT / VS) ----

SCALED = [((5, 2, 1), (1.0, 0.7, 0.4)), ((4, 4, 4), (0.3, 1.0, 2.0)),
          ((50, 20, 5, 1, 1), (1.0, 0.05, 3.0, 1.0, 1.0)),
          ((100, 100, 1, 1), (1.0, 1.0, 0.1, 0.1)), ((7, 3), (1.0, 20.0))]


@pytest.mark.parametrize("seed", range(4))
def test_scaled_margin_projection_equals_a_generic_qp_solver(seed):
    rng = np.random.default_rng(10 + seed)
    K, k, c = 6, seed % 6, 0.5 + seed
    x, delta = rng.normal(size=K) * 2, np.exp(rng.normal(size=K))
    y = np.asarray(limit.project_margins(jnp.asarray(x), k, c, jnp.asarray(delta)))
    cons = [{"type": "ineq", "fun": lambda z, j=j: delta[k] * z[k] - delta[j] * z[j] - c}
            for j in range(K) if j != k]
    ref = scipy.optimize.minimize(lambda z: np.sum((z - x) ** 2), x, constraints=cons,
                                  method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000}).x
    np.testing.assert_allclose(y, ref, atol=1e-6)  # SLSQP's own accuracy
    assert np.all(delta[k] * y[k] - np.delete(delta * y, k) >= c - 1e-12)
    # KKT exactly: multipliers μ_j = (x_j − y_j)/Δ_j ≥ 0, zero where the margin is slack, and
    # y_k − x_k = Δ_k·Σ_j μ_j
    mu = np.delete((x - y) / delta, k)
    slack = delta[k] * y[k] - np.delete(delta * y, k) - c
    assert np.all(mu >= -1e-15) and np.all(mu * slack <= 1e-12)
    assert y[k] - x[k] == pytest.approx(delta[k] * mu.sum(), abs=1e-12)


@pytest.mark.parametrize("counts, delta", SCALED)
def test_scaled_svm_from_random_starts_is_the_closed_form(counts, delta):
    """ADMM from a random start against scaled_seli's M = diag(1/Δ)(I − 1wᵀ), w ∝ Δ⁻², whose
    optimality scaled_seli proves by its multipliers (all ≤ 0 here)."""
    closed = limit.scaled_seli(counts, delta)
    assert closed.multiplier <= 0
    sol = jax.jit(lambda key: limit.solve_svm(counts, key=key, delta=delta))(
        jax.random.PRNGKey(11))
    assert float(sol.gap) <= 1e-10
    assert float(sol.value) == pytest.approx(closed.value, rel=1e-10)
    assert float(sol.bound) <= closed.value * (1 + 1e-12)
    np.testing.assert_allclose(np.asarray(sol.M), closed.M, atol=1e-6 * np.abs(closed.M).max())
    d = np.asarray(delta)
    scaled = d[:, None] * closed.M  # every scaled margin tight: Δ_k·M_kk − Δ_j·M_jk = 1
    np.testing.assert_allclose(np.diag(scaled)[None, :] - scaled, 1 - np.eye(len(d)), atol=1e-12)


def test_scaled_closed_form_equals_an_independent_max_margin_solution():
    """min ½(‖W‖² + Σ_k n_k‖h_k‖²) s.t. (Δ_k·w_k − Δ_j·w_j)ᵀh_k ≥ 1, solved over the factors by
    multi-start SLSQP (no nuclear norm, no ADMM), equals the closed form's ‖M·D^½‖_*."""
    counts, delta = np.array([5.0, 2.0, 1.0]), np.array([1.0, 0.7, 0.4])
    K, d = 3, 3
    closed = limit.scaled_seli(tuple(counts.astype(int)), delta)

    def parts(x):
        return x[:K * d].reshape(K, d), x[K * d:].reshape(d, K)

    def objective(x):
        W, H = parts(x)
        return 0.5 * (np.sum(W * W) + np.sum(counts * np.sum(H * H, axis=0)))

    cons = [{"type": "ineq", "fun": lambda x, j=j, k=k:
             (delta[k] * parts(x)[0][k] - delta[j] * parts(x)[0][j]) @ parts(x)[1][:, k] - 1}
            for k in range(K) for j in range(K) if j != k]
    rng, best = np.random.default_rng(0), np.inf
    for _ in range(8):
        res = scipy.optimize.minimize(objective, rng.normal(size=2 * K * d), constraints=cons,
                                      method="SLSQP", options={"ftol": 1e-14, "maxiter": 2000})
        if res.success:
            best = min(best, res.fun)
    assert best == pytest.approx(closed.value, rel=1e-7)  # SLSQP's accuracy


def test_scaled_closed_form_is_proven_at_random_counts_and_scales():
    """The multipliers of the closed form's only admissible subgradient are ≤ 0 — it is the
    optimum — at 300 random settings (K 2…7, counts 1…1000, scale ratios up to e^±8)."""
    rng = np.random.default_rng(3)
    worst = max(limit.scaled_seli(tuple(rng.integers(1, 1000, size=K)),
                                  np.exp(rng.normal(size=K) * rng.uniform(0, 4))).multiplier
                for K in rng.integers(2, 8, size=300))
    assert worst <= 1e-10


@pytest.mark.parametrize("K1, K2, R, delta2", [(5, 5, 10, 1.0), (5, 5, 10, 10 ** -0.5),
                                                 (3, 7, 100, 0.2), (8, 2, 3, 2.0), (1, 4, 5, 0.5)])
def test_two_group_geometry_equals_the_solved_limits_factors(K1, K2, R, delta2):
    """The closed-form norms and cosines (two_group_geometry) against the Gram matrices of the
    balanced factors of the ADMM solution, each class its own column."""
    from ufm.models import Sizes

    counts = (R,) * K1 + (1,) * K2
    delta = np.array([1.0] * K1 + [delta2] * K2)
    sol = jax.jit(lambda: limit.solve_svm(counts, delta=delta))()
    assert float(sol.gap) <= 1e-10
    sizes = Sizes(K1 + K2, counts, K1 + K2)
    W, H = (np.asarray(v) for v in limit.factors(np.asarray(sol.M), sizes).values())
    Hbar = np.asarray(metrics.class_means(jnp.asarray(H), counts))
    geo = limit.two_group_geometry(K1, K2, R, 1, 1.0, delta2)
    for X, norms, cos in ((W, geo.w_norm2, geo.w_cos), (Hbar.T, geo.h_norm2, geo.h_cos)):
        G = X @ X.T
        a, b = 0, K1  # a majority class and a minority class
        np.testing.assert_allclose([G[a, a], G[b, b]], norms, rtol=1e-8)
        unit = G / np.sqrt(np.outer(np.diag(G), np.diag(G)))
        want = [cos[0] if K1 > 1 else None, cos[1] if K2 > 1 else None, cos[2]]
        got = [unit[0, 1] if K1 > 1 else None, unit[b, b + 1] if K2 > 1 else None, unit[a, b]]
        for g, w in zip(got, want):
            if w is not None:
                assert g == pytest.approx(w, abs=1e-8)


def test_cli_limit_of_ce_adjusted_takes_cdt_scales(tmp_path, capsys):
    """--cdt-gamma sets the margin scales; --tau and the class weights drop out of the limit."""
    runs = {}
    for name, flags in (("cdt", ["--cdt-gamma", "0.5"]),
                        ("vs", ["--cdt-gamma", "0.5", "--tau", "1", "--class-weight", "3,1,2"])):
        out = tmp_path / name
        assert main(["train", "ce-adjusted", "--K", "3", "--n", "5,2,1", "--d", "4", "--limit",
                     "--quiet", "--out", str(out), *flags]) == 0
        assert "proven optimal" in capsys.readouterr().out
        with np.load(out / "params.npz") as f:
            runs[name] = f["W"] @ f["H"]
    np.testing.assert_allclose(runs["cdt"], runs["vs"], atol=1e-12)
    # Δ = √(n/n_max): A = √n_max·(I − ssᵀ/‖s‖²), so the value is √5·(K − 1)
    r = train("ce-adjusted", K=3, n=(5, 2, 1), d=4, limit=True, cdt_gamma=0.5)
    assert r.certificate["value"] == pytest.approx(2 * np.sqrt(5), rel=1e-10)
    assert main(["train", "ce-adjusted", "--K", "3", "--n", "5,2,1", "--limit", "--cdt-gamma",
                 "100", "--quiet", "--out", str(tmp_path / "z")]) == 2
    assert "--cdt-gamma" in capsys.readouterr().err and not (tmp_path / "z").exists()
