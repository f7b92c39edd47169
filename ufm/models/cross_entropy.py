"""The cross-entropy UFM, bias-free or with a regularized bias (Zhu et al. 2021; docs/theory.md
§2.3, §3.5)."""

import math

import jax.numpy as jnp
import numpy as np

from ufm import convex, metrics, theory
from ufm.models.base import (TWO_FACTOR_SYMMETRY, GlobalCertificate, Model, balanced_only,
                             one_hot_targets, register, sq)
from ufm.models.plain import (LAM_B, TWO_FACTOR, class_logits, penalised_bound, two_factor_init,
                             two_factor_measurements)


def objective(params, hyper, sizes, session=None):
    """(1/N) Σ CE(W h_{k,i} + b, k) + λ_W/2‖W‖² + λ_H/2‖H‖² + λ_b/2‖b‖²  (Zhu et al. 2021).

    params: W [K, d], H [d, N], and b [K] for `ce-bias`; hyper: lam_W, lam_H (and lam_b).
    """
    W, H = params["W"], params["H"]
    logits = W @ H
    penalty = hyper["lam_W"] / 2 * sq(W) + hyper["lam_H"] / 2 * sq(H)
    if "b" in params:
        logits = logits + params["b"][:, None]
        penalty = penalty + hyper["lam_b"] / 2 * sq(params["b"])
    Y = one_hot_targets(sizes, logits.dtype)
    ce = metrics.cross_entropy(logits, Y) / sizes.N
    return ce + penalty


def _entropy(Q, deficit=None):
    """Entropy of every column of Q [K, K] (columns in the simplex). deficit [K, K]: 1 − Q where
    it was computed without cancellation (NaN elsewhere): an entry near 1 contributes
    −(1 − δ)·log1p(−δ), not −q·log q with q = 1 − δ rounded (a vertex keeps its digits)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(Q > 0, Q * np.log(np.where(Q > 0, Q, 1.0)), 0.0)
        if deficit is not None:
            near = np.isfinite(deficit)
            d = np.where(near, deficit, 0.0)
            terms = np.where(near, (1.0 - d) * np.log1p(-d), terms)
        return -np.sum(terms, axis=0)


def _p_minus_t(U, T):
    """softmax(U) − T [K, K] per column, without cancellation where a target entry is near 1 (at
    most one per column): there p − t = (1 − t) − Σ_(i≠j) p_i, a sum of small numbers."""
    P = convex._softmax(U)
    K = U.shape[0]
    others = (np.ones((K, K)) - np.eye(K)) @ P  # others[j, k] = Σ_(i≠j) P[i, k], summed directly
    return np.where(T > 0.5, (1.0 - T) - others, P - T)


def _ce_value(U, T, n, N):
    """(1/N)·Σ_k n_k·CE(u_k, t_k) at class-constant logits, without cancellation (JAX)."""
    c = jnp.sum(T * U, axis=0)
    return jnp.sum(n * metrics.shifted_logsumexp(U - c[None, :])) / N


def _ce_conjugate(G, T, n):
    """−L*(G·E) = (1/N)·Σ_k n_k·Entropy(t_k + N·g_k), −inf where a column leaves the simplex;
    an entry near 1 by log1p (`_entropy`)."""
    N = n.sum()
    Q = T + N * G
    if np.any(Q < -1e-15):
        return -math.inf
    deficit = np.where(T > 0.5, (1.0 - T) - N * G, np.nan)  # 1 − Q near a vertex
    return float(np.sum(n * _entropy(np.clip(Q, 0.0, None), deficit)) / N)


def _ce_conjugate_traced(G, T, n, N):
    Q = jnp.clip(T + N * G, 0.0, None)
    return -jnp.sum(n * jnp.sum(jnp.where(Q > 0, Q * jnp.log(jnp.where(Q > 0, Q, 1.0)), 0.0),
                                axis=0)) / N


def _simplex_cap(G, T, N):
    """The largest s with t_k + N·s·g_k ≥ 0 for every k (inf if none binds)."""
    dQ = N * G
    with np.errstate(divide="ignore", invalid="ignore"):
        caps = np.where(dQ < 0, T / -dQ, np.inf)
    return float(np.min(caps))


CE_LOSS = convex.Loss("ce", _ce_value, gradient=lambda U, T, n: _p_minus_t(U, T) / n.sum(),
                      conjugate=_ce_conjugate, conjugate_traced=_ce_conjugate_traced,
                      cap=_simplex_cap, curvature=lambda K: 0.5)
CE = convex.TwoFactor(CE_LOSS)


def cross_entropy_model(name, bias):
    """The cross-entropy UFM (Zhu et al. 2021), bias-free or with a regularized bias."""
    hypers = TWO_FACTOR + ((LAM_B,) if bias else ())
    return Model(
        name=name,
        description=f"cross-entropy UFM: (1/N)Σ CE(Wh{' + b' if bias else ''}, y) + "
                    f"λ_W/2‖W‖² + λ_H/2‖H‖²{' + λ_b/2‖b‖²' if bias else ''} (Zhu et al. 2021)",
        init=two_factor_init(bias), objective=objective,
        measure=two_factor_measurements(False), hypers=hypers, theorem_min_d=lambda K: K - 1,
        init_scale=1.0,
        theory=balanced_only(lambda hyper, sizes: theory.cross_entropy(hyper, sizes, bias)),
        bias="regularized" if bias else None,
        certificate=GlobalCertificate(class_logits,
                                      penalised_bound(CE, "regularized" if bias else None),
                                      convex_min_d=lambda K: K, two_factor=CE,
                                      solver=convex.solve),
        symmetries=TWO_FACTOR_SYMMETRY,
        limit=None if bias else lambda hyper, sizes: {"scales": np.ones(sizes.K)})


register("ce")(lambda: cross_entropy_model("ce", False))
register("ce-bias")(lambda: cross_entropy_model("ce-bias", True))
