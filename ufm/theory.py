"""Closed forms of the theorems (SPEC §3.1–3.5), in float64 numpy, independent of the simulator.

Functions take the same hyperparameter dict (`lam_W`, `lam_H`, …) and `Sizes` as the simulator
and return NamedTuples of predictions.
"""
import math
from typing import NamedTuple, Optional

import numpy as np

THREE_FACTOR_THRESHOLD = 2.0 ** (-4.0 / 3.0)  # K·a where the nonzero minimum stops being global
THREE_FACTOR_LOCAL_LIMIT = 3.0 * 4.0 ** (-4.0 / 3.0)  # K·a where it stops being a local minimum


class PlainPrediction(NamedTuple):
    """Global minimiser of the plain UFM (Theorems 3.1, 3.2 and SPEC §3.3).

    After collapse the logits of the class means are Z̄ = W H̄ = x·P + (y/K)·11ᵀ and b = (u/K)·1;
    the Grams follow by balancing: H̄ᵀH̄ = √(λ_W/(nλ_H))·Z̄, WWᵀ = √(nλ_H/λ_W)·Z̄.
    """

    objective: float
    structure: str  # 'OF', 'ETF', 'ETF+mean' (regularized bias saturated) or 'zero'
    c: float  # K·√(nλ_Wλ_H)
    threshold: float  # c at which the solution becomes zero (1)
    bias_threshold: Optional[float]  # λ_b/(1+λ_b): below it the bias saturates
    x: float  # eigenvalue of Z̄ on 1^⊥
    y: float  # eigenvalue of Z̄ along 1
    b: Optional[float]  # every entry of b (None: no bias)
    gram_H: np.ndarray  # H̄ᵀH̄  [K, K]
    gram_W: np.ndarray  # WWᵀ  [K, K]
    rho_H: float  # H̄ᵀH̄ = ρ_H·I (OF) or ρ_H·P (ETF)
    rho_W: float  # WWᵀ = ρ_W·I (OF) or ρ_W·P (ETF)


def plain(hyper, sizes, bias=None):
    """Theorem 3.1 (bias=None), 3.2 (bias='free') and SPEC §3.3 (bias='regularized').

    Reduced problem per eigen-direction of Z̄ (exact after collapse and the nuclear-norm bound
    min{λ_W‖W‖²/2 + λ_H‖H‖²/2 : WH = Z} = √(λ_Wλ_H)‖Z‖_*):
      K·f = (K−1)[(x−1)²/2 + c|x|] + [(y+u−1)²/2 + c|y| + λ_b·u²/2].
    """
    K, n = sizes.K, sizes.n
    lam_W, lam_H = float(hyper["lam_W"]), float(hyper["lam_H"])
    c = K * math.sqrt(n * lam_W * lam_H)
    x = max(1.0 - c, 0.0)
    bias_threshold = None
    if bias is None:
        u, y, lam_b = 0.0, x, 0.0
    elif bias == "free":
        u, y, lam_b = 1.0, 0.0, 0.0
    elif bias == "regularized":
        lam_b = float(hyper["lam_b"])
        bias_threshold = lam_b / (1.0 + lam_b)
        if lam_b > 0 and c < bias_threshold:  # bias saturates, features take the mean
            u, y = c / lam_b, 1.0 - c - c / lam_b
        else:
            u, y = 1.0 / (1.0 + lam_b), 0.0
    else:
        raise ValueError(f"bias must be None, 'free' or 'regularized', got {bias!r}")
    objective = ((K - 1) * ((x - 1) ** 2 / 2 + c * x)
                 + ((y + u - 1) ** 2 / 2 + c * y + lam_b * u ** 2 / 2)) / K
    P = np.eye(K) - np.ones((K, K)) / K
    Z = x * P + y * np.ones((K, K)) / K
    scale_H = math.sqrt(lam_W / (n * lam_H))
    if x == 0.0 and y == 0.0:
        structure = "zero"
    elif x == y:
        structure = "OF"
    elif y == 0.0:
        structure = "ETF"
    else:
        structure = "ETF+mean"
    return PlainPrediction(
        objective=objective, structure=structure, c=c, threshold=1.0,
        bias_threshold=bias_threshold, x=x, y=y,
        b=None if bias is None else u / K,
        gram_H=scale_H * Z, gram_W=Z / scale_H, rho_H=scale_H * x, rho_W=x / scale_H)


