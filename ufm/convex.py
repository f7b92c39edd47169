"""Global certificates: lower bounds on the global minimum of a UFM from any point, by convex
duality (docs/theory.md §5), in float64 numpy on the host.

Every two-factor model with a loss convex in the logits is, after minimising the penalties over
the factorisations of Z = WH, the convex problem P(Z) = L(Z [+ b1ᵀ]) (+ λ_b/2‖b‖²) + μ‖Z‖_*,
μ = √(λ_Wλ_H); its minimum bounds the UFM's at every d and equals it when d ≥ K. By convexity and
the symmetry within a class, P has a minimiser with class-constant columns, Z = M·E (M [K, K],
column k the logits of class k, E the class indicator), so everything here works on K×K arrays
weighted by the counts n_k. A dual point G = Γ·E with ‖G‖_op = ‖Γ D^½‖_op ≤ μ (D = diag n) gives
the bound −L*(G); G is the loss's gradient at the run's class logits, scaled into the ball.

The norm-constrained models use the same reduction to class means (a mean of points in a ball is
in the ball, and the loss is convex): a Frank–Wolfe bound for a fixed classifier, and for the
layer-peeled model the dual of its SDP relaxation over the Gram matrix of (w_k, h̄_k).

Each bound is valid whatever the point (never above the true minimum, up to round-off) and tight
at the minimiser (for the constrained-Gram SDP: when d ≥ 2K).
"""
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ufm import linalg, metrics


def _softmax(U):
    """Column-wise softmax of U [K, K]."""
    E = np.exp(U - U.max(axis=0, keepdims=True))
    return E / E.sum(axis=0, keepdims=True)


class Loss(NamedTuple):
    """A loss convex in the logits, as the convex layer needs it (defined next to its model:
    this module names none). Per class column k of the class logits U [K, K] (targets T [K, K],
    counts n [K], N = Σn), with L(Z) = (1/N)·Σ_i ℓ(z_i, t_(y_i)) over the samples:

    value(U, T, n, N) -> []          L at class-constant logits (JAX: the solver's primal)
    gradient(U, T, n) -> Γ [K, K]    ∂L/∂z_i of a sample of class k, as column k (numpy)
    conjugate(G, T, n) -> float      −L*(G·E) for a dual point G [K, K] (numpy; −inf outside its
                                     domain)
    conjugate_traced(G, T, n, N)     the same in JAX, at a G in the domain (the stopping test)
    cap(G, T, N) -> float            the largest s with s·G in the conjugate's domain (inf: none)
    curvature(K) -> float            a bound on ℓ's curvature in one column (the solver's step)
    quadratic                        −L*(s·G) is a concave quadratic in s (its best s is exact)
    """

    name: str
    value: Callable
    gradient: Callable
    conjugate: Callable
    conjugate_traced: Callable
    cap: Callable
    curvature: Callable
    quadratic: bool = False


def loss_gradient(U, targets, counts, loss):
    """Γ [K, K]: ∂L/∂z_i for a sample of class k is column k (the same for every sample of it)."""
    return loss.gradient(U, targets, np.asarray(counts, np.float64))


def conjugate_bound(Gamma, targets, counts, loss):
    """−L*(G) for G = Γ·E (−inf where G leaves the conjugate's domain)."""
    return loss.conjugate(Gamma, targets, np.asarray(counts, np.float64))


