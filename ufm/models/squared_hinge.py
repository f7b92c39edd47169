"""The multiclass squared-hinge UFM — the worked example of a loss the convex layer certifies,
defined in one file (docs/architecture.md, "A loss"; docs/theory.md §5.1):

    (1/N)·Σ_i Σ_(j≠y_i) ½·max(0, 1 + z_(j,i) − z_(y_i,i))² + λ_W/2‖W‖² + λ_H/2‖H‖²,   Z = WH.

Per sample, ℓ(z) = Σ_(j≠y) h(z_j − z_y) with h(t) = ½·max(0, 1 + t)², so its conjugate is
ℓ*(g) = Σ_(j≠y) (½g_j² − g_j) where every g_j ≥ 0 (j ≠ y) and g_y = −Σ_(j≠y) g_j, +∞ elsewhere
(h*(s) = ½s² − s for s ≥ 0): −L*(G·E) = (1/N)·Σ_k n_k·Σ_(j≠k) (s_jk − ½s_jk²), s = N·G.
"""
import math

import jax.numpy as jnp
import numpy as np

from ufm import convex
from ufm.models.base import (TWO_FACTOR_SYMMETRY, GlobalCertificate, Model, one_hot_targets,
                             register, sq)
from ufm.models.plain import (TWO_FACTOR, class_logits, penalised_bound, two_factor_init,
                              two_factor_measurements)


def hinge_terms(logits, Y):
    """½·max(0, 1 + z_j − z_y)² [K, N] for j ≠ y (0 at j = y): logits and one-hot Y [K, N]."""
    zy = jnp.sum(Y * logits, axis=0)
    return jnp.where(Y > 0, 0.0, 0.5 * jnp.maximum(0.0, 1.0 + logits - zy[None, :]) ** 2)


def objective(params, hyper, sizes, session=None):
    """(1/N)·Σ_i Σ_(j≠y_i) ½ max(0, 1 + z_j − z_y)² + λ_W/2‖W‖² + λ_H/2‖H‖² (module docstring).

    params: W [K, d], H [d, N]; hyper: lam_W, lam_H."""
    W, H = params["W"], params["H"]
    logits = W @ H
    Y = one_hot_targets(sizes, logits.dtype)
    return (jnp.sum(hinge_terms(logits, Y)) / sizes.N
            + hyper["lam_W"] / 2 * sq(W) + hyper["lam_H"] / 2 * sq(H))


def _value(U, T, n, N):
    return jnp.sum(n * jnp.sum(hinge_terms(U, T), axis=0)) / N


def _gradient(U, T, n):
    """Γ: max(0, 1 + u_jk − u_kk) off the diagonal, minus their column sum on it, over N."""
    off = np.where(T > 0, 0.0, np.maximum(0.0, 1.0 + U - np.diag(U)[None, :]))
    return (off - np.diag(off.sum(axis=0))) / n.sum()


def _conjugate(G, T, n):
    N = n.sum()
    S = np.where(T > 0, 0.0, N * G)
    unbalanced = np.abs((N * G).sum(axis=0)) > 1e-12 * max(1.0, np.abs(S).max())
    if np.any(S < -1e-15) or np.any(unbalanced):  # outside ℓ*'s domain
        return -math.inf
    return float(np.sum(n * np.sum(S - 0.5 * S * S, axis=0)) / N)


def _conjugate_traced(G, T, n, N):
    S = jnp.where(T > 0, 0.0, jnp.maximum(N * G, 0.0))
    return jnp.sum(n * jnp.sum(S - 0.5 * S * S, axis=0)) / N


SQUARED_HINGE = convex.Loss(
    "squared-hinge", _value, gradient=_gradient, conjugate=_conjugate,
    conjugate_traced=_conjugate_traced,
    cap=lambda G, T, N: math.inf if np.all(np.where(T > 0, 0.0, G) >= 0) else 0.0,
    curvature=lambda K: float(K), quadratic=True)  # Σ_active (e_j − e_y)(e_j − e_y)ᵀ ≤ K·I
PROBLEM = convex.TwoFactor(SQUARED_HINGE)

register("squared-hinge")(lambda: Model(
    name="squared-hinge",
    description="(1/N)Σ Σ_(j≠y) ½max(0, 1 + z_j − z_y)² + λ_W/2‖W‖² + λ_H/2‖H‖² (multiclass "
                "squared hinge)",
    init=two_factor_init(False), objective=objective, measure=two_factor_measurements(False),
    hypers=TWO_FACTOR, theorem_min_d=lambda K: 1, init_scale=1.0,
    theory=lambda hyper, sizes: None,
    certificate=GlobalCertificate(class_logits, penalised_bound(PROBLEM, None),
                                  convex_min_d=lambda K: K, two_factor=PROBLEM,
                                  solver=convex.solve),
    symmetries=TWO_FACTOR_SYMMETRY))