class CrossEntropyPrediction(NamedTuple):
    """Global minimiser of the cross-entropy UFM (Zhu et al. 2021; SPEC §3.7)."""

    objective: float
    structure: str  # 'ETF' or 'zero'
    c: float  # K·√(nλ_Wλ_H)
    threshold: float  # 1
    w_norm_sq: float  # ‖w_k‖² for every k
    feature_scale: float  # h_{k,i} = feature_scale · w_k, √(λ_W/(nλ_H))
    gram_W: np.ndarray  # WWᵀ = ‖w‖²·K/(K−1)·P  [K, K]
    b: Optional[float]  # 0 with a regularized bias, None without a bias


def cross_entropy(hyper, sizes, bias=False):
    """SPEC §3.7: W a simplex ETF with ‖w_k‖² = (K−1)/K·√(nλ_H/λ_W)·log(1/√(nλ_Wλ_H) − (K−1)),
    h = √(λ_W/(nλ_H))·w_k, b = 0; for c ≥ 1 the zero solution (objective log K)."""
    K, n = sizes.K, sizes.n
    lam_W, lam_H = float(hyper["lam_W"]), float(hyper["lam_H"])
    c = K * math.sqrt(n * lam_W * lam_H)
    scale = math.sqrt(lam_W / (n * lam_H))
    r2 = 0.0
    if c < 1:
        r2 = (K - 1) / K * math.sqrt(n * lam_H / lam_W) * math.log(1 / math.sqrt(n * lam_W * lam_H) - (K - 1))
    # at the prediction: correct logit s·r², the others −s·r²/(K−1)
    margin = scale * r2 * K / (K - 1)
    objective = math.log1p((K - 1) * math.exp(-margin)) + lam_W * K * r2
    P = np.eye(K) - np.ones((K, K)) / K
    return CrossEntropyPrediction(
        objective=objective, structure="ETF" if r2 > 0 else "zero", c=c, threshold=1.0,
        w_norm_sq=r2, feature_scale=scale, gram_W=r2 * K / (K - 1) * P,
        b=0.0 if bias else None)


class LayeredPrediction(NamedTuple):
    """Global minimiser of the depth-L extended UFM (Theorem 4.1; 4.2 for ReLU, L = 2).

    With L+1 balanced factors every singular value s of W_L⋯W_1H̄_1 is equal and minimises
    g(s) = (s−1)²/(2K) + (L+1)/2·a·s^{2/(L+1)},  a = (nλ_{H1}·Πλ_{W_l})^{1/(L+1)};
    stationary points: t = s^{1/(L+1)} solves t^{2L} − t^{L−1} + K·a = 0.
    """

    objective: float
    structure: str  # 'OF' (ReLU: non-negative OF for H_L) or 'zero'
    Ka: float
    threshold: float  # K·a where the global minimiser jumps to zero
    local_limit: float  # K·a past which the nonzero stationary point no longer exists
    s: float  # singular value of W_L⋯W_1H̄_1 at the global minimiser
    s_nonzero: Optional[float]  # the nonzero local minimiser's s, if it exists
    objective_nonzero: Optional[float]  # objective there (above the jump: a local minimum)
    rho_H: tuple  # H̄_lᵀH̄_l = ρ_l·I for l = 1 … L (ReLU: H1 not determined, None)
    rho_W: float  # W_L W_Lᵀ = ρ_W·I


def _g(s, K, a, L):
    return (s - 1.0) ** 2 / (2 * K) + (L + 1) / 2 * a * s ** (2.0 / (L + 1))