def penalised_bound(M, b, lam_W, lam_H, counts, loss, bias=None, lam_b=0.0, targets=None):
    """A lower bound on min P ≤ the UFM's global minimum, from the class logits M = W·H̄ [K, K]
    (and the bias b [K]) of any point.

    loss: a `Loss` (targets T [K, K]: per class, the regression target or the target
    distribution; default I); bias: None, 'free' or 'regularized'. The dual point is s·Γ, Γ the
    loss gradient at M + b1ᵀ (row-centred, Γn = 0, for a free bias), with s ∈ [0, s_max] chosen to
    maximise the bound (exactly for a quadratic conjugate, by golden section otherwise: the bound
    is concave in s); s_max puts ‖Γ D^½‖_op·s ≤ μ and s·Γ in the conjugate's domain.
    """
    K = M.shape[0]
    n = np.asarray(counts, np.float64)
    N = n.sum()
    T = np.eye(K) if targets is None else np.asarray(targets, np.float64)
    mu = math.sqrt(lam_W * lam_H)
    if bias == "regularized" and lam_b == 0:
        bias = "free"  # an unpenalised bias is a free one: its dual needs Γn = 0, not b = 0
    U = M if b is None else M + np.asarray(b, np.float64)[:, None]
    Gamma = loss_gradient(U, T, n, loss)
    if bias == "free":
        Gamma = Gamma - np.outer(Gamma @ n / N, np.ones(K))
    op = np.linalg.norm(Gamma * np.sqrt(n)[None, :], 2)
    s_max = min(mu / op if op > 0 else 1.0, loss.cap(Gamma, T, N))
    ones = Gamma @ n  # G1
    # a regularized bias has λ_b > 0 here (λ_b = 0 became a free one above): −s²‖G1‖²/(2λ_b)
    bias_term = (lambda s: 0.0) if bias != "regularized" else (
        lambda s: -s * s * float(ones @ ones) / (2 * lam_b))
    value = lambda s: conjugate_bound(s * Gamma, T, n, loss) + bias_term(s)
    if loss.quadratic:  # value(s) = lin·s − quad·s²/2 (value(0) = 0): its maximiser on [0, s_max]
        lin, quad = _quadratic_slopes(Gamma, T, n, loss)
        if bias == "regularized":
            quad += float(ones @ ones) / lam_b
        s = s_max if quad == 0 else min(max(lin / quad, 0.0), s_max)
        return value(s)
    return _golden_max(value, 0.0, s_max)


def _quadratic_slopes(Gamma, T, n, loss):
    """(lin, quad) of a quadratic conjugate φ(s) = −L*(s·Γ) = lin·s − quad·s²/2, read off
    φ(1) and φ(2) (φ(0) = 0): quad = 2φ(1) − φ(2), lin = φ(1) + quad/2."""
    one, two = loss.conjugate(Gamma, T, n), loss.conjugate(2 * Gamma, T, n)
    quad = 2 * one - two
    return one + quad / 2, quad


