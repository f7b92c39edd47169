"""The regression UFM with per-sample targets (Andriopoulos et al., NeurIPS 2024; docs/theory.md
§3.13): targets Y [m, N] from a file, any m,

    1/(2N)‖WH (+ b1ᵀ) − Y‖² + λ_W/2‖W‖² + λ_H/2‖H‖²,   W [m, d], H [d, N], b [m] free (`--bias`).

Sizes: K is the target dimension m (W's rows) and N = K·n the number of samples (per-"class"
counts n_1, …, n_m summing to N when N is not a multiple of m: the split means nothing here).
Without `--targets` the targets are the one-hot labels, and the model is `bias-free` (with
`--bias`: `unregularized-bias`).

Closed form (any d): with Ỹ the targets (centred by their mean over samples with `--bias`) and
σ_1 ≥ σ_2 ≥ … its singular values, the minimum over factorisations is that of 1/(2N)‖Z − Ỹ‖² +
μ‖Z‖_* (μ = √(λ_Wλ_H)) over rank ≤ d: soft-thresholding, σ_i(Z) = (σ_i − Nμ)₊ for the d largest.
f* = Σ_(i ≤ d) [min(σ_i, Nμ)²/(2N) + μ(σ_i − Nμ)₊] + Σ_(i > d) σ_i²/(2N). At the minimiser
W Wᵀ = √(λ_H/λ_W)·U diag((σ_i − Nμ)₊) Uᵀ = √(λ_H/λ_W)·(√N·Σ^½ − Nμ·I)₊ for d ≥ m, Σ = ỸỸᵀ/N the
target covariance — the NRC3 prediction. Measurements (docs/theory.md §4): nrc1, nrc2, nrc3.
"""
import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from ufm import linalg, metrics
from ufm.files import read_matrix
from ufm.models.base import (TWO_FACTOR_SYMMETRY, GlobalCertificate, Model, Option,
                             one_hot_targets, register, sq)
from ufm.models.plain import TWO_FACTOR, two_factor_init

RANK_RTOL = 1e-6  # singular values of W below this fraction of the largest do not span its rows


def read_targets(value):
    """The `targets` option as a hashable tuple of rows [m, N]; ValueError naming it otherwise."""
    Y = read_matrix(value, "targets (--targets)", "targets", "an m×N matrix")
    if Y.ndim != 2 or Y.size == 0 or not np.all(np.isfinite(Y)):
        raise ValueError(f"targets (--targets) must be a finite m×N matrix (row j: output j of "
                         f"every sample), got shape {Y.shape}"
                         + ("" if Y.ndim != 2 or Y.size == 0 else " with NaN or inf entries"))
    return tuple(tuple(float(v) for v in row) for row in Y)


TARGETS = Option("targets", None, "the targets Y, an m×N matrix (row j: output j of every "
                 "sample) in a .npy/.npz/.csv/.txt file; --K m, N = K·n (default: the one-hot "
                 "labels)", convert=read_targets)
BIAS = Option("bias", False, "a free (unregularised) bias b [m]")


class RegressionPrediction(NamedTuple):
    """The minimiser's spectrum: singular values of the (centred) targets and those kept."""

    objective: float
    structure: str  # 'zero' or 'rank r'
    threshold: float  # Nμ
    singular_values: tuple
    kept: tuple  # (σ_i − Nμ)₊ for the d largest, 0 beyond

    def describe(self):
        return (f"soft-thresholding the singular values of the targets at Nμ = "
                f"{self.threshold:.4g}: {sum(k > 0 for k in self.kept)} of "
                f"{len(self.kept)} kept")


class Whitening(NamedTuple):
    """The optimum's training error in the targets' own units with and without whitening them
    (whitening), and the covariance's eigenvalues it follows from."""

    plain: float  # ½Σ_i min(e_i, c)
    whitened: float  # ½·min(1, c)·Σ_i e_i
    eigenvalues: tuple  # e_i of the target covariance Σ
    c: float  # N·λ_W·λ_H

    @property
    def helps(self):
        return self.whitened < self.plain


