"""The Papyan et al. (2020) suite: ideal values on exact frames, rotation/scale invariance, NC4 on
a hand-built case, and agreement with an independent plain-numpy computation."""
import jax
import numpy as np
import pytest

from ufm import geometry, metrics


def np_reference(W, H, K, b=None, counts=None):
    """Every measurement written again, plainly, in numpy (float64). counts: per-class counts
    (class-major columns); the global mean is the mean of the class means."""
    d, N = H.shape
    counts = counts or (N // K,) * K
    starts = np.concatenate([[0], np.cumsum(counts)])
    mu = np.stack([H[:, starts[k]:starts[k + 1]].mean(1) for k in range(K)], 1)
    M = mu - mu.mean(1, keepdims=True)
    dev = H - np.repeat(mu, counts, 1)
    Sw, Sb = dev @ dev.T / N, M @ M.T / K
    cos = lambda A: (A / np.linalg.norm(A, axis=0)).T @ (A / np.linalg.norm(A, axis=0))
    off = ~np.eye(K, dtype=bool)
    cM, cW = cos(M)[off], cos(W.T)[off]
    nM, nW = np.linalg.norm(M, axis=0), np.linalg.norm(W, axis=1)
    logits = W @ H + (0 if b is None else b[:, None])
    ncc = np.array([np.argmin([np.linalg.norm(H[:, i] - mu[:, k]) for k in range(K)]) for i in range(N)])
    return {
        "nc1": np.trace(Sw @ np.linalg.pinv(Sb, rcond=1e-10)) / K,
        "self_duality": np.sum((W.T / np.linalg.norm(W) - M / np.linalg.norm(M)) ** 2),
        "equinorm_H": nM.std() / nM.mean(), "equinorm_W": nW.std() / nW.mean(),
        "equinorm_H_unbiased": nM.std(ddof=1) / nM.mean(),
        "equiangularity_H": cM.std(), "equiangularity_W": cW.std(),
        "max_angle_H": np.mean(np.abs(cM + 1 / (K - 1))), "max_angle_W": np.mean(np.abs(cW + 1 / (K - 1))),
        "nc4_mismatch": np.mean(np.argmax(logits, 0) != ncc),
        "nc2_etf_H": _frame(M.T @ M, (np.eye(K) - 1 / K) / np.sqrt(K - 1)),
        "nc2_of_H": _frame(mu.T @ mu, np.eye(K) / np.sqrt(K)),
        "nc3_etf": _frame(W @ M, (np.eye(K) - 1 / K) / np.sqrt(K - 1)),
        "nc3_of": _frame(W @ mu, np.eye(K) / np.sqrt(K)),
        "nc1_unnormalised": np.trace(Sw @ np.linalg.pinv(Sb, rcond=1e-10)),
    }


def _frame(G, ideal):
    return np.linalg.norm(G / np.linalg.norm(G) - ideal)


def ours(W, H, K, b=None):
    out = {k: float(v) for k, v in metrics.papyan_suite(W, H, b, K).items()}
    out["nc1"] = float(metrics.nc1(H, K))
    out["equinorm_H_unbiased"] = float(metrics.equinorm_features_unbiased(H, K))
    out["nc2_etf_H"] = float(metrics.nc2_etf_features(H, K))
    out["nc2_of_H"] = float(metrics.nc2_of_features(H, K))
    out["nc3_etf"] = float(metrics.nc3_etf(W, H, K))
    out["nc3_of"] = float(metrics.nc3_of(W, H, K))
    out["nc1_unnormalised"] = float(metrics.nc1_unnormalised(H, K))
    return out


@pytest.mark.parametrize("K,d,n,seed", [(4, 20, 6, 0), (3, 5, 10, 1), (7, 9, 3, 2)])
def test_agrees_with_independent_numpy(K, d, n, seed):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    H = np.asarray(jax.random.normal(k1, (d, K * n))) + 2 * np.repeat(np.asarray(jax.random.normal(k2, (d, K))), n, 1)
    W = np.asarray(jax.random.normal(k3, (K, d)))
    b = np.linspace(-0.3, 0.3, K)
    ref, got = np_reference(W, H, K, b), ours(W, H, K, b)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-9, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("counts,d,seed", [((3, 1, 5), 6, 0), ((2, 7, 1, 4), 5, 1)])
def test_unequal_counts_agree_with_independent_numpy(counts, d, seed):
    """Centring by the mean of class means (not the sample-weighted mean) in every measurement:
    with counts like (3, 1, 5) the two differ, and only the first matches the reference."""
    K = len(counts)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    H = (np.asarray(jax.random.normal(k1, (d, sum(counts))))
         + 2 * np.repeat(np.asarray(jax.random.normal(k2, (d, K))), counts, 1))
    W = np.asarray(jax.random.normal(k3, (K, d)))
    b = np.linspace(-0.3, 0.3, K)
    ref, got = np_reference(W, H, K, b, counts), ours(W, H, tuple(counts), b)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-9, atol=1e-14, err_msg=k)
    weighted = H.mean(1, keepdims=True)  # the sample-weighted centre gives other values
    mu = np.stack([H[:, np.repeat(np.arange(K), counts) == k].mean(1) for k in range(K)], 1)
    assert abs(_frame((mu - weighted).T @ (mu - weighted), (np.eye(K) - 1 / K) / np.sqrt(K - 1))
               - got["nc2_etf_H"]) > 1e-3


