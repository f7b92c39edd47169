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


def project_margins(x, k, c, delta=None):
    """The Euclidean projection of x [K] onto {y : Δ_k·y_k − Δ_j·y_j ≥ c for every j ≠ k}
    (Δ = 1 when delta is None): with y_k = t fixed, y_j = min(x_j, (Δ_k·t − c)/Δ_j), and t
    minimises the convex ½(t − x_k)² + ½Σ_j (x_j + c/Δ_j − a_j·t)₊², a_j = Δ_k/Δ_j. On an active
    set S its stationary point is t_S = (x_k + Σ_S a_j(x_j + c/Δ_j))/(1 + Σ_S a_j²); every t_S is
    at most the minimiser, and the active set at the minimiser is the j of largest Δ_j·x_j, so
    t = max over m ≥ 0 of t_S with S the m largest (docs/theory.md §5.4). At Δ = 1 it is
    t = x_k + max_m (Σ of the m largest v_j)/(m + 1), v_j = x_j − x_k + c."""
    K = x.shape[0]
    delta = jnp.ones_like(x) if delta is None else delta
    others = jnp.arange(K) != k
    a = delta[k] / delta
    order = jnp.argsort(jnp.where(others, -delta * x, jnp.inf))[:K - 1]  # largest Δ_j·x_j first
    num = x[k] + jnp.cumsum((a * (x + c / delta))[order])
    den = 1.0 + jnp.cumsum((a * a)[order])
    t = jnp.maximum(x[k], jnp.max(num / den))
    return jnp.where(others, jnp.minimum(x, (delta[k] * t - c) / delta), t)


def _project(A, c, delta):
    """Every column k of A [K, K] onto its margin polyhedron (margins c [K], scales Δ [K])."""
    K = A.shape[0]
    cols = jax.vmap(project_margins, in_axes=(1, 0, 0, None), out_axes=1)
    return cols(A, jnp.arange(K), c, delta)


def dual_bound(G, c, delta=None):
    """(bound, G'): the dual point nearest G [K, K] of the structure the dual needs (off diagonal
    ≤ 0, G'_kk = −Δ_k·Σ_(j≠k) G'_jk/Δ_j — the columns of diag(1/Δ)·G' sum to 0 — and
    ‖·‖_op ≤ 1) and its value Σ_k c_k·G'_kk/Δ_k, a lower bound on the minimum (Δ = 1 when delta
    is None)."""
    K = G.shape[0]
    delta = jnp.ones((K,), G.dtype) if delta is None else delta
    eye = jnp.eye(K, dtype=G.dtype)
    off = jnp.minimum(G * (1 - eye), 0.0)
    G = off - eye * (delta * jnp.sum(off / delta[:, None], axis=0))[None, :]
    G = G / jnp.maximum(1.0, linalg.singular_values(G)[0])
    return jnp.sum(c * jnp.diag(G) / delta), G


def solve_svm(counts, max_iter=50000, tol=1e-10, rho=None, check_every=20, key=None,
              delta=None):
    """The UFM-SVM at class counts `counts` (a tuple) — with margin scales `delta` [K] (Δ_k·z_kk −
    Δ_j·z_jk ≥ 1, the limit of the CDT/VS losses; None: Δ = 1) — by ADMM, stopped once (primal − dual bound)
    / primal ≤ tol or after max_iter iterations; traceable (jit/vmap it). dtype: the caller's.
    It starts from the projection of 0 onto the margins — which is SELI's point already, so the
    first certificate usually closes the gap — or, with `key`, of a random matrix (the tests
    start there, so that the solver, not its start, finds the optimum)."""
    dtype = jnp.result_type(float)
    n = jnp.asarray(counts, dtype)
    K = n.shape[0]
    c = jnp.sqrt(n)
    delta = jnp.ones((K,), dtype) if delta is None else jnp.asarray(delta, dtype)
    rho = jnp.asarray(1.0 / jnp.sqrt(jnp.max(n)) if rho is None else rho, dtype)
    start = (jnp.zeros((K, K), dtype) if key is None else
             jnp.sqrt(jnp.max(n)) * jax.random.normal(key, (K, K), dtype))
    B, value, bound, gap, i = admm(lambda A: _project(A, c, delta),
                                   lambda G: dual_bound(G, c, delta)[0], start, rho, max_iter,
                                   tol, check_every)
    return SVMSolution(B / c[None, :], value, bound, gap, i)


