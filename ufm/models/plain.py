"""The plain MSE UFM: bias-free, with an unregularized bias, with a regularized bias
(Tirer & Bruna, ICML 2022, eqs. 5, 14 and 3; docs/theory.md §2.1, §3.1–3.3)."""
import math

import jax.numpy as jnp
import numpy as np

from ufm import convex, metrics, theory
from ufm.models.base import (TWO_FACTOR_SYMMETRY, GlobalCertificate, Model, balanced_only,
                             gaussian_blocks, lam, one_hot_targets, register, sq)


def objective(params, hyper, sizes, session=None):
    """1/(2N)‖WH + b1ᵀ − Y‖² + λ_W/2‖W‖² + λ_H/2‖H‖² + λ_b/2‖b‖²  (Tirer & Bruna eqs. 3, 5, 14).

    params: W [K, d], H [d, N], and b [K] when the model has a bias; hyper: lam_W, lam_H, and lam_b
    when the bias is regularized (absent ⇒ bias-free, eq. 5, or unregularized bias, eq. 14).
    """
    W, H = params["W"], params["H"]
    logits = W @ H
    penalty = hyper["lam_W"] / 2 * sq(W) + hyper["lam_H"] / 2 * sq(H)
    if "b" in params:
        logits = logits + params["b"][:, None]
        if "lam_b" in hyper:
            penalty = penalty + hyper["lam_b"] / 2 * sq(params["b"])
    Y = one_hot_targets(sizes, logits.dtype)
    return sq(logits - Y) / (2 * sizes.N) + penalty


def two_factor_init(bias):
    def init(key, hyper, sizes):
        """W, H (and b) with i.i.d. N(0, init_scale²) entries (a scalar or a dict per block)."""
        names = ("W", "H", "b") if bias else ("W", "H")
        shapes = {"W": (sizes.K, sizes.d), "H": (sizes.d, sizes.N), "b": (sizes.K,)}
        return gaussian_blocks(key, {k: shapes[k] for k in names}, hyper["init_scale"])

    return init


def two_factor_measurements(mse):
    """measure(params, hyper, sizes) of the one-level models: NC1/NC2 of H, NC2 of W, NC3, norms,
    Papyan's suite, and with a bias its summary; for the MSE models with a bias also Han et al.'s
    decomposition (an MSE identity; with their single λ = λ_W for both W and b)."""

    def measure(params, hyper, sizes, session=None):
        W, H = params["W"], params["H"]
        out = metrics.feature_measurements(H, sizes.classes, "H")
        out.update(metrics.classifier_measurements(W, H, sizes.classes))
        out["norm_H"] = jnp.linalg.norm(H)
        out.update(metrics.papyan_suite(W, H, params.get("b"), sizes.classes))
        if "b" in params:
            out["b_mean"] = jnp.mean(params["b"])
            out["b_spread"] = jnp.max(params["b"]) - jnp.min(params["b"])
            out["cos_uncentred_H"] = metrics.mean_cosine_uncentred(H, sizes.classes)
            if mse and sizes.balanced:  # their W̃_LS formula is for balanced classes
                han = metrics.han_decomposition(W, params["b"], H, hyper["lam_W"])
                out.update(han_nc1=han.nc1, han_nc23=han.nc23, han_ls_perp=han.ls_perp)
        return out

    return measure


def class_logits(params, sizes):
    """What the global bound needs of a two-factor point: M = W·H̄ [K, K] (column k: the logits
    of class k's mean) and the bias b [K]."""
    out = {"M": params["W"] @ metrics.class_means(params["H"], sizes.classes)}
    if "b" in params:
        out["b"] = params["b"]
    return out


def penalised_bound(problem, bias):
    """lower_bound(inputs, hyper, sizes) of a penalised two-factor model (docs/theory.md §5.1);
    problem: its convex.TwoFactor (loss, targets, the weight decays' names)."""
    loss, targets = problem.loss, problem.targets

    def lower_bound(inputs, hyper, sizes):
        T = None if targets is None else np.asarray(targets(hyper, sizes), np.float64)
        b = inputs.get("b")
        lam_W, lam_H = problem.lams(hyper)
        return convex.penalised_bound(
            np.asarray(inputs["M"], np.float64), None if b is None else np.asarray(b, np.float64),
            float(lam_W), float(lam_H), sizes.counts, loss, bias,
            float(problem.lam_b(hyper)) if bias == "regularized" else 0.0, T)

    return lower_bound


def _mse_value(U, T, n, N):
    """(1/2N)·Σ_k n_k‖u_k − t_k‖²: the squared error at class-constant logits U [K, K] (JAX)."""
    return jnp.sum(n * jnp.sum((U - T) ** 2, axis=0)) / (2 * N)


def _mse_conjugate(G, T, n):
    """−L*(G·E) = −⟨G, T⟩_n − (N/2)‖G‖²_n for the squared error (any G)."""
    return float(-np.sum(n * np.sum(G * T, axis=0)) - n.sum() / 2 * np.sum(n * np.sum(G * G, 0)))


MSE_LOSS = convex.Loss(
    "mse", _mse_value, gradient=lambda U, T, n: (U - T) / n.sum(), conjugate=_mse_conjugate,
    conjugate_traced=lambda G, T, n, N: (-jnp.sum(n * jnp.sum(G * T, axis=0))
                                          - N / 2 * jnp.sum(n * jnp.sum(G * G, axis=0))),
    cap=lambda G, T, N: math.inf, curvature=lambda K: 1.0, quadratic=True)
MSE = convex.TwoFactor(MSE_LOSS)  # targets Y
TWO_FACTOR = (lam("lam_W", "λ_W, the classifier's weight decay"),
              lam("lam_H", "λ_H, the features' weight decay"))
LAM_B = lam("lam_b", "λ_b, the bias's weight decay", decay=False)  # λ_b = 0: a free bias


def plain_model(name, bias):
    """bias ∈ {None, 'free', 'regularized'}: eqs. 5, 14 and 3."""
    hypers = TWO_FACTOR + ((LAM_B,) if bias == "regularized" else ())
    what = {None: "bias-free", "free": "unregularized bias", "regularized": "regularized bias"}
    return Model(
        name=name,
        description=f"MSE UFM, {what[bias]}: 1/(2N)‖WH{' + b1ᵀ' if bias else ''} − Y‖² + "
                    f"λ_W/2‖W‖² + λ_H/2‖H‖²{' + λ_b/2‖b‖²' if bias == 'regularized' else ''} "
                    f"(Tirer & Bruna)",
        init=two_factor_init(bias is not None), objective=objective,
        measure=two_factor_measurements(True), hypers=hypers,
        theorem_min_d=(lambda K: K - 1) if bias == "free" else (lambda K: K), init_scale=1.0,
        theory=balanced_only(lambda hyper, sizes: theory.plain(hyper, sizes, bias)), bias=bias,
        certificate=GlobalCertificate(class_logits, penalised_bound(MSE, bias),
                                      convex_min_d=lambda K: K, two_factor=MSE,
                                      solver=convex.solve),
        symmetries=TWO_FACTOR_SYMMETRY)


register("bias-free")(lambda: plain_model("bias-free", None))
register("unregularized-bias")(lambda: plain_model("unregularized-bias", "free"))
register("regularized-bias")(lambda: plain_model("regularized-bias", "regularized"))