def _nonzero_stationary_t(Ka, L):
    """Largest positive real root of t^{2L} − t^{L−1} + K·a (the local minimum), or None."""
    coeffs = np.zeros(2 * L + 1)
    coeffs[0] = 1.0
    coeffs[2 * L - (L - 1)] -= 1.0
    coeffs[-1] += Ka
    roots = np.roots(coeffs)
    real = roots[(np.abs(roots.imag) < 1e-9 * max(1.0, np.max(np.abs(roots)))) & (roots.real > 0)]
    if real.size == 0:
        return None
    t0 = float(np.max(real.real))
    for _ in range(3):  # Newton polish to full float64 precision
        f = t0 ** (2 * L) - t0 ** (L - 1) + Ka
        df = 2 * L * t0 ** (2 * L - 1) - (L - 1) * t0 ** (L - 2) if L > 1 else 2 * t0
        t0 -= f / df
    return t0


def layered_threshold(L):
    """K·a at which the zero solution becomes global for depth L (bisection on g(s+) = g(0)).

    L = 1 gives c = 1 (Theorem 3.1); L = 2 gives 2^{−4/3} (Theorem 4.1).
    """
    def nonzero_wins(Ka):
        t = _nonzero_stationary_t(Ka, L)
        return t is not None and _g(t ** (L + 1), 1.0, Ka, L) < _g(0.0, 1.0, Ka, L)

    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if nonzero_wins(mid) else (lo, mid)
    return (lo + hi) / 2


def layered(hyper, sizes, depth=2, activation="linear"):
    """Theorem 4.1 (linear) / 4.2 (ReLU, assuming ‖W1H1‖_* = ‖σ(W1H1)‖_*) at depth L = `depth`."""
    K, n, L = sizes.K, sizes.n, depth
    lam_H1 = float(hyper["lam_H1"])
    lam_Ws = [float(hyper[f"lam_W{layer}"]) for layer in range(1, L + 1)]
    a = (n * lam_H1 * math.prod(lam_Ws)) ** (1.0 / (L + 1))
    Ka = K * a
    threshold = {1: 1.0, 2: THREE_FACTOR_THRESHOLD}.get(L) or layered_threshold(L)
    t = _nonzero_stationary_t(Ka, L)
    s_nz = None if t is None else t ** (L + 1)
    f_nz = None if t is None else K * _g(s_nz, K, a, L)
    f_zero = K * _g(0.0, K, a, L)  # = 1/2
    nonzero = f_nz is not None and f_nz < f_zero
    s = s_nz if nonzero else 0.0
    # Balanced factors: λ_X·σ_X² = a·t² for every factor X; Grams multiply down the layers.
    unit = a * t * t if nonzero else 0.0
    rho = [unit / (n * lam_H1)]
    for lam in lam_Ws[:-1]:
        rho.append(rho[-1] * unit / lam)
    if activation == "relu":
        rho[0] = None  # H1's Gram lies anywhere between an OF and an ETF (SPEC §3.5)
    return LayeredPrediction(
        objective=min(f_zero, f_nz) if f_nz is not None else f_zero,
        structure="OF" if nonzero else "zero", Ka=Ka, threshold=threshold,
        local_limit=THREE_FACTOR_LOCAL_LIMIT if L == 2 else float("nan"),
        s=s, s_nonzero=s_nz, objective_nonzero=f_nz, rho_H=tuple(rho),
        rho_W=unit / lam_Ws[-1])


def layered_rank_objectives(prediction, K):
    """Objective of the critical point with r nonzero singular values, for r = 0 … K  [K+1].

    Each singular direction is a separate scalar problem, so with the nonzero local minimiser on
    r directions and zero on the rest f_r = (r·f_nonzero + (K − r)·f_zero)/K. Gradient descent
    can end at any of these that is a local minimum; this names which one it reached.
    """
    f_zero = 0.5
    if prediction.objective_nonzero is None:
        return [f_zero] * (K + 1)
    return [(r * prediction.objective_nonzero + (K - r) * f_zero) / K for r in range(K + 1)]


