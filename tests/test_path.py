"""The regularisation path by Newton (ufm.path; docs/theory.md §5.4): the smooth nuclear norm's
derivatives, the path against the convex solver where both run, and certified to μ = 1e-8 where
first-order solvers stall."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ufm import metrics, path
from ufm.runner import train


def test_polar_and_its_derivative_match_automatic_differentiation_of_the_svd():
    """polar = ∇‖B‖_*, and its hand-written JVP (the Sylvester equation in R's eigenbasis)
    against JAX's own differentiation of U·Wᵀ (distinct singular values here)."""
    rng = np.random.default_rng(0)
    B = jnp.asarray(rng.normal(size=(4, 6)) * np.array([1, 3, 10, 30, 100, 300.0]))
    dB = jnp.asarray(rng.normal(size=(4, 6)))

    def plain(B):
        U, _, Wt = jnp.linalg.svd(B, full_matrices=False)
        return U @ Wt

    np.testing.assert_allclose(jax.grad(path.nuclear)(B), plain(B), atol=1e-13)
    _, ours = jax.jvp(path.polar, (B,), (dB,))
    _, theirs = jax.jvp(plain, (B,), (dB,))
    np.testing.assert_allclose(ours, theirs, atol=1e-12)
    Q = np.asarray(path.centred_basis(5))
    np.testing.assert_allclose(Q.T @ Q, np.eye(4), atol=1e-15)
    np.testing.assert_allclose(Q.sum(axis=0), 0.0, atol=1e-15)


def test_newton_path_equals_the_convex_solver_and_is_certified_to_1e_8():
    """Counts (50, 50, 5, 5): at μ = 1e-3 and 1e-5 Newton's point has the convex solver's
    objective (FISTA, certified) to 1e-10; down to μ = 1e-8 every point is certified to 1e-12."""
    counts = (50, 50, 5, 5)
    mus = np.array([1e-3, 1e-5, 1e-6, 1e-7, 1e-8])
    out = path.certified_path(counts, mus)
    assert out["certified"].all() and np.all(out["gap"] <= 1e-12), out["gap"]
    for i, mu in enumerate(mus[:2]):
        r = train("ce", K=4, n=counts, d=4, optimizer="convex", steps=100000, lam_W=mu,
                  lam_H=mu)
        assert r.certificate["global"]
        assert out["objective"][i] == pytest.approx(r.final["objective"], rel=1e-10)
        M = np.asarray(r.params["W"]) @ np.asarray(metrics.class_means(r.params["H"], counts))
        np.testing.assert_allclose(out["M"][i], M, atol=1e-5 * np.abs(M).max())
    assert np.all(np.diff(np.linalg.norm(out["M"], axis=(1, 2))) > 0)  # the logits grow


def test_newton_leaves_collapsed_optima_uncertified():
    """Where a group collapses (rank below K − 1) the smooth problem does not hold the optimum:
    the certificate says so instead of passing a wrong point (counts (2000, 2000, 1, 1), μ =
    0.01: √1 ≤ μN, the minority classifiers coincide)."""
    out = path.certified_path((2000, 2000, 1, 1), np.array([1e-2]))
    assert not out["certified"][0] and out["lower_bound"][0] <= out["objective"][0]
