"""Krylov methods on any symmetric operator given as a matrix-vector product (the Hessian's, in
ufm.hessian): Lanczos with full reorthogonalisation, its Ritz pairs with residual bounds, and
stochastic Lanczos quadrature for a spectral density. Traceable where said (vmap over start
vectors)."""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

class Lanczos(NamedTuple):
    """k Lanczos steps with full reorthogonalisation: the tridiagonal (alpha [k], beta [k]), the
    Krylov basis V [k, P] and valid [k] (False for steps after the space was exhausted: V's row
    is 0 there). Ritz pairs of T give eigenpairs of the operator with residual |beta_k · s_k|."""

    alpha: Any
    beta: Any
    V: Any
    valid: Any


def lanczos(matvec, v0, steps, restrict=None):
    """`steps` Lanczos steps from v0 [P] (traceable: vmap it over start vectors). Every new
    vector is orthogonalised twice against all earlier ones (full reorthogonalisation); after a
    breakdown (an invariant subspace found) the next vector is a fresh one orthogonal to them,
    mapped by `restrict` first (the subspace the operator acts on, if not all of R^P); once no
    fresh direction is left (the subspace exhausted) the remaining steps are marked invalid."""
    P = v0.shape[0]
    dtype = v0.dtype
    tiny = jnp.sqrt(jnp.finfo(dtype).eps)
    V = jnp.zeros((steps + 1, P), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    fresh = lambda j: jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(1), j), (P,), dtype)

    def body(j, carry):
        V, alpha, beta, valid = carry
        w = matvec(V[j])
        alpha = alpha.at[j].set(jnp.vdot(V[j], w))
        for _ in range(2):  # twice is enough (Kahan–Parlett)
            w = w if restrict is None else restrict(w)  # rounding must not leak out of it
            w = w - V.T @ (V @ w)
        b = jnp.linalg.norm(w)
        scale = jnp.maximum(jnp.max(jnp.abs(alpha)), jnp.finfo(dtype).tiny)
        broke = b <= 1e-12 * scale
        def restart(_):  # only after a breakdown (a select under vmap)
            start = fresh(j) if restrict is None else restrict(fresh(j))
            out = start - V.T @ (V @ start)
            out = out - V.T @ (V @ out)
            r = jnp.linalg.norm(out)
            left = r > tiny * jnp.linalg.norm(start)  # a direction outside the space remains
            return jnp.where(left, out / jnp.where(left, r, 1.0), 0.0), left

        nxt, left = jax.lax.cond(broke, restart, lambda _: (w / jnp.where(broke, 1.0, b), True),
                                 None)
        valid = valid.at[j + 1].set(valid[j] & (~broke | left))
        return V.at[j + 1].set(nxt), alpha, beta.at[j].set(jnp.where(broke, 0.0, b)), valid

    valid = jnp.zeros(steps + 1, bool).at[0].set(True)
    V, alpha, beta, valid = jax.lax.fori_loop(
        0, steps, body, (V, jnp.zeros(steps, dtype), jnp.zeros(steps, dtype), valid))
    return Lanczos(alpha, beta, V[:steps], valid[:steps])


def tridiagonal(run):
    """The Lanczos matrix T [k, k] with the invalid steps' entries decoupled (β = 0) and set to
    α₀, a Rayleigh quotient of the operator: they add copies of a value inside its spectrum, so
    the extreme Ritz values are those of the valid steps (traceable)."""
    alpha = jnp.where(run.valid, run.alpha, run.alpha[0])
    beta = jnp.where(run.valid[1:], run.beta[:-1], 0.0)
    return jnp.diag(alpha) + jnp.diag(beta, 1) + jnp.diag(beta, -1)


def ritz(run):
    """(values [k] ascending, vectors [k, P], residual bounds [k]) of a Lanczos run's valid
    steps (host)."""
    valid = np.asarray(run.valid)
    alpha, beta = np.asarray(run.alpha)[valid], np.asarray(run.beta)[valid]
    theta, S = scipy.linalg.eigh_tridiagonal(alpha, beta[:-1])
    residual = np.abs(beta[-1] * S[-1, :])
    return theta, (S.T @ np.asarray(run.V)[valid]), residual


def spectral_density(matvec, P, key, vectors=16, steps=64, dtype=jnp.float64):
    """Stochastic Lanczos quadrature: (nodes [vectors, steps], weights [vectors, steps]) with
    Σ weights = 1 per vector, so (1/vectors)·Σ w·δ(t − node) estimates the spectral density
    (1/P)·Σ_i δ(t − λ_i) (Ubaru, Chen & Saad 2017). Start vectors are Rademacher; the weights are
    the squared first components of the Ritz vectors (0 for steps past an exhausted space)."""
    starts = jax.random.rademacher(key, (vectors, P), dtype)
    runs = jax.jit(jax.vmap(lambda v: lanczos(matvec, v, steps)))(starts)
    nodes, weights = np.zeros((vectors, steps)), np.zeros((vectors, steps))
    for r in range(vectors):
        valid = np.asarray(runs.valid[r])
        theta, S = scipy.linalg.eigh_tridiagonal(np.asarray(runs.alpha[r])[valid],
                                                 np.asarray(runs.beta[r])[valid][:-1])
        nodes[r, :len(theta)], weights[r, :len(theta)] = theta, S[0, :] ** 2
    return nodes, weights


__all__ = ["Lanczos", "lanczos", "ritz", "spectral_density", "tridiagonal"]
