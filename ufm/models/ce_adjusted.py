"""Logit-adjusted cross-entropy UFM — LA, CDT and VS losses with per-class weights, in one file
(docs/theory.md §5.5; docs/architecture.md, "A model with a per-class hyperparameter"):

    (1/N)·Σ_i w_(y_i)·CE(Δ⊙z_i + ι, y_i) + λ_W/2‖W‖² + λ_H/2‖H‖²,   Z = WH,

with, from the class counts n_k (π_k = n_k/N):
    ι_k = τ·log π_k                 the additive adjustment of logit adjustment (LA, Menon et
                                    al. 2021), `--tau`;
    Δ_k = (n_k/n_max)^γ             the multiplicative one of class-dependent temperatures (CDT,
                                    Ye et al. 2020), `--cdt-gamma`; both together are the
                                    vector-scaling loss (VS, Kini et al. 2021);
    w_k = ω_k·c_k                   ω the per-class weight vector `--class-weight` (a traced
                                    hyperparameter of K values), c_k = 1 (`--reduction mean`) or
                                    N/(K·n_k) (`class-mean`: every class weighs the same).

The loss is convex in the logits (Δ > 0: an affine map into a convex function), so the model has
a global certificate at every λ: per sample of class k, ℓ_k(z) = w_k·f(Δ⊙z + ι) with f = CE(·, k)
has ℓ_k*(g) = w_k·f*(g/(w_kΔ)) − ⟨g/Δ, ι⟩, f*(p) = Σ_j q_j log q_j for q = e_k + p in the simplex,
so −L*(G·E) = (1/N)·Σ_k n_k·w_k·Entropy(e_k + N·g_k/(w_kΔ)) + Σ_k n_k·⟨g_k/Δ, ι⟩.
At balanced counts with every weight 1 it is the `ce` model (ι is a constant shift, Δ = 1), and
Zhu et al.'s closed form applies.
"""
import math

import jax.numpy as jnp
import numpy as np

from ufm import convex, metrics, theory
from ufm.models.base import (TWO_FACTOR_SYMMETRY, GlobalCertificate, Hyper, Model, Option,
                             one_hot_targets, register, sq)
from ufm.models.cross_entropy import _entropy, _p_minus_t, _simplex_cap
from ufm.models.plain import TWO_FACTOR, class_logits, two_factor_init, two_factor_measurements

HYPERS = TWO_FACTOR + (
    Hyper("tau", 0.0, "τ, logit adjustment's additive τ·log π_k (LA; with --cdt-gamma: VS)"),
    Hyper("cdt_gamma", 0.0, "γ, class-dependent temperatures Δ_k = (n_k/n_max)^γ (CDT; with "
                            "--tau: VS)"),
    Hyper("class_weight", 1.0, "ω_k, the weight of class k's loss", positive=True,
          per_class=True),
)
REDUCTION = Option("reduction", "mean", "how the per-sample losses are averaged: mean (1/N·Σ_i) "
                                        "or class-mean (each class's mean, averaged over classes)",
                   choices=("mean", "class-mean"))


def adjustments(hyper, counts, reduction, xp=jnp):
    """(ι [K], Δ [K], w [K]) of the module docstring from the hyperparameters and the counts;
    xp: jnp (traced) or np (float64, the certificate)."""
    n = np.asarray(counts, np.float64)
    N, K = n.sum(), len(n)
    iota = xp.asarray(hyper["tau"]) * xp.asarray(np.log(n / N))
    delta = xp.asarray(n / n.max()) ** xp.asarray(hyper["cdt_gamma"])
    per_class = np.ones(K) if reduction == "mean" else N / (K * n)
    return iota, delta, xp.asarray(hyper["class_weight"]) * xp.asarray(per_class)


def objective(reduction):
    def objective(params, hyper, sizes, session=None):
        """(1/N)·Σ_i w_y·CE(Δ⊙z_i + ι, y_i) + λ_W/2‖W‖² + λ_H/2‖H‖² (module docstring).

        params: W [K, d], H [d, N]; hyper: lam_W, lam_H, tau, cdt_gamma, class_weight [K]."""
        W, H = params["W"], params["H"]
        iota, delta, w = adjustments(hyper, sizes.counts, reduction)
        V = delta[:, None] * (W @ H) + iota[:, None]
        Y = one_hot_targets(sizes, V.dtype)
        per_sample = metrics.shifted_logsumexp(V - jnp.sum(Y * V, axis=0)[None, :])
        ce = jnp.sum(jnp.sum(Y * w[:, None], axis=0) * per_sample) / sizes.N
        return ce + hyper["lam_W"] / 2 * sq(W) + hyper["lam_H"] / 2 * sq(H)

    return objective


