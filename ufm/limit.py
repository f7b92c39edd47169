"""The λ → 0 limit of the cross-entropy UFM: the UFM-SVM (docs/theory.md §5.4).

As the weight decay vanishes the CE minimiser diverges and its direction converges to the
max-margin problem

    min ½(‖W‖² + ‖H‖²)  s.t.  (w_(y_i) − w_k)ᵀh_i ≥ 1
    ⇔  min ‖Z‖_*  s.t.  z_(y_i, i) − z_(k, i) ≥ 1

(Thrampoulidis, Kini, Vakilian & Behnia 2022). By convexity and the symmetry within a class it has
a class-constant minimiser Z = M·E, and in A = M·D^½ (D = diag n, so ‖Z‖_* = ‖A‖_*) it is

    min ‖A‖_*  s.t.  a_kk − a_jk ≥ √n_k  (j ≠ k),

solved here by ADMM (singular-value thresholding, and a per-column projection onto the margin
polyhedron) in JAX, with a duality-gap certificate: a dual point G (columns summing to 0, off
diagonal ≤ 0, ‖G‖_op ≤ 1) bounds the minimum below by Σ_k √n_k·G_kk.

SELI: the minimiser's class-centred logits are Ẑ = (I − 11ᵀ/K)Y at any counts, so the minimum
is ‖(I − 11ᵀ/K)·D^½‖_* — the closed form the tests compare with.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ufm import convex, linalg


class SVMSolution(NamedTuple):
    """The UFM-SVM's solution: M [K, K] (column k the logits of class k, margins ≥ 1), its value
    ‖Z‖_* (primal, at a feasible point), the dual bound, the relative gap and the iterations."""

    M: Any
    value: Any
    bound: Any
    gap: Any
    iterations: Any


def project_margins(x, k, c):
    """The Euclidean projection of x [K] onto {y : y_k − y_j ≥ c for every j ≠ k}: y_k = x_k + s,
    y_j = min(x_j, y_k − c), with s = max_m (Σ of the m largest v_j)/(m + 1) over m ≥ 0, v_j =
    x_j − x_k + c (the mass moved up to y_k equals the mass moved down from the violators)."""
    K = x.shape[0]
    others = jnp.arange(K) != k
    v = jnp.where(others, x - x[k] + c, -jnp.inf)
    top = jnp.sort(v)[::-1][:K - 1]
    s = jnp.maximum(0.0, jnp.max(jnp.cumsum(top) / jnp.arange(2, K + 1)))
    yk = x[k] + s
    return jnp.where(others, jnp.minimum(x, yk - c), yk)


def _project(A, c):
    """Every column k of A [K, K] onto its margin polyhedron (margins c [K])."""
    K = A.shape[0]
    cols = jax.vmap(project_margins, in_axes=(1, 0, 0), out_axes=1)
    return cols(A, jnp.arange(K), c)


def dual_bound(G, c):
    """(bound, G'): the dual point nearest G [K, K] of the structure the dual needs (off diagonal
    ≤ 0, each column summing to 0, ‖·‖_op ≤ 1) and its value Σ_k c_k·G'_kk, a lower bound on the
    minimum."""
    K = G.shape[0]
    eye = jnp.eye(K, dtype=G.dtype)
    off = jnp.minimum(G * (1 - eye), 0.0)
    G = off - eye * jnp.sum(off, axis=0)[None, :]
    G = G / jnp.maximum(1.0, linalg.singular_values(G)[0])
    return jnp.sum(c * jnp.diag(G)), G


def solve_svm(counts, max_iter=50000, tol=1e-10, rho=None, check_every=20, key=None):
    """The UFM-SVM at class counts `counts` (a tuple) by ADMM, stopped once (primal − dual bound)
    / primal ≤ tol or after max_iter iterations; traceable (jit/vmap it). dtype: the caller's.
    It starts from the projection of 0 onto the margins — which is SELI's point already, so the
    first certificate usually closes the gap — or, with `key`, of a random matrix (the tests
    start there, so that the solver, not its start, finds the optimum)."""
    dtype = jnp.result_type(float)
    n = jnp.asarray(counts, dtype)
    K = n.shape[0]
    c = jnp.sqrt(n)
    rho = jnp.asarray(1.0 / jnp.sqrt(jnp.max(n)) if rho is None else rho, dtype)

    def nuclear(A):
        return jnp.sum(linalg.singular_values(A))

    def body(carry):
        i, A, B, U, gap, value, bound = carry
        A, _ = convex._shrink(B - U, 1.0 / rho)
        B = _project(A + U, c)
        U = U + A - B
        check = (i + 1) % check_every == 0

        def certify():
            v = nuclear(B)
            lo, _ = dual_bound(-rho * U, c)
            return (v - lo) / jnp.maximum(v, 1e-300), v, lo

        gap, value, bound = jax.lax.cond(check, certify, lambda: (gap, value, bound))
        return i + 1, A, B, U, gap, value, bound

    def cond(carry):
        return (carry[0] < max_iter) & ~(carry[4] <= tol)

    start = (jnp.zeros((K, K), dtype) if key is None else
             jnp.sqrt(jnp.max(n)) * jax.random.normal(key, (K, K), dtype))
    B0 = _project(start, c)
    inf = jnp.asarray(jnp.inf, dtype)
    i, _, B, U, gap, value, bound = jax.lax.while_loop(
        cond, body, (0, B0, B0, jnp.zeros((K, K), dtype), inf, inf, -inf))
    return SVMSolution(B / c[None, :], value, bound, gap, i)


def seli(counts):
    """SELI's class-mean logits M̂ = I − 11ᵀ/K [K, K] and the minimum ‖M̂·D^½‖_* (float64 numpy)."""
    K = len(counts)
    M = np.eye(K) - np.ones((K, K)) / K
    return M, float(np.sum(np.linalg.svd(M * np.sqrt(np.asarray(counts, np.float64))[None, :],
                                         compute_uv=False)))


def seli_error(M):
    """‖(M − 1·mean) − M̂‖_F: how far a solution's class-centred logits are from SELI's."""
    M = np.asarray(M, np.float64)
    K = M.shape[0]
    return float(np.linalg.norm(M - M.mean(axis=0, keepdims=True)
                                - (np.eye(K) - np.ones((K, K)) / K)))


def factors(M, sizes):
    """W [K, d], H [d, N] with W·H = M·E and ½(‖W‖² + ‖H‖²) = ‖M·D^½‖_* (the balanced factors of
    the limit direction, margin 1)."""
    A = jnp.asarray(M) * jnp.sqrt(jnp.asarray(sizes.counts, jnp.asarray(M).dtype))[None, :]
    return convex.factors(A, None, (1.0, 1.0), sizes)


__all__ = ["SVMSolution", "solve_svm", "seli", "seli_error", "factors", "project_margins",
           "dual_bound"]
