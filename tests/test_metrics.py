import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ufm import geometry, metrics


def collapsed(frame, n, scale=1.0):
    """Features equal to their class means: H = scale·frame ⊗ 1_nᵀ  [d, Kn]."""
    return scale * np.repeat(np.asarray(frame), n, axis=1)


def reference_nc1(H, K):
    """(1/K) tr(Σ_W Σ_B^†) in plain numpy with a d×d pseudo-inverse (float64)."""
    d, N = H.shape
    n = N // K
    Hk = H.reshape(d, K, n)
    mu = Hk.mean(axis=2)
    dev = (Hk - mu[:, :, None]).reshape(d, N)
    M = mu - mu.mean(axis=1, keepdims=True)
    Sw = dev @ dev.T / N
    Sb = M @ M.T / K
    return np.trace(Sw @ np.linalg.pinv(Sb, rcond=1e-10)) / K


def random_rotation(key, d):
    return np.asarray(geometry.random_orthonormal(key, d, d))


@pytest.mark.parametrize("K,d,n", [(4, 20, 5), (3, 3, 7), (6, 10, 2)])
def test_zero_on_exact_orthogonal_frame(K, d, n):
    U = geometry.orthogonal_frame(jax.random.PRNGKey(1), K, d)
    H = collapsed(U, n, 2.5)
    W = 0.7 * np.asarray(U).T  # aligned with H̄ᵀ
    assert float(metrics.nc1(H, K)) < 1e-28  # rounding of the mean: eps² scale
    assert float(metrics.nc2_of_features(H, K)) < 1e-12
    assert float(metrics.nc2_etf_features(H, K)) < 1e-12  # a centred OF is a simplex ETF
    assert float(metrics.nc2_of_weights(W)) < 1e-12
    assert float(metrics.nc3_of(W, H)) < 1e-12
    assert float(metrics.nc2_etf_weights(W)) > 0.1  # an OF is not an ETF
    assert float(metrics.nc3_etf(W, H)) < 1e-12  # W M̄ = W H̄ P ∝ P whenever W H̄ ∝ I


@pytest.mark.parametrize("K,d,n", [(4, 3, 5), (5, 20, 3), (2, 1, 4)])
def test_zero_on_exact_simplex_etf(K, d, n):
    M = geometry.simplex_etf(jax.random.PRNGKey(2), K, d)
    H = collapsed(M, n, 0.3)
    W = 4.0 * np.asarray(M).T
    assert float(metrics.nc1(H, K)) < 1e-28  # rounding of the mean: eps² scale
    assert float(metrics.nc2_etf_features(H, K)) < 1e-12
    assert float(metrics.nc2_etf_weights(W)) < 1e-12
    assert float(metrics.nc3_etf(W, H)) < 1e-12
    if d >= K:
        assert float(metrics.nc2_of_features(H, K)) > 0.1


def _all(W, H, K):
    return np.array([metrics.nc1(H, K), metrics.nc2_etf_features(H, K),
                     metrics.nc2_of_features(H, K), metrics.nc2_etf_weights(W),
                     metrics.nc2_of_weights(W), metrics.nc3_etf(W, H), metrics.nc3_of(W, H)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_invariant_to_rotation_and_scale(seed):
    K, d, n = 4, 9, 6
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    H = np.asarray(jax.random.normal(k1, (d, K * n)))
    W = np.asarray(jax.random.normal(k2, (K, d)))
    Q = random_rotation(k3, d)
    base = _all(W, H, K)
    np.testing.assert_allclose(_all(W @ Q.T, Q @ H, K), base, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_all(3.0 * W, 0.01 * H, K), base, rtol=1e-10, atol=1e-12)
    assert (base > 0).all()


@pytest.mark.parametrize("K,d,n,seed", [(4, 20, 50, 0), (3, 2, 10, 1), (10, 64, 5, 2)])
def test_nc1_matches_pseudo_inverse_definition(K, d, n, seed):
    H = np.array(jax.random.normal(jax.random.PRNGKey(seed), (d, K * n)))
    H += np.repeat(np.asarray(jax.random.normal(jax.random.PRNGKey(seed + 10), (d, K))), n, 1)
    np.testing.assert_allclose(float(metrics.nc1(H, K)), reference_nc1(H, K), rtol=1e-9)


@pytest.mark.parametrize("eps", [1e-2, 1e-4, 1e-6])
def test_nc1_accurate_in_float32_near_collapse(eps):
    K, d, n = 4, 20, 50
    U = geometry.orthogonal_frame(jax.random.PRNGKey(3), K, d)
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (d, K * n)))
    H64 = collapsed(U, n) + eps * noise
    exact = reference_nc1(H64, K)  # ≈ eps² scale
    got32 = float(metrics.nc1(jnp.asarray(H64, jnp.float32), K))
    assert got32 >= 0
    # float32 rounding of the features themselves perturbs deviations by ~6e-8·|h|, i.e.
    # relative error ~ 6e-8/eps on the deviation and twice that on its square.
    np.testing.assert_allclose(got32, exact, rtol=max(1e-4, 4 * 6e-8 / eps))


def test_nc1_never_negative_and_nan_on_nonfinite():
    K, d, n = 3, 5, 4
    for seed in range(20):
        H = np.array(jax.random.normal(jax.random.PRNGKey(seed), (d, K * n)), np.float32)
        assert float(metrics.nc1(H, K)) >= 0
    H[0, 0] = np.nan
    assert np.isnan(float(metrics.nc1(H, K)))


@pytest.mark.parametrize("K,d,n", [(4, 6, 5), (3, 8, 2)])
def test_total_covariance_decomposes(K, d, n):
    H = np.asarray(jax.random.normal(jax.random.PRNGKey(K), (d, K * n)))
    ST, SW, SB = metrics.total_covariance_split(H, K)
    np.testing.assert_allclose(ST, SW + SB, atol=1e-12)


def test_class_major_layout():
    K, n, d = 3, 4, 2
    H = np.zeros((d, K * n))
    for k in range(K):
        H[:, k * n:(k + 1) * n] = k + 1
    np.testing.assert_allclose(metrics.class_means(H, K), np.array([[1, 2, 3], [1, 2, 3.0]]))