@pytest.mark.parametrize("K,d", [(4, 20), (3, 2), (6, 6)])
def test_ideal_on_exact_simplex_etf(K, d):
    E = np.asarray(geometry.simplex_etf(jax.random.PRNGKey(K), K, d))
    H = np.repeat(3.0 * E, 5, axis=1) + np.asarray(jax.random.normal(jax.random.PRNGKey(9), (d, 1)))  # any global mean
    W = 0.4 * E.T
    got = ours(W, H, K)
    for k in ("self_duality", "equinorm_H", "equinorm_W", "equiangularity_H", "equiangularity_W",
              "max_angle_H", "max_angle_W", "nc1"):
        assert abs(got[k]) < 1e-12, (k, got[k])
    assert got["nc4_mismatch"] == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_invariant_to_rotation_and_scale(seed):
    K, d, n = 4, 8, 5
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    H = np.asarray(jax.random.normal(k1, (d, K * n))) + np.repeat(np.asarray(jax.random.normal(k2, (d, K))), n, 1)
    W = np.asarray(jax.random.normal(k3, (K, d)))
    Q = np.asarray(geometry.random_orthonormal(jax.random.PRNGKey(seed + 7), d, d))
    base = ours(W, H, K)
    for W2, H2 in ((W @ Q.T, Q @ H), (5.0 * W, 0.2 * H)):
        got = ours(W2, H2, K)
        for k in base:
            np.testing.assert_allclose(got[k], base[k], rtol=1e-9, atol=1e-13, err_msg=k)


def test_nc4_hand_built():
    # two classes on a line: means at −1 and +1; the classifier uses a threshold at 0.5 instead of 0
    H = np.array([[-1.2, -0.8, 0.25, 0.4, 1.5, 1.6]])  # class 0: −1.2, −0.8, 0.25; class 1: 0.4, 1.5, 1.6
    W = np.array([[-1.0], [1.0]])
    b = np.array([0.5, -0.5])  # predicts class 1 iff h > 0.5
    # class means −0.5833 and 1.1667: the nearest centre switches at 0.2917. With the bias the
    # rules differ only at h = 0.4 (centre: 1, classifier: 0); without it (switch at 0) only at
    # h = 0.25 (centre: 0, classifier: 1).
    assert float(metrics.nc4_mismatch(W, H, b)) == pytest.approx(1 / 6)
    assert float(metrics.nc4_mismatch(W, H)) == pytest.approx(1 / 6)
    # the same count, different samples: with the bias h = 0.4 disagrees, without it h = 0.25
    labels_ncc = np.array([0, 0, 0, 1, 1, 1])
    with_b = np.argmax(W @ H + b[:, None], axis=0) != labels_ncc
    without_b = np.argmax(W @ H, axis=0) != labels_ncc
    assert with_b.tolist() == [0, 0, 0, 1, 0, 0] and without_b.tolist() == [0, 0, 1, 0, 0, 0]
    # a bias that moves the threshold past 0.25 as well: two mismatches with it, one without
    b2 = np.array([-0.2, 0.2])  # predicts class 1 iff h > −0.2
    assert float(metrics.nc4_mismatch(W, H, b2)) == pytest.approx(1 / 6)
    b3 = np.array([1.0, -1.0])  # predicts class 1 iff h > 1: 0.4 wrong (NCC says 1)
    assert float(metrics.nc4_mismatch(W, H, b3)) == pytest.approx(1 / 6)
    b4 = np.array([1.5, -1.5])  # class 1 iff h > 1.5: 0.4 and 1.5 disagree with NCC
    assert float(metrics.nc4_mismatch(W, H, b4)) == pytest.approx(2 / 6)
    assert float(metrics.nc4_mismatch(W, H, b4)) != float(metrics.nc4_mismatch(W, H))
