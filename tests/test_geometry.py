import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ufm import geometry as g


@pytest.mark.parametrize("K,d", [(2, 1), (4, 3), (4, 20), (7, 7), (10, 64)])
def test_simplex_etf_gram(K, d):
    M = np.asarray(g.simplex_etf(jax.random.PRNGKey(K * d), K, d))
    assert M.shape == (d, K)
    G = M.T @ M
    np.testing.assert_allclose(np.diag(G), 1.0, atol=1e-12)
    off = G[~np.eye(K, dtype=bool)]
    np.testing.assert_allclose(off, -1.0 / (K - 1), atol=1e-12)
    np.testing.assert_allclose(M.sum(axis=1), 0.0, atol=1e-12)
    assert float(g.etf_distance(G)) < 1e-12
    assert g.is_etf(G) and not g.is_orthogonal_frame(G)


@pytest.mark.parametrize("K,d", [(2, 2), (4, 20), (6, 6)])
def test_orthogonal_frames(K, d):
    key = jax.random.PRNGKey(d)
    U = np.asarray(g.orthogonal_frame(key, K, d))
    np.testing.assert_allclose(U.T @ U, np.eye(K), atol=1e-12)
    assert g.is_orthogonal_frame(U.T @ U) and not g.is_etf(U.T @ U)
    Q = np.asarray(g.nonnegative_orthogonal_frame(key, K, d))
    assert (Q >= 0).all()
    np.testing.assert_allclose(Q.T @ Q, np.eye(K), atol=1e-12)
    supports = Q > 0
    assert (supports.sum(axis=1) <= 1).all() and (supports.sum(axis=0) >= 1).all()


def test_random_frames_differ_by_key():
    a = g.orthogonal_frame(jax.random.PRNGKey(0), 3, 5)
    b = g.orthogonal_frame(jax.random.PRNGKey(1), 3, 5)
    assert not np.allclose(a, b)


def test_distances_scale_invariant_and_catch_wrong_frames():
    K = 5
    P = np.eye(K) - 1 / K
    assert float(g.etf_distance(3.7 * P)) < 1e-12
    assert float(g.of_distance(0.2 * np.eye(K))) < 1e-12
    assert float(g.etf_distance(-P)) > 1.9  # negative factor is not an ETF
    assert float(g.of_distance(np.diag([1.0, 1, 1, 1, 2]))) > 0.05
    assert np.isnan(float(g.of_distance(jnp.zeros((K, K)))))  # no direction: undefined
    assert np.isnan(float(g.etf_distance(jnp.zeros((K, K)))))
    assert not g.is_etf(jnp.zeros((K, K)))


@pytest.mark.parametrize("fn,K,d,msg", [
    (g.simplex_etf, 4, 2, "d >= 3"), (g.orthogonal_frame, 4, 3, "d >= 4"),
    (g.nonnegative_orthogonal_frame, 5, 4, "d >= 5"), (g.orthogonal_frame, 1, 3, "K must be >= 2"),
])
def test_frame_size_errors(fn, K, d, msg):
    with pytest.raises(ValueError, match=msg):
        fn(jax.random.PRNGKey(0), K, d)