def admm(project, bound, start, rho, max_iter, tol, check_every):
    """min ‖A‖_* over a convex set C by ADMM — A ← SVT(B − U, 1/ρ), B ← proj_C(A + U), U ← U + A −
    B — from proj_C(start); every check_every iterations the primal value ‖B‖_* (B feasible) and
    bound(−ρU), the dual bound at ADMM's scaled dual; stops at relative gap ≤ tol or max_iter.
    Returns (B, value, bound, gap, iterations); traceable."""
    dtype = start.dtype
    rho = jnp.asarray(rho, dtype)

    def nuclear(A):
        return jnp.sum(linalg.singular_values(A))

    def body(carry):
        i, A, B, U, gap, value, lower = carry
        A, _ = convex._shrink(B - U, 1.0 / rho)
        B = project(A + U)
        U = U + A - B
        check = (i + 1) % check_every == 0

        def certify():
            v = nuclear(B)
            lo = bound(-rho * U)
            return (v - lo) / jnp.maximum(v, 1e-300), v, lo

        gap, value, lower = jax.lax.cond(check, certify, lambda: (gap, value, lower))
        return i + 1, A, B, U, gap, value, lower

    def cond(carry):
        return (carry[0] < max_iter) & ~(carry[4] <= tol)

    B0 = project(start)
    inf = jnp.asarray(jnp.inf, dtype)
    i, _, B, _, gap, value, lower = jax.lax.while_loop(
        cond, body, (0, B0, B0, jnp.zeros_like(B0), inf, inf, -inf))
    return B, value, lower, gap, i


def project_support(x, support, c=1.0):
    """The Euclidean projection of x [V] onto {y : y_v = y_u and y_v − y_w ≥ c for v, u in the
    support, w outside}: the support's entries share t, y_w = min(x_w, t − c), and t is the
    largest of (Σ_support x + Σ_S (x_w + c))/(|support| + |S|) over S the m largest x_w outside
    (m ≥ 0) — as project_margins, with the support's mean in place of x_k."""
    inside = support.astype(x.dtype)
    order = jnp.argsort(jnp.where(support, jnp.inf, -x))  # outside, largest first; support last
    outside = (1.0 - inside)[order]
    num = jnp.sum(inside * x) + jnp.cumsum(outside * (x[order] + c))
    den = jnp.sum(inside) + jnp.cumsum(outside)
    t = jnp.maximum(jnp.sum(inside * x) / jnp.sum(inside),
                    jnp.max(jnp.where(outside > 0, num / den, -jnp.inf)))
    return jnp.where(support, t, jnp.minimum(x, t - c))


def support_dual_bound(G, supports):
    """(bound, G'): the dual point of the support-constrained problem nearest G [V, m] — entries
    outside each column's support ≤ 0, every column summing to 0 (the support's entries share
    the balance), ‖·‖_op ≤ 1 — and its value −Σ (entries outside the supports)."""
    inside = supports.astype(G.dtype)
    out = jnp.minimum(G, 0.0) * (1.0 - inside)
    size = jnp.sum(inside, axis=0)
    mean_in = jnp.sum(G * inside, axis=0) / size
    G = out + inside * (G - mean_in[None, :] - (jnp.sum(out, axis=0) / size)[None, :])
    G = G / jnp.maximum(1.0, linalg.singular_values(G)[0])
    return -jnp.sum(G * (1.0 - inside)), G


def solve_support_svm(supports, max_iter=50000, tol=1e-10, rho=1.0, check_every=20, key=None):
    """The next-token-prediction SVM (docs/theory.md §5.6): min ‖Z‖_* over Z [V, m] with, in
    column j, every logit in the support S_j equal and at least 1 above every logit outside it —
    the direction of the logits' growing part as λ → 0. supports: bool [V, m] (each column a
    non-empty proper subset). ADMM with its duality-gap certificate, as solve_svm; traceable.
    Returns SVMSolution with M = Z."""
    supports = jnp.asarray(supports, bool)
    dtype = jnp.result_type(float)
    start = (jnp.zeros(supports.shape, dtype) if key is None else
             jax.random.normal(key, supports.shape, dtype))
    cols = jax.vmap(project_support, in_axes=(1, 1), out_axes=1)
    Z, value, bound, gap, i = admm(lambda A: cols(A, supports),
                                   lambda G: support_dual_bound(G, supports)[0], start, rho,
                                   max_iter, tol, check_every)
    return SVMSolution(Z, value, bound, gap, i)


