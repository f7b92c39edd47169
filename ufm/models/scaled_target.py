"""The MSE UFM with targets γ·T: a regression UFM whose class k has the target vector γ·t_k (the
one-hot labels by default, T = I; any K×K matrix from a file with `--targets`). This file is the
whole model: its objective, its closed form (any counts) and its registration (the worked example
of docs/architecture.md; docs/theory.md §3.11)."""
import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from ufm import convex, metrics
from ufm.files import read_matrix
from ufm.models.base import (TWO_FACTOR_SYMMETRY, GlobalCertificate, Hyper, Model, Option,
                             register, sq)
from ufm.models.plain import (MSE_LOSS, TWO_FACTOR, class_logits, penalised_bound, two_factor_init,
                             two_factor_measurements)

GAMMA = Hyper("gamma", 1.0, "γ, the scale of the targets γY (default 1)", positive=True)


def read_targets(value):
    """The `targets` option as a hashable K×K tuple: from a .npy, .npz (array `targets`) or text
    file, or an array; ValueError naming the option otherwise."""
    T = read_matrix(value, "targets (--targets)", "targets", "a K×K matrix")
    if T.ndim != 2 or T.shape[0] != T.shape[1] or not np.all(np.isfinite(T)):
        raise ValueError(f"targets (--targets) must be a finite K×K matrix (column k: class k's "
                         f"target vector), got shape {T.shape}")
    return tuple(tuple(float(v) for v in row) for row in T)


TARGETS = Option("targets", None, "a K×K matrix of per-class target vectors "
                 "(column k for class k) in a .npy/.npz/.csv/.txt file (default: the one-hot "
                 "labels, I)", convert=read_targets)


def target_matrix(targets, K):
    return np.eye(K) if targets is None else np.asarray(targets, np.float64)


def scaled_target_model(targets=None):
    T = None if targets is None else jnp.asarray(targets)

    def per_class(hyper, sizes):
        """γ·T [K, K]: column k the target of class k."""
        base = jnp.eye(sizes.K) if T is None else T
        return hyper["gamma"] * base

    def objective(params, hyper, sizes, session=None):
        """1/(2N)‖WH − γT·E‖² + λ_W/2‖W‖² + λ_H/2‖H‖²  (E the class indicator [K, N]).

        params: W [K, d], H [d, N]; hyper: lam_W, lam_H, gamma.
        """
        W, H = params["W"], params["H"]
        labels = metrics.class_labels(sizes.counts, sizes.N)
        Y = per_class(hyper, sizes).astype(H.dtype)[:, labels]
        return (sq(W @ H - Y) / (2 * sizes.N) + hyper["lam_W"] / 2 * sq(W)
                + hyper["lam_H"] / 2 * sq(H))

    def theory(hyper, sizes):
        """The minimiser for d ≥ K at any counts (float64, independent of the simulator).

        The penalty's minimum over factorisations of Z = WH is μ‖Z‖_*, μ = √(λ_Wλ_H); with
        Z = M·E and A = M D^½ (D = diag n) the problem is 1/(2N)‖A − γT D^½‖² + μ‖A‖_*: soft-
        threshold the singular values σ_j of γT D^½ at Nμ. f* = Σ_j [min(σ_j, Nμ)²/(2N) +
        μ(σ_j − Nμ)₊]. With T = I and balanced classes: f* = γ²/2 − (γ − c)₊²/2, c = K√(nλ_Wλ_H).
        """
        lam_W, lam_H, gamma = (float(hyper[k]) for k in ("lam_W", "lam_H", "gamma"))
        n = np.asarray(sizes.counts, np.float64)
        N, mu = n.sum(), math.sqrt(lam_W * lam_H)
        sigma = np.linalg.svd(gamma * target_matrix(targets, sizes.K) * np.sqrt(n)[None, :],
                              compute_uv=False)
        kept = np.maximum(sigma - N * mu, 0.0)
        value = float(np.sum(np.minimum(sigma, N * mu) ** 2) / (2 * N) + mu * np.sum(kept))
        rank = int(np.sum(kept > 0))
        return TargetPrediction(value, "zero" if rank == 0 else f"rank {rank}",
                                sizes.K * math.sqrt(float(n.mean()) * lam_W * lam_H),
                                N * mu, tuple(sigma), tuple(kept))

    def check(sizes):
        if T is not None and T.shape[0] != sizes.K:
            raise ValueError(f"targets (--targets) is {T.shape[0]}×{T.shape[0]} but K (--K) is "
                             f"{sizes.K}")

    reduced = convex.TwoFactor(MSE_LOSS, per_class)
    fit = "γY" if targets is None else "γT·E (targets from --targets)"
    return Model(
        name="scaled-target",
        description=f"1/(2N)‖WH − {fit}‖² + λ_W/2‖W‖² + λ_H/2‖H‖² (a regression UFM)",
        init=two_factor_init(False), objective=objective, measure=two_factor_measurements(True),
        hypers=TWO_FACTOR + (GAMMA,), theorem_min_d=lambda K: K, init_scale=1.0, theory=theory,
        certificate=GlobalCertificate(class_logits, penalised_bound(reduced, None),
                                      convex_min_d=lambda K: K, two_factor=reduced,
                                      solver=convex.solve),
        check=check, symmetries=TWO_FACTOR_SYMMETRY)


class TargetPrediction(NamedTuple):
    """The minimiser of the scaled-target model: WH = U diag(kept) Vᵀ·D^-½E from the SVD of
    γT D^½."""

    objective: float
    structure: str  # 'zero' or 'rank r' (T = I, balanced: rank K, an orthogonal frame)
    c: float  # K·√(n̄λ_Wλ_H), n̄ the mean count (the threshold is c = γ when T = I, balanced)
    threshold: float  # Nμ: singular values of γT D^½ below it are set to zero
    singular_values: tuple  # σ_j of γT D^½
    kept: tuple  # (σ_j − Nμ)₊: the singular values of A* = M* D^½

    def describe(self):
        return (f"soft-thresholding the singular values of γT·D^½ at Nμ = {self.threshold:.4g}: "
                f"{sum(k > 0 for k in self.kept)} of {len(self.kept)} kept")


register("scaled-target", (TARGETS,))(scaled_target_model)
