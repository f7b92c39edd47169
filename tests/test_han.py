"""Han, Papyan & Donoho's MSE decomposition (docs/theory.md §3.8)."""
import jax
import numpy as np
import pytest

import ufm
from ufm import metrics
from ufm.models import Sizes


def random_case(seed, K=4, d=6, n=5):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    H = np.asarray(jax.random.normal(k1, (d, K * n))) + 2 * np.repeat(np.asarray(jax.random.normal(k2, (d, K))), n, 1)
    return H, np.asarray(jax.random.normal(k3, (K, d))), np.asarray(jax.random.normal(k4, (K,)))


@pytest.mark.parametrize("seed,lam", [(0, 0.0), (1, 1e-3), (2, 0.1), (3, 2.0)])
def test_identity_holds_exactly(seed, lam):
    H, W, b = random_case(seed)
    han = metrics.han_decomposition(W, b, H, lam)
    assert float(han.loss) == pytest.approx(float(han.nc1 + han.nc23 + han.ls_perp), rel=1e-10, abs=1e-12)
    assert min(float(han.nc1), float(han.nc23), float(han.ls_perp)) >= 0


@pytest.mark.parametrize("seed,lam", [(4, 1e-2), (5, 0.5)])
def test_least_squares_classifier_minimises_over_w(seed, lam):
    H, W, b = random_case(seed)
    han = metrics.han_decomposition(W, b, H, lam)
    Wls = np.asarray(han.W_ls)
    at_ls = metrics.han_decomposition(Wls[:, :-1], Wls[:, -1], H, lam)
    assert float(at_ls.ls_perp) < 1e-20  # the LS⊥ term vanishes at W̃_LS
    grad = jax.grad(lambda Wt: metrics.han_decomposition(Wt[:, :-1], Wt[:, -1], H, lam).loss)(Wls)
    assert np.abs(np.asarray(grad)).max() < 1e-12
    rng = np.random.default_rng(seed)
    for _ in range(5):
        E = 1e-3 * rng.standard_normal(Wls.shape)
        assert float(metrics.han_decomposition(Wls[:, :-1] + E[:, :-1], Wls[:, -1] + E[:, -1], H, lam).loss) > float(at_ls.loss)


@pytest.mark.parametrize("seed,K,d,n", [(6, 4, 6, 5), (7, 3, 4, 8), (8, 5, 7, 4)])
def test_least_squares_loss_at_zero_lambda(seed, K, d, n):
    H, W, b = random_case(seed, K, d, n)
    han = metrics.han_decomposition(W, b, H, 0.0)
    _, Sw, _ = metrics.total_covariance_split(H, K)
    Sw = np.asarray(Sw)
    evals, evecs = np.linalg.eigh(Sw)
    Sw_inv_half = evecs @ np.diag(evals ** -0.5) @ evecs.T
    omega = np.linalg.svd(Sw_inv_half @ np.asarray(metrics.centred_means(H, K)), compute_uv=False)[: K - 1]
    expected = 0.5 * np.sum(1.0 / (K + omega ** 2))
    assert float(han.nc1 + han.nc23) == pytest.approx(expected, rel=1e-10)


def test_ufm_objective_is_the_sum_plus_feature_penalty():
    model = ufm.get_model("regularized-bias")
    sizes = Sizes(4, 5, 6)
    H, W, b = random_case(9)
    lam, lam_H = 3e-2, 1e-2
    f = model.objective({"W": W, "H": H, "b": b}, {"lam_W": lam, "lam_H": lam_H, "lam_b": lam}, sizes)
    han = metrics.han_decomposition(W, b, H, lam)
    assert float(f) == pytest.approx(float(han.nc1 + han.nc23 + han.ls_perp) + lam_H / 2 * np.sum(H ** 2), rel=1e-12)


def test_recorded_along_bias_runs():
    r = ufm.train("regularized-bias", K=3, n=4, d=5, steps=200, log_every=100, lam_b=5e-3)
    for k in ("han_nc1", "han_nc23", "han_ls_perp"):
        assert r.history[k].shape == (3,) and np.all(np.asarray(r.history[k]) >= 0)
    # with λ_b = λ_W the three terms plus λ_H/2‖H‖² give back the objective at every record
    total = r.history["han_nc1"] + r.history["han_nc23"] + r.history["han_ls_perp"]
    np.testing.assert_allclose(total + 5e-3 / 2 * r.history["norm_H"] ** 2, r.history["objective"],
                               rtol=1e-10)


def test_not_recorded_for_cross_entropy():
    r = ufm.train("ce-bias", K=3, n=4, d=5, steps=20, log_every=10)
    assert not any(k.startswith("han_") for k in r.history)  # an MSE identity only