def adjusted_loss(iota, delta, w):
    """The convex layer's `Loss` of the adjusted CE at fixed (ι, Δ, w) [K] (float64 numpy):
    class logits U [K, K], targets T = I (module docstring)."""

    def value(U, T, n, N):
        V = jnp.asarray(delta)[:, None] * U + jnp.asarray(iota)[:, None]
        c = jnp.sum(T * V, axis=0)
        return jnp.sum(n * jnp.asarray(w) * metrics.shifted_logsumexp(V - c[None, :])) / N

    def gradient(U, T, n):
        V = delta[:, None] * U + iota[:, None]
        return w[None, :] * delta[:, None] * _p_minus_t(V, T) / n.sum()

    def scaled(G, n):  # N·g_k/(w_k·Δ): the point of the simplex, less e_k
        return n.sum() * G / (w[None, :] * delta[:, None])

    def conjugate(G, T, n):
        N = n.sum()
        P = scaled(G, n)
        Q = T + P
        off = np.abs(P.sum(axis=0))  # q must sum to 1: P's columns to 0
        if np.any(Q < -1e-15) or np.any(off > 1e-10 * max(1.0, np.abs(P).max())):
            return -math.inf
        deficit = np.where(T > 0.5, -P, np.nan)  # 1 − Q at the vertex, without cancellation
        entropy = _entropy(np.clip(Q, 0.0, None), deficit)
        return float(np.sum(n * w * entropy) / N + np.sum(n * ((G / delta[:, None]).T @ iota)))

    def conjugate_traced(G, T, n, N):
        P = N * G / (jnp.asarray(w)[None, :] * jnp.asarray(delta)[:, None])
        Q = jnp.clip(T + P, 0.0, None)
        neg = jnp.sum(jnp.where(Q > 0, Q * jnp.log(jnp.where(Q > 0, Q, 1.0)), 0.0), axis=0)
        return (-jnp.sum(n * jnp.asarray(w) * neg) / N
                + jnp.sum(n * ((G / jnp.asarray(delta)[:, None]).T @ jnp.asarray(iota))))

    def cap(G, T, N):
        return _simplex_cap(G / (w[None, :] * delta[:, None]), T, N)

    return convex.Loss("ce-adjusted", value, gradient=gradient, conjugate=conjugate,
                       conjugate_traced=conjugate_traced, cap=cap,
                       curvature=lambda K: 0.5 * float(np.max(w) * np.max(delta) ** 2))


def lower_bound(reduction):
    def bound(inputs, hyper, sizes):
        """A float64 lower bound on the global minimum from the class logits of any point."""
        iota, delta, w = adjustments({k: np.asarray(v, np.float64) for k, v in hyper.items()
                                      if k in ("tau", "cdt_gamma", "class_weight")},
                                     sizes.counts, reduction, xp=np)
        return convex.penalised_bound(
            np.asarray(inputs["M"], np.float64), None, float(hyper["lam_W"]),
            float(hyper["lam_H"]), sizes.counts, adjusted_loss(iota, delta, w))

    return bound


def prediction(hyper, sizes):
    """Zhu et al.'s closed form where the adjustments vanish: balanced counts (ι constant, Δ = 1,
    c = 1) and every class weight 1; None elsewhere."""
    if not sizes.balanced or np.any(np.asarray(hyper["class_weight"]) != 1.0):
        return None
    return theory.cross_entropy(hyper, sizes, False)


def limit_scales(hyper, sizes):
    """{"scales": Δ [K]}, the margin scales of the λ → 0 limit: as the logits grow, ι (a constant) and the
    weights (a factor inside a vanishing exponential) stop mattering, and the direction solves
    max-margin with Δ_k·z_kk − Δ_j·z_jk ≥ 1 (docs/theory.md §5.4)."""
    return {"scales": adjustments(hyper, sizes.counts, "mean", np)[1]}


def build(reduction="mean"):
    return Model(
        name="ce-adjusted",
        description=f"logit-adjusted CE UFM: (1/N)Σ w_y·CE(Δ⊙Wh + ι, y) + λ_W/2‖W‖² + "
                    f"λ_H/2‖H‖², ι = τ log π (LA), Δ = (n/n_max)^γ (CDT), both (VS); "
                    f"{reduction} over samples",
        init=two_factor_init(False), objective=objective(reduction),
        measure=two_factor_measurements(False), hypers=HYPERS, theorem_min_d=lambda K: K - 1,
        init_scale=1.0, theory=prediction,
        certificate=GlobalCertificate(class_logits, lower_bound(reduction),
                                      convex_min_d=lambda K: K),
        symmetries=TWO_FACTOR_SYMMETRY, options=(("reduction", reduction),),
        limit=limit_scales)


register("ce-adjusted", options=(REDUCTION,))(build)
