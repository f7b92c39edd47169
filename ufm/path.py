"""The cross-entropy UFM's regularisation path toward its λ → 0 limit by Newton's method
(docs/theory.md §5.4, "The path by Newton"; docs/performance.md, "The convex frontier").

First-order solvers crawl as μ = √(λ_Wλ_H) → 0: the problem flattens along the growing direction
(CE's curvature there is of the order of μ), and FISTA needs ~1e5 iterations per point. Newton's
method is blind to that conditioning. It needs a smooth problem, which the convex one becomes
below the collapse thresholds: by CE's shift invariance the class logits' optimum is centred,
A = M·D^½ = Q·B with Q an orthonormal basis of 1^⊥ and B [K − 1, K] of full row rank, where
‖A‖_* = tr((BBᵀ)^½) is smooth. Its gradient is the polar factor R⁻¹B = U·Wᵀ (R = (BBᵀ)^½, B = U·diag(r)·Wᵀ),
and the derivative of R solves R·dR + dR·R = dS (dS = dB·Bᵀ + B·dBᵀ), entrywise dR_ij = dS_ij/(r_i +
r_j) in R's eigenbasis — stable even where singular values repeat, unlike differentiating the
singular vectors. Values and factors come from the SVD of B, not the eigenvalues of BBᵀ (whose
small ones keep only (σ_min/σ_max)² of their digits: the objective would be noisy at 1e-12).
Each point starts from SELI's direction at its best scale and runs damped Newton with a
backtracking line search; every point is then certified by the dual bound (convex.py), which
does not care how the point was found.
"""
import jax
import jax.numpy as jnp
import numpy as np

from ufm import convex, metrics


@jax.custom_jvp
def polar(B):
    """U·Wᵀ for B = U·diag(r)·Wᵀ [r, K] of full row rank: R⁻¹B with R = (BBᵀ)^½, the gradient of
    ‖B‖_*. By the SVD, not by BBᵀ's eigenvalues, whose small ones keep only (σ_min/σ_max)² of
    their digits."""
    U, _, Wt = jnp.linalg.svd(B, full_matrices=False)
    return U @ Wt


@polar.defjvp
def _polar_jvp(primals, tangents):
    (B,), (dB,) = primals, tangents
    U, r, Wt = jnp.linalg.svd(B, full_matrices=False)
    dS = U.T @ (dB @ B.T + B @ dB.T) @ U  # d(BBᵀ) in R's eigenbasis
    Y = dS / (r[:, None] + r[None, :])  # dR there: R·dR + dR·R = dS
    inv_r = 1.0 / r
    return U @ Wt, U @ (inv_r[:, None] * (U.T @ dB)) - U @ (inv_r[:, None] * Y) @ Wt


@jax.custom_jvp
def nuclear(B):
    """‖B‖_* (smooth at full row rank; derivative: `polar`)."""
    return jnp.sum(jnp.linalg.svd(B, compute_uv=False))


@nuclear.defjvp
def _nuclear_jvp(primals, tangents):
    (B,), (dB,) = primals, tangents
    return nuclear(B), jnp.sum(polar(B) * dB)


def centred_basis(K, dtype=None):
    """Q [K, K − 1]: an orthonormal basis of the vectors summing to 0 (Helmert's)."""
    Q = np.zeros((K, K - 1))
    for j in range(1, K):
        Q[:j, j - 1] = 1.0
        Q[j, j - 1] = -j
        Q[:, j - 1] /= np.linalg.norm(Q[:, j - 1])
    return jnp.asarray(Q, dtype)


def _problem(counts):
    n = np.asarray(counts, np.float64)
    K = len(n)
    dtype = jnp.result_type(float)
    Q = centred_basis(K, dtype)
    root = jnp.asarray(np.sqrt(n), dtype)
    weights = jnp.asarray(n / n.sum(), dtype)

    eye = jnp.eye(K, dtype=dtype)
    column_ce = jax.vmap(lambda z, t: metrics.cross_entropy(z[:, None], t[:, None]),
                         in_axes=(1, 1))

    def loss(B):
        # class logits, column k of class k; CE with its careful derivative (metrics): as μ → 0
        # the correct class's p_k → 1 and p_k − 1 computed as such would keep only ~1e-9 of its
        # digits at μ = 1e-8 — the certificate's slack
        M = (Q @ B) / root[None, :]
        return jnp.sum(weights * column_ce(M, eye))

    return Q, root, loss