def _golden_max(fn, lo, hi, evaluations=80):
    """max of a concave fn on [lo, hi] by golden-section search (and the end points)."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = fn(c), fn(d)
    for _ in range(evaluations):  # golden-section search on the host, not optimiser steps
        if fc < fd:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = fn(d)
        else:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = fn(c)
    return max(fc, fd, fn(lo), fn(hi))


# --- norm-constrained models ---------------------------------------------------------------

def class_weights(counts, alpha):
    """The weight of class k's loss in the objective: n_k/N (average over samples) or 1
    (α_k = 1/n_k, `inverse-count`)."""
    n = np.asarray(counts, np.float64)
    return n / n.sum() if alpha == "none" else np.ones_like(n)


def fixed_classifier_bound(Hbar, C, counts, E_H, loss, alpha="none", halfspace=None):
    """Frank–Wolfe bound for features in balls ‖h‖² ≤ E_H against fixed class vectors C [d, K]:
    f(H̄) + Σ_k min_{s ∈ S_k} ⟨g_k, s − h̄_k⟩ (convexity), S_k the ball, intersected with the
    half-space aₖᵀs ≥ 0 (a_k [d] the k-th column of `halfspace`) for the orthogonal classifier.

    loss(Z, weights, E_H) -> (φ, ∇φ [K, K]): φ(Z) = Σ_k ω_k ℓ(Z[:, k], k) at the logits
    Z = Cᵀh̄ of the class means (float64 numpy; defined with the model, this module names none)."""
    weights = class_weights(counts, alpha)
    value, grad_Z = loss(C.T @ Hbar, weights, E_H)
    G = C @ grad_Z  # ∂φ/∂h̄_k  [d, K]
    root = math.sqrt(E_H)
    linear = 0.0
    for k in range(G.shape[1]):  # over classes (K small), the linear minimisation per ball
        g = G[:, k]
        if halfspace is not None and float(halfspace[:, k] @ g) > 0:
            a = halfspace[:, k]
            g = g - (a @ g) / (a @ a) * a  # the minimiser lies on the plane aᵀs = 0
        linear += -root * float(np.linalg.norm(g)) - float(G[:, k] @ Hbar[:, k])
    return value + linear


def layer_peeled_bound(W, Hbar, counts, E_W, E_H, loss, alpha="none"):
    """Dual bound of the layer-peeled model's SDP relaxation from the point (W [K, d], H̄ [d, K]):
    φ(Z₀) − ⟨∇, Z₀⟩ − ⟨y, e⟩ with y ≥ 0, C + diag(y) ⪰ 0, C = [[0, ∇/2], [∇ᵀ/2, 0]], e the
    bounds (E_W for the K class vectors, E_H for the K class means); y from the KKT conditions
    at X₀ = VVᵀ, raised by the most negative eigenvalue of C + diag y. loss: as in
    `fixed_classifier_bound`."""
    K = W.shape[0]
    Z0 = W @ Hbar
    value, grad = loss(Z0, class_weights(counts, alpha), E_H)
    C = np.zeros((2 * K, 2 * K))
    C[:K, K:], C[K:, :K] = grad / 2, grad.T / 2
    V = np.concatenate([W, Hbar.T])  # [2K, d]
    X0 = V @ V.T
    diag = np.diag(X0)
    CX = np.diag(C @ X0)
    y = np.where(diag > 0, -CX / np.where(diag > 0, diag, 1.0), 0.0)
    y = np.maximum(y, 0.0)
    lam_min = float(np.linalg.eigvalsh(C + np.diag(y))[0])
    y = y + max(0.0, -lam_min)
    e = np.concatenate([np.full(K, E_W), np.full(K, E_H)])
    return value - float(np.sum(grad * Z0)) - float(y @ e)


# --- the convex solver of the penalised two-factor models (`--optimizer convex`) -------------

class TwoFactor(NamedTuple):
    """What the convex layer needs of a penalised two-factor model: its loss of the logits (a
    `Loss`), its targets per class (hyper, sizes) -> [K, K] (None: I), and the names in `hyper` of
    the weight decays of W, H and (with a regularized bias) b — this module names no
    hyperparameter either."""

    loss: Loss
    targets: Optional[Callable] = None
    decays: tuple = ("lam_W", "lam_H", "lam_b")

    def lams(self, hyper):
        """(λ_W, λ_H) as the model calls them."""
        return hyper[self.decays[0]], hyper[self.decays[1]]

    def lam_b(self, hyper):
        return hyper[self.decays[2]]


def _reduced_loss(problem, bias, hyper, sizes):
    """F(A, b) = L(A D^-½ + b1ᵀ) (+ λ_b/2‖b‖²), the smooth part of the reduced problem in the
    variable A = M D^½ [K, K] (so that ‖Z‖_* = ‖A‖_*), weighted by the counts."""
    n = jnp.asarray(sizes.counts, jnp.result_type(float))
    N = jnp.sum(n)
    K = sizes.K
    T = jnp.eye(K) if problem.targets is None else problem.targets(hyper, sizes)

    def F(A, b):
        U = A / jnp.sqrt(n)[None, :] + b[:, None]
        value = problem.loss.value(U, T, n, N)
        if bias == "regularized":
            value = value + problem.lam_b(hyper) / 2 * jnp.sum(b * b)
        return value

    return F, n, N, T


def _shrink(A, threshold):
    """The prox of threshold·‖·‖_*: soft-thresholded singular values."""
    U, s, Vt = linalg.svd(A)
    return (U * jnp.maximum(s - threshold, 0.0)[None, :]) @ Vt, jnp.sum(jnp.maximum(s - threshold, 0))


def _dual_value(problem, bias, hyper, A, b, n, N, T, mu):
    """The dual bound at the gradient of the current point (s = largest feasible ≤ 1), traced:
    the solver's stopping test (the host's `penalised_bound` refines s, not needed at the end)."""
    U = A / jnp.sqrt(n)[None, :] + b[:, None]
    G = jax.grad(lambda V: problem.loss.value(V, T, n, N))(U) / n[None, :]
    if bias is not None:  # a free bias (or λ_b = 0: unpenalised, so free) needs Gn = 0
        centred = G - (G @ n / N)[:, None]
        G = centred if bias == "free" else jnp.where(problem.lam_b(hyper) == 0, centred, G)
    op = linalg.singular_values(G * jnp.sqrt(n)[None, :])[0]
    s = jnp.minimum(1.0, mu / jnp.where(op > 0, op, 1.0))
    G = s * G
    ones = G @ n
    value = problem.loss.conjugate_traced(G, T, n, N)
    if bias == "regularized":
        lam_b = problem.lam_b(hyper)
        value = value - jnp.where(lam_b > 0, jnp.sum(ones * ones) /
                                  (2 * jnp.where(lam_b > 0, lam_b, 1.0)), 0.0)
    return value


GAP_FLOOR = 1e-6  # below this objective the solver's stopping gap is absolute


def stopping_gap(P, D):
    """The solver's stopping quantity: the duality gap P − D relative to max(|P|, GAP_FLOOR) —
    relative at ordinary objectives, absolute near 0, where a relative gap would ask for digits a
    float64 objective does not have."""
    return (P - D) / jnp.maximum(jnp.abs(P), GAP_FLOOR)


def solve(model, sizes, hyper, max_iter, tol, key=None, check_every=10):
    """The global minimiser of a penalised two-factor model by accelerated proximal gradient
    (FISTA with adaptive restart) on the reduced K×K problem, stopped once the relative duality
    gap (P − D)/max(|P|, 1e-6) ≤ tol or after max_iter iterations. Traceable and vmappable.

    Returns (params, iterations, gap): balanced factors W [K, d], H [d, N] (and b [K]) of the
    written d with WH = Z* (the top d singular directions when d < K, where the model may not reach
    the convex minimum), the iterations run, and the last relative gap.
    """
    problem, bias = model.two_factor, model.bias
    F, n, N, T = _reduced_loss(problem, bias, hyper, sizes)
    K, dtype = sizes.K, jnp.result_type(float)
    lam_W, lam_H = problem.lams(hyper)
    mu = jnp.sqrt(lam_W * lam_H)
    curvature = problem.loss.curvature(K)  # of the loss in each logit column
    coupled = 2.0 if bias is not None else 1.0  # (A, b) blocks coupled: twice the block bounds
    step_A = N / (curvature * coupled)
    step_b = 1.0 / (coupled * (curvature + (problem.lam_b(hyper) if bias == "regularized" else 0.0)))
    grad = jax.grad(F, argnums=(0, 1))
    has_b = bias is not None

    def primal(A, b):
        return F(A, b) + mu * jnp.sum(linalg.singular_values(A))

    def prox_step(A, b):
        gA, gb = grad(A, b)
        A_new, _ = _shrink(A - step_A * gA, step_A * mu)
        b_new = b - step_b * gb if has_b else b
        return A_new, b_new

    def body(carry):
        i, A, b, YA, Yb, t, gap = carry
        A_new, b_new = prox_step(YA, Yb)
        restart = jnp.sum((YA - A_new) * (A_new - A)) + jnp.sum((Yb - b_new) * (b_new - b)) > 0
        t_new = jnp.where(restart, 1.0, (1 + jnp.sqrt(1 + 4 * t * t)) / 2)
        beta = jnp.where(restart, 0.0, (t - 1) / t_new)
        YA_new, Yb_new = A_new + beta * (A_new - A), b_new + beta * (b_new - b)
        check = (i + 1) % check_every == 0
        gap = jax.lax.cond(check, lambda: _relative_gap(A_new, b_new), lambda: gap)
        return i + 1, A_new, b_new, YA_new, Yb_new, t_new, gap

    def _relative_gap(A, b):
        P = primal(A, b)
        D = _dual_value(problem, bias, hyper, A, b, n, N, T, mu)
        return stopping_gap(P, D)

    def cond(carry):
        i, gap = carry[0], carry[-1]
        return (i < max_iter) & ~(gap <= tol)

    A0, b0 = jnp.zeros((K, K), dtype), jnp.zeros((K,), dtype)
    inf = jnp.asarray(jnp.inf, dtype)
    i, A, b, _, _, _, gap = jax.lax.while_loop(
        cond, body, (0, A0, b0, A0, b0, jnp.asarray(1.0, dtype), inf))
    return factors(A, b if has_b else None, (lam_W, lam_H), sizes), i, gap


def factors(A, b, lams, sizes):
    """Balanced W [K, d], H [d, N] with WH = A D^-½ E (top d directions if d < K), and b;
    lams = (λ_W, λ_H)."""
    U, s, Vt = linalg.svd(A)
    r = min(sizes.K, sizes.d)
    lam_W, lam_H = lams
    c = (lam_H / lam_W) ** 0.25  # λ_W‖W‖² = λ_H‖H‖² at W = c·US^½
    root = jnp.sqrt(s[:r])
    n = jnp.asarray(sizes.counts, A.dtype)
    labels = metrics.class_labels(sizes.counts, sizes.N)
    right = (Vt[:r] / jnp.sqrt(n)[None, :])[:, labels]  # rows orthonormal over the N columns
    W = jnp.zeros((sizes.K, sizes.d), A.dtype).at[:, :r].set(c * U[:, :r] * root[None, :])
    H = jnp.zeros((sizes.d, sizes.N), A.dtype).at[:r].set(root[:, None] * right / c)
    out = {"W": W, "H": H}
    if b is not None:
        out["b"] = b
    return out