def support_structure(Z, supports):
    """What the NTP-SVM's solution Z [V, N] is, against its support pattern S (float64 numpy;
    docs/theory.md §5.6): its smallest margin and largest in-support spread (1 and 0 at a
    feasible point), the centred support matrix Ẑ = (I − 11ᵀ/V)·S — its nuclear norm, and Z's
    centred distance from it (0 where Ẑ is the solution, which it is not always) — the fraction
    of Z's centred columns outside Ẑ's column span, and the largest difference between columns
    of contexts with one support."""
    Z, S = np.asarray(Z, np.float64), np.asarray(supports, bool)
    V, N = S.shape
    inside = np.where(S, Z, np.inf).min(axis=0)
    outside = np.where(S, -np.inf, Z).max(axis=0)
    spread = np.where(S, Z, -np.inf).max(axis=0) - inside
    has_out = ~S.all(axis=0)
    P = np.eye(V) - 1.0 / V
    Zc, Zhat = P @ Z, P @ S.astype(np.float64)
    U, sv, _ = np.linalg.svd(Zhat, full_matrices=False)
    span = U[:, sv > 1e-10 * max(sv[0], 1e-300)]
    energy = np.linalg.norm(Zc)
    same = [np.abs(Z[:, a] - Z[:, b]).max() for a in range(N) for b in range(a + 1, N)
            if np.array_equal(S[:, a], S[:, b])]
    return {"min_margin": float((inside - outside)[has_out].min()) if has_out.any() else None,
            "support_spread": float(spread.max()),
            "centred_support_value": float(sv.sum()),
            "centred_support_error": float(np.linalg.norm(Zc - Zhat)),
            "outside_support_span": float(np.linalg.norm(Zc - span @ (span.T @ Zc)) / energy)
            if energy > 0 else 0.0,
            "same_support_spread": float(max(same)) if same else 0.0}


def centred_support_multiplier(supports):
    """The largest entry outside the supports of U·Vᵀ, the polar factor of the centred support
    matrix Ẑ = (I − 11ᵀ/V)·S (float64 numpy). Ẑ is feasible for the NTP-SVM, and U·Vᵀ is a
    subgradient of ‖·‖_* at Ẑ with columns summing to 0; where its entries outside the supports
    are ≤ 0 it is a dual certificate (the in-support entries are free: the equalities'
    multipliers), so Ẑ is the solution. Sufficient, not necessary (Ẑ of low rank has other
    subgradients)."""
    S = np.asarray(supports, bool)
    V = S.shape[0]
    Zhat = (np.eye(V) - 1.0 / V) @ S.astype(np.float64)
    U, sv, Vt = np.linalg.svd(Zhat, full_matrices=False)
    r = int(np.sum(sv > 1e-10 * max(sv[0], 1e-300)))
    G = U[:, :r] @ Vt[:r]
    return float(G[~S].max()) if (~S).any() else -np.inf


def logit_factors(Z, d):
    """Balanced W [V, d], H [d, N] with W·H = Z (its top d directions) and ½(‖W‖² + ‖H‖²) =
    ‖Z‖_* when d ≥ rank Z (float64 numpy)."""
    U, sv, Vt = np.linalg.svd(np.asarray(Z, np.float64), full_matrices=False)
    r = min(d, len(sv))
    root = np.sqrt(sv[:r])
    W = np.zeros((Z.shape[0], d))
    H = np.zeros((d, Z.shape[1]))
    W[:, :r], H[:r] = U[:, :r] * root[None, :], root[:, None] * Vt[:r]
    return {"W": W, "H": H}


def seli(counts):
    """SELI's class-mean logits M̂ = I − 11ᵀ/K [K, K] and the minimum ‖M̂·D^½‖_* (float64 numpy):
    scaled_seli at Δ = 1."""
    closed = scaled_seli(counts)
    return closed.M, closed.value


