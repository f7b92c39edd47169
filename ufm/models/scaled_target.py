"""The MSE UFM with targets γY: a regression UFM whose targets are the one-hot labels scaled by γ
(docs/theory.md §3.11). This file is the whole model: its objective, its closed form and its
registration (the worked example of docs/architecture.md)."""
import math

import jax.numpy as jnp
import numpy as np

from ufm import convex
from ufm.models.base import Hyper, Model, balanced_only, one_hot_targets, register, sq
from ufm.models.plain import (TWO_FACTOR, class_logits, penalised_bound, two_factor_init,
                             two_factor_measurements)
from ufm.theory import PlainPrediction

# the reduced problem's targets per class: γI
REDUCED = convex.TwoFactor("mse", lambda hyper, sizes: hyper["gamma"] * jnp.eye(sizes.K))
GAMMA = Hyper("gamma", 1.0, "γ, the scale of the targets γY (default 1)", positive=True)


def objective(params, hyper, sizes, session=None):
    """1/(2N)‖WH − γY‖² + λ_W/2‖W‖² + λ_H/2‖H‖²  (bias-free MSE UFM with targets γY).

    params: W [K, d], H [d, N]; hyper: lam_W, lam_H, gamma.
    """
    W, H = params["W"], params["H"]
    Y = hyper["gamma"] * one_hot_targets(sizes, H.dtype)
    return (sq(W @ H - Y) / (2 * sizes.N) + hyper["lam_W"] / 2 * sq(W)
            + hyper["lam_H"] / 2 * sq(H))


def theory(hyper, sizes):
    """The minimiser for d ≥ K (float64, independent of the simulator).

    With Z = WH the penalty's minimum over factorisations is √(λ_Wλ_H)‖Z‖_*, so the problem is
    1/(2N)‖Z − γY‖² + √(λ_Wλ_H)‖Z‖_*: soft-threshold the K singular values γ√n of γY at
    N√(λ_Wλ_H). With c = K√(nλ_Wλ_H): WH = (γ − c)₊Y, f* = γ²/2 − (γ − c)₊²/2; an orthogonal
    frame H̄ᵀH̄ = ρ_H I with ρ_H = (γ − c)√(λ_W/(nλ_H)) for c < γ, zero after.
    """
    lam_W, lam_H, gamma = (float(hyper[k]) for k in ("lam_W", "lam_H", "gamma"))
    K, n = sizes.K, sizes.n
    c = K * math.sqrt(n * lam_W * lam_H)
    s = max(gamma - c, 0.0)  # WH = s·Y
    rho_H, rho_W = s * math.sqrt(lam_W / (n * lam_H)), s * math.sqrt(n * lam_H / lam_W)
    return PlainPrediction(
        objective=gamma ** 2 / 2 - s ** 2 / 2, structure="OF" if s > 0 else "zero", c=c,
        threshold=gamma, bias_threshold=None, x=s, y=s, b=None, gram_H=rho_H * np.eye(K),
        gram_W=rho_W * np.eye(K), rho_H=rho_H, rho_W=rho_W)


register("scaled-target")(lambda: Model(
    "scaled-target", "1/(2N)‖WH − γY‖² + λ_W/2‖W‖² + λ_H/2‖H‖² (a regression UFM, targets γY)",
    two_factor_init(False), objective, two_factor_measurements(True), TWO_FACTOR + (GAMMA,),
    lambda K: K, 1.0, balanced_only(theory), bound_inputs=class_logits,
    lower_bound=penalised_bound(REDUCED, None), convex_min_d=lambda K: K, solver=convex.solve, two_factor=REDUCED))