def whiten(Y):
    """(Y_w, back): the centred targets whitened, Y_w = Σ^-½(Y − ȳ1ᵀ) (covariance I), and the map
    taking predictions of Y_w back to the targets' units, Ŷ = Σ^½·Z + ȳ1ᵀ (numpy float64; Σ must
    be non-singular)."""
    Y = np.asarray(Y, np.float64)
    mean = Y.mean(axis=1, keepdims=True)
    e, U = np.linalg.eigh(np.cov(Y, bias=True).reshape(Y.shape[0], Y.shape[0]))
    if e.min() <= 1e-12 * max(e.max(), 1e-300):
        raise ValueError("targets (--targets): their covariance is singular (an output is an "
                         "affine function of the others), so they cannot be whitened")
    root, inv_root = (U * np.sqrt(e)) @ U.T, (U / np.sqrt(e)) @ U.T
    return inv_root @ (Y - mean), lambda Z: root @ np.asarray(Z, np.float64) + mean


def whitening(Y, lam_W, lam_H):
    """The training error, in the targets' units, of the optimum with a free bias and d ≥ m,
    fitted to the targets (½Σ_i min(e_i, c)) and fitted to the whitened targets then mapped
    back (½·min(1, c)·Σ_i e_i), c = Nλ_Wλ_H (docs/theory.md §3.13). Whitening helps exactly when
    the second is smaller: for c ≤ min(1, e_min) that is mean variance Σe_i/m < 1; for c ≥ 1
    never."""
    Y = np.asarray(Y, np.float64)
    e = np.clip(np.linalg.eigvalsh(np.cov(Y, bias=True).reshape(Y.shape[0], Y.shape[0])), 0, None)
    c = Y.shape[1] * float(lam_W) * float(lam_H)
    return Whitening(0.5 * float(np.sum(np.minimum(e, c))), 0.5 * min(1.0, c) * float(e.sum()),
                     tuple(float(v) for v in e), c)