class ScaledSeli(NamedTuple):
    """The closed form of the margin-scaled UFM-SVM (docs/theory.md §5.4): class logits M [K, K],
    the value ‖M·D^½‖_*, and `multiplier` — the largest off-diagonal entry of U·Vᵀ, the only
    subgradient the dual admits at that point; ≤ 0 proves the point optimal (float64 numpy)."""

    M: Any
    value: float
    multiplier: float


def scaled_seli(counts, delta=None):
    """The best point of the margin-scaled UFM-SVM with every margin tight, and its proof.

    With every margin tight, diag(Δ)·M = I + 1tᵀ, and A = M·D^½ = S·D^½ + s·(D^½t)ᵀ with S =
    diag(1/Δ), s = S·1; projecting out s never raises the nuclear norm, so the best such point
    is A = (I − ssᵀ/‖s‖²)·S·D^½, i.e. M = S·(I − 1wᵀ) with w = s²/‖s‖² (SELI when Δ = 1). It is
    the minimum exactly when the dual's multipliers μ_jk = −G_jk/Δ_j are ≥ 0 for G = U·Vᵀ of A
    (sᵀG = 0 holds by construction, and the rank K − 1 leaves no other subgradient)."""
    n = np.asarray(counts, np.float64)
    K = len(n)
    delta = np.ones(K) if delta is None else np.asarray(delta, np.float64)
    s = 1.0 / delta
    w = s * s / np.sum(s * s)
    M = s[:, None] * (np.eye(K) - np.outer(np.ones(K), w))
    A = M * np.sqrt(n)[None, :]
    U, sv, Vt = np.linalg.svd(A)
    G = U[:, :K - 1] @ Vt[:K - 1]
    off = G[~np.eye(K, dtype=bool)]
    return ScaledSeli(M, float(np.sum(sv)), float(off.max()))


class TwoGroupGeometry(NamedTuple):
    """The limit direction's geometry at two groups of classes (majority 1, minority 2), from
    two_group_geometry: squared norms and cosines of the classifiers (w) and of the class means
    (h), per group and across; each a float."""

    w_norm2: tuple  # (‖w‖² majority, ‖w‖² minority)
    h_norm2: tuple
    w_cos: tuple  # (within majority, within minority, across)
    h_cos: tuple


def two_group_geometry(K1, K2, n1, n2, delta1=1.0, delta2=1.0):
    """The margin-scaled UFM-SVM's limit geometry at K1 classes of n1 samples and K2 of n2, with
    margin scales Δ1, Δ2, in closed form (docs/theory.md §5.4; valid where scaled_seli's
    multiplier is ≤ 0). With r_g = √n_g/Δ_g, p_g = √K_g/Δ_g: A = ⊕_g r_g·Π⁰_g + σ·ũ·ṽᵀ, Π⁰_g the
    centring within group g, u = (p₂, −p₁)/‖p‖, σ = ‖r⊙u‖, v = r⊙u/σ, ũ = Σ_g u_g·1_g/√K_g; the
    classifiers' Gram is (AAᵀ)^½ = Σ r_g·Π⁰_g + σ·ũũᵀ, the class means' D^-½(AᵀA)^½D^-½."""
    K, n, dl = np.array([K1, K2], float), np.array([n1, n2], float), np.array([delta1, delta2])
    r, p = np.sqrt(n) / dl, np.sqrt(K) / dl
    u = np.array([p[1], -p[0]]) / np.linalg.norm(p)
    sigma = np.linalg.norm(r * u)
    v = r * u / sigma

    def gram(x, scale):
        diag = (r * (1 - 1 / K) + sigma * x * x / K) / scale
        within = (-r / K + sigma * x * x / K) / scale
        across = sigma * x[0] * x[1] / np.sqrt(K[0] * K[1] * scale[0] * scale[1])
        cos = (within[0] / diag[0], within[1] / diag[1], across / np.sqrt(diag[0] * diag[1]))
        return tuple(float(t) for t in diag), tuple(float(t) for t in cos)

    w_norm2, w_cos = gram(u, np.ones(2))
    h_norm2, h_cos = gram(v, n)
    return TwoGroupGeometry(w_norm2, h_norm2, w_cos, h_cos)


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
           "dual_bound", "scaled_seli", "two_group_geometry", "project_support",
           "support_dual_bound", "solve_support_svm", "support_structure", "logit_factors",
           "centred_support_multiplier",
           "admm"]