def solve_path(counts, mus, iters=20):
    """The CE UFM's convex problem min_M L(M) + μ‖M·D^½‖_* at every μ in `mus`, one vmapped
    program (traceable; dtype: the caller's). Returns (M [P, K, K] class logits, objective [P]):
    the point of smallest gradient over `iters` damped Newton steps. Valid where the optimum has
    rank K − 1 (below every collapse threshold): the caller certifies (`certify`)."""
    Q, root, loss = _problem(counts)
    K = len(counts)
    B_seli = Q.T @ (jnp.eye(K, dtype=Q.dtype) - 1.0 / K) * root[None, :]

    def objective(B, mu):
        return loss(B) + mu * nuclear(B)

    def one(mu):
        # the best scale of SELI's direction (1-D Newton on a convex function of log t)
        def scalar(s):
            return objective(jnp.exp(s) * B_seli, mu)

        def scale_step(s, _):
            g, h = jax.grad(scalar)(s), jax.hessian(scalar)(s)
            return s - jnp.clip(g / jnp.maximum(h, 1e-12), -2.0, 2.0), None

        s, _ = jax.lax.scan(scale_step, jnp.log(jnp.log(1.0 / mu) + 1.0), None, length=30)
        B0 = jnp.exp(s) * B_seli

        grad = jax.grad(objective)
        steps = 0.5 ** jnp.arange(40.0)  # the line search's trial lengths, all evaluated

        def step(carry, _):
            B, g, best, best_g2 = carry
            f = objective(B, mu)
            H = jax.hessian(objective)(B, mu).reshape(g.size, g.size)
            d = -jnp.linalg.solve(H + 1e-14 * jnp.eye(g.size, dtype=H.dtype) * jnp.trace(H),
                                  g.ravel()).reshape(B.shape)
            slope = jnp.sum(g * d)
            d = jnp.where(slope < 0, d, -g)  # not a descent direction: the gradient's
            slope = jnp.where(slope < 0, slope, -jnp.sum(g * g))
            trial = jax.vmap(lambda t: objective(B + t * d, mu))(steps)
            ok = trial <= f + 1e-4 * steps * slope
            t = jnp.where(jnp.any(ok), steps[jnp.argmax(ok)], 0.0)
            # near the optimum f cannot rank the points (its round-off, ~1e-16 of the logits'
            # scale, exceeds the Newton decrement), so the endgame ranks them by the gradient,
            # which the careful CE derivative keeps accurate: the trial step of smallest ‖g‖
            g2 = jnp.sum(g * g)
            near = g2 <= (1e-6 * mu) ** 2 * g.size
            trial_g = jax.vmap(lambda t: grad(B + t * d, mu))(steps)
            trial_g2 = jnp.sum(trial_g * trial_g, axis=(1, 2))
            k = jnp.argmin(trial_g2)
            B_new = jnp.where(near, jnp.where(trial_g2[k] < g2, B + steps[k] * d, best),
                              jnp.where(t > 0, B + t * d, best))
            g_new = grad(B_new, mu)
            g2_new = jnp.sum(g_new * g_new)
            better = g2_new < best_g2
            return (B_new, g_new, jnp.where(better, B_new, best),
                    jnp.where(better, g2_new, best_g2)), None

        g0 = grad(B0, mu)
        (_, _, B, _), _ = jax.lax.scan(step, (B0, g0, B0, jnp.sum(g0 * g0)), None, length=iters)
        return (Q @ B) / root[None, :], objective(B, mu)

    return jax.vmap(one)(jnp.asarray(mus))


def certified_path(counts, mus, iters=20, tol=1e-9):
    """solve_path, then certify every point: dict of arrays M [P, K, K], objective, lower_bound,
    gap (relative) and certified (gap ≤ tol) over the P values of μ (float64 numpy). Points
    Newton cannot reach (an optimum of lower rank: a collapsed group, the zero solution) come out
    uncertified; `ufm sweep ce --optimizer convex` solves those."""
    M, _ = jax.jit(lambda m: solve_path(counts, m, iters))(jnp.asarray(mus))
    M = np.asarray(M, np.float64)
    rows = [certify(M[i], float(mu), counts) for i, mu in enumerate(np.asarray(mus))]
    bound, gap, value = (np.array(col) for col in zip(*rows))
    return {"M": M, "objective": value, "lower_bound": bound, "gap": gap,
            "certified": gap <= tol}


def certify(M, mu, counts):
    """(lower bound, relative gap, value) of one point of the path: the dual bound of the CE problem at
    class logits M with λ_W = λ_H = μ (convex.penalised_bound, float64 numpy)."""
    from ufm.models.cross_entropy import CE_LOSS

    M = np.asarray(M, np.float64)
    n = np.asarray(counts, np.float64)
    value = (float(np.sum(n * _class_ce(M)) / n.sum())
             + mu * float(np.sum(np.linalg.svd(M * np.sqrt(n)[None, :], compute_uv=False))))
    bound = convex.penalised_bound(M, None, mu, mu, counts, CE_LOSS)
    return bound, (value - bound) / abs(value), value


def _class_ce(M):
    """CE(m_k, k) per column k of M [K, K] without cancellation: log1p(Σ_(j≠k) e^(m_jk − m_kk))
    where the correct logit is the largest (float64 numpy)."""
    V = M - np.diag(M)[None, :]
    top = V.max(axis=0)
    rest = np.exp(V - top[None, :])
    rest[np.arange(M.shape[0]), np.arange(M.shape[0])] = 0.0
    others = rest.sum(axis=0)  # Σ_(j≠k) e^(v_j − top)
    return np.where(top <= 0, np.log1p(others * np.exp(top)), top + np.log(others + np.exp(-top)))


__all__ = ["solve_path", "certified_path", "certify", "polar", "nuclear", "centred_basis"]