def regression_model(targets=None, bias=False):
    Y0 = None if targets is None else np.asarray(targets, np.float64)

    def target_matrix(sizes, dtype=None):
        return one_hot_targets(sizes, dtype) if Y0 is None else jnp.asarray(Y0, dtype)

    def centred(sizes):
        """Ỹ (float64 numpy), and its SVD's U and σ."""
        if Y0 is None:  # the one-hot labels, in numpy (this runs inside traced code too)
            labels = metrics.class_labels(sizes.counts, sizes.N)
            Y = (labels[None, :] == np.arange(sizes.K)[:, None]).astype(np.float64)
        else:
            Y = Y0
        if bias:
            Y = Y - Y.mean(axis=1, keepdims=True)
        U, s, _ = np.linalg.svd(Y, full_matrices=False)
        return Y, U, s

    def objective(params, hyper, sizes, session=None):
        """1/(2N)‖WH (+ b1ᵀ) − Y‖² + λ_W/2‖W‖² + λ_H/2‖H‖² (module docstring)."""
        W, H = params["W"], params["H"]
        Z = W @ H + (params["b"][:, None] if bias else 0.0)
        return (sq(Z - target_matrix(sizes, H.dtype)) / (2 * sizes.N)
                + hyper["lam_W"] / 2 * sq(W) + hyper["lam_H"] / 2 * sq(H))

    def measure(params, hyper, sizes, session=None):
        """The fit, the norms and the collapse measures NRC1–3 (docs/theory.md §4)."""
        W, H = params["W"], params["H"]
        Z = W @ H + (params["b"][:, None] if bias else 0.0)
        m = sizes.K
        Hc = H - H.mean(axis=1, keepdims=True)
        energy = sq(Hc)
        # features zero to round-off (RMS norm below √ε) have no subspace: NaN, not noise's
        energy = jnp.where(energy > jnp.finfo(H.dtype).eps * sizes.N, energy, 0.0)
        s2 = linalg.singular_values(Hc) ** 2  # descending
        outside_pca = jnp.sum(s2[m:]) if s2.shape[0] > m else jnp.zeros((), H.dtype)
        _, sw, Vt = linalg.svd(W)  # W's row space: right singular vectors with σ > rtol·σ_max
        spans = (sw > RANK_RTOL * sw[0]).astype(H.dtype)
        P = Vt.T @ (spans[:, None] * Vt)
        outside_w = sq(Hc - P @ Hc)
        _, U, s = centred(sizes)
        mu = jnp.sqrt(hyper["lam_W"] * hyper["lam_H"])
        kept = jnp.maximum(jnp.asarray(s, H.dtype) - sizes.N * mu, 0.0)
        kept = jnp.where(jnp.arange(s.shape[0]) < sizes.d, kept, 0.0)
        ratio = jnp.sqrt(hyper["lam_H"] / jnp.where(hyper["lam_W"] > 0, hyper["lam_W"], jnp.nan))
        predicted = ratio * (jnp.asarray(U, H.dtype) * kept[None, :]) @ jnp.asarray(U, H.dtype).T
        scale = jnp.sqrt(sq(predicted))
        undefined = jnp.asarray(jnp.nan, H.dtype)
        return {
            "mse": sq(Z - target_matrix(sizes, H.dtype)) / (2 * sizes.N),
            "norm_W": jnp.sqrt(sq(W)), "norm_H": jnp.sqrt(sq(H)),
            "nrc1": jnp.where(energy > 0, outside_pca / jnp.where(energy > 0, energy, 1), undefined),
            "nrc2": jnp.where(energy > 0, outside_w / jnp.where(energy > 0, energy, 1), undefined),
            "nrc3": jnp.where(scale > 0, jnp.sqrt(sq(W @ W.T - predicted))
                              / jnp.where(scale > 0, scale, 1), undefined),
        }

    def theory(hyper, sizes):
        """The minimum at any d (module docstring; float64, independent of the simulator)."""
        lam_W, lam_H = float(hyper["lam_W"]), float(hyper["lam_H"])
        N, mu = sizes.N, math.sqrt(lam_W * lam_H)
        _, _, s = centred(sizes)
        top = np.arange(len(s)) < sizes.d
        kept = np.where(top, np.maximum(s - N * mu, 0.0), 0.0)
        value = float(np.sum(np.where(top, np.minimum(s, N * mu) ** 2 / (2 * N) + mu * kept,
                                      s ** 2 / (2 * N))))
        rank = int(np.sum(kept > 0))
        return RegressionPrediction(value, "zero" if rank == 0 else f"rank {rank}", N * mu,
                                    tuple(s), tuple(kept))

    def check(sizes):
        if Y0 is not None and Y0.shape != (sizes.K, sizes.N):
            raise ValueError(f"targets (--targets) is {Y0.shape[0]}×{Y0.shape[1]} (m×N) but K "
                             f"(--K) is {sizes.K} and N = {sizes.N} samples: pass --K "
                             f"{Y0.shape[0]} and --n so that the counts sum to {Y0.shape[1]}")

    def lower_bound(inputs, hyper, sizes):
        """The global minimum itself (the closed form is exact at any d and any λ ≥ 0): the
        certificate compares the run's objective with it."""
        return theory(hyper, sizes).objective

    fit = "Y (one-hot labels)" if Y0 is None else "Y (targets from --targets)"
    return Model(
        name="regression",
        description=f"1/(2N)‖WH{' + b1ᵀ' if bias else ''} − {fit}‖² + λ_W/2‖W‖² + λ_H/2‖H‖² "
                    f"(regression UFM, Andriopoulos et al. 2024)",
        init=two_factor_init(bias), objective=objective, measure=measure, hypers=TWO_FACTOR,
        theorem_min_d=lambda K: 1, init_scale=1.0, theory=theory, check=check,
        certificate=GlobalCertificate(lambda params, sizes: {}, lower_bound,
                                      convex_min_d=lambda K: 1),
        bias="free" if bias else None, symmetries=TWO_FACTOR_SYMMETRY,
        min_K=1 if Y0 is not None else 2)  # univariate targets: m = 1


register("regression", (TARGETS, BIAS))(regression_model)