class PerturbedPrediction(NamedTuple):
    """Theorem 5.1: the n → ∞ limit of the optimal W for fixed features H̄*⊗1ᵀ + E."""

    kappa: float  # attenuation (ρ + Kλ_W)/(ρ + K(λ_W + σ²))
    W_star: np.ndarray  # H̄*ᵀ/(ρ + Kλ_W)  [K, d], the optimum for collapsed features
    W_limit: np.ndarray  # κ·W*  [K, d]


def optimal_classifier(H, Y, lam_W):
    """W(H) = Y Hᵀ (H Hᵀ + N λ_W I)⁻¹ — the minimiser over W of the bias-free objective for fixed
    H [d, N] (SPEC §3.6); Y [K, N]."""
    H, Y = np.asarray(H, np.float64), np.asarray(Y, np.float64)
    d, N = H.shape
    return np.linalg.solve(H @ H.T + N * lam_W * np.eye(d), H @ Y.T).T


def perturbed_limit(Hbar_star, sigma, lam_W):
    """Theorem 5.1 for H = H̄*⊗1ᵀ + E, H̄*ᵀH̄* = ρI [d, K], E i.i.d. zero mean with variance σ²."""
    Hbar_star = np.asarray(Hbar_star, np.float64)
    K = Hbar_star.shape[1]
    rho = float(np.trace(Hbar_star.T @ Hbar_star)) / K
    kappa = (rho + K * lam_W) / (rho + K * (lam_W + sigma ** 2))
    W_star = Hbar_star.T / (rho + K * lam_W)
    return PerturbedPrediction(kappa, W_star, kappa * W_star)


class PrototypePrediction(NamedTuple):
    """Fixed classifier with ‖h‖² ≤ E_H (SPEC §3.9): every h_{k,i} = √E_H·c_k, for any counts.

    For the layer-peeled model (learnable W, ‖w_k‖² ≤ E_W) only with balanced classes: W a simplex
    ETF of norm √E_W and h_{k,i} = √E_H·w_k/‖w_k‖.
    """

    objective: float  # Σ_k α_k Σ_i ℓ*  (no sessions)
    structure: str  # 'prototypes' (fixed classifier) or 'ETF' (layer-peeled model)
    loss_per_sample: float  # ℓ* at the optimum
    feature_norm: float  # √E_H
    margin: float  # logit of the true class minus any other at the optimum


def prototypes(hyper, sizes, frame, loss="ce", alpha="none"):
    """Closed form of the fixed-ETF / fixed-orthogonal / layer-peeled models (SPEC §3.9), or None
    (layer-peeled model with imbalanced classes: minority collapse, no closed form)."""
    K = sizes.K
    r = math.sqrt(float(hyper["E_H"]))
    if frame == "etf":
        margin = r * K / (K - 1)  # e_kᵀh − e_jᵀh with e_jᵀe_k = −1/(K−1)
    elif frame == "orthogonal":
        margin = r  # q_kᵀh = √E_H, q_jᵀh = 0
    elif frame == "learnable":
        if not sizes.balanced:
            return None
        margin = r * math.sqrt(float(hyper["E_W"])) * K / (K - 1)
    else:
        raise ValueError(f"frame must be 'etf', 'orthogonal' or 'learnable', got {frame!r}")
    per_sample = 0.0 if loss == "dot-regression" else math.log1p((K - 1) * math.exp(-margin))
    total_weight = K if alpha == "inverse-count" else 1.0
    return PrototypePrediction(total_weight * per_sample,
                               "ETF" if frame == "learnable" else "prototypes", per_sample, r,
                               margin)


def as_dict(prediction):
    """A prediction as a JSON-ready dict (arrays to nested lists), or None."""
    if prediction is None:
        return None
    out = {}
    for k, v in prediction._asdict().items():
        out[k] = v.tolist() if isinstance(v, np.ndarray) else (list(v) if isinstance(v, tuple) else v)
    return out
