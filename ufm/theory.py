"""Closed forms of the theorems (docs/theory.md §3), in float64 numpy, independent of the simulator.

Functions take the same hyperparameter dict (`lam_W`, `lam_H`, …) and `Sizes` as the simulator
and return NamedTuples of predictions.
"""
import math
from typing import NamedTuple, Optional

import numpy as np



class PlainPrediction(NamedTuple):
    """Global minimiser of the plain UFM (Theorems 3.1, 3.2 and docs/theory.md §3.3).

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
    """Theorem 3.1 (bias=None), 3.2 (bias='free') and docs/theory.md §3.3 (bias='regularized').

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
    """Global minimiser of the cross-entropy UFM (Zhu et al. 2021; docs/theory.md §3.7)."""

    objective: float
    structure: str  # 'ETF' or 'zero'
    c: float  # K·√(nλ_Wλ_H)
    threshold: float  # 1
    w_norm_sq: float  # ‖w_k‖² for every k
    feature_scale: float  # h_{k,i} = feature_scale · w_k, √(λ_W/(nλ_H))
    gram_W: np.ndarray  # WWᵀ = ‖w‖²·K/(K−1)·P  [K, K]
    b: Optional[float]  # 0 with a regularized bias, None without a bias


def cross_entropy(hyper, sizes, bias=False):
    """docs/theory.md §3.7: W a simplex ETF with ‖w_k‖² = (K−1)/K·√(nλ_H/λ_W)·log(1/√(nλ_Wλ_H) − (K−1)),
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


class MinorityCollapse(NamedTuple):
    """Which groups of classes collapse at the CE optimum (minority_collapse)."""

    threshold: float  # μ·N: group g collapses iff √n_g ≤ μN
    collapsed: tuple  # per group: its classifiers (and class means) coincide
    max_count: float  # (μN)²: the largest per-class count that collapses


def minority_collapse(groups, lam_W, lam_H):
    """The cross-entropy UFM's minority collapse, with or without a bias (docs/theory.md §5.5,
    derived there): groups = ((K_g, n_g), …), K_g classes of n_g samples each. At the global
    optimum group g's classifiers coincide, and so do its class means, exactly when K_g ≥ 2 and
    √n_g ≤ μ·N (μ = √(λ_Wλ_H), N = Σ K_g·n_g) — whatever the other groups and the bias."""
    N = float(sum(K * n for K, n in groups))
    t = math.sqrt(float(lam_W) * float(lam_H)) * N
    return MinorityCollapse(t, tuple(K >= 2 and math.sqrt(n) <= t for K, n in groups), t * t)


def minority_collapse_ratio(K_major, K_minor, n_minor, mu):
    """R* of two groups (K_major classes of R·n_minor samples, K_minor of n_minor): the minority
    classifiers coincide iff R ≥ R* = (1/(μ√n_minor) − K_minor)/K_major (may be ≤ 1: collapsed
    even when balanced)."""
    return (1.0 / (mu * math.sqrt(n_minor)) - K_minor) / K_major


def beta_c(M):
    """β at which the nonzero minimiser of φ_β stops being global, for M = L + 1 factors.

    (1/(M−1))·((M−2)/(M−1))^((M−2)/M): 1 for M = 2 (continuous: c = 1), 2^(−4/3) for M = 3
    (Theorem 4.1's jump). At β_c the singular value jumps from (M−2)/(M−1) to 0 (docs/theory.md).
    """
    return (1.0 / (M - 1)) * ((M - 2) / (M - 1)) ** ((M - 2) / M)


def beta_max(M):
    """β past which φ_β has no nonzero local minimum: (M/(2(M−1)))·((M−2)/(2(M−1)))^((M−2)/M);
    1 for M = 2, 3·4^(−4/3) for M = 3."""
    return (M / (2 * (M - 1))) * ((M - 2) / (2 * (M - 1))) ** ((M - 2) / M)


THREE_FACTOR_THRESHOLD = beta_c(3)  # K·a where the nonzero minimum stops being global (2^(−4/3))
THREE_FACTOR_LOCAL_LIMIT = beta_max(3)  # K·a where it stops being a local minimum (3·4^(−4/3))


def phi(t, beta, M):
    """The scalar problem of one class: φ_β(t) = (t − 1)²/2 + (M/2)·β·t^(2/M), t ≥ 0."""
    return (t - 1.0) ** 2 / 2 + M / 2 * beta * t ** (2.0 / M)


def nonzero_stationary(beta, M):
    """The nonzero local minimiser t of φ_β, or None (β ≥ β_max; for M = 2, β ≥ 1).

    t = s^M with s the largest positive root of s^(2M−2) − s^(M−2) + β (M = 3: the quartic
    t⁴ − t + Ka of Theorem 4.1, in s); for M = 2, t = 1 − β.
    """
    if M == 2:
        return 1.0 - beta if beta < 1 else None
    coeffs = np.zeros(2 * M - 1)
    coeffs[0] = 1.0
    coeffs[M] -= 1.0  # s^(M−2) sits M places after s^(2M−2)
    coeffs[-1] += beta
    roots = np.roots(coeffs)
    real = roots[(np.abs(roots.imag) < 1e-9 * max(1.0, np.max(np.abs(roots)))) & (roots.real > 0)]
    if real.size == 0:
        return None
    s = float(np.max(real.real))
    for _ in range(3):  # Newton polish to full float64 precision
        f = s ** (2 * M - 2) - s ** (M - 2) + beta
        df = (2 * M - 2) * s ** (2 * M - 3) - (M - 2) * s ** (M - 3)
        if df == 0:
            break
        s -= f / df
    # past β_max only a double root is left: it is an inflection of φ, not a local minimum
    if beta >= beta_max(M):
        return None
    return s ** M


def layered_threshold(L):
    """β_c by bisection on φ_β(t_nonzero) = φ_β(0) = 1/2, for depth L (M = L + 1 factors): an
    independent check of `beta_c`. L = 1 gives c = 1 (Theorem 3.1); L = 2 gives 2^(−4/3)."""
    M = L + 1

    def nonzero_wins(beta):
        t = nonzero_stationary(beta, M) if beta < 1 or M > 2 else None
        return t is not None and phi(t, beta, M) < 0.5

    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if nonzero_wins(mid) else (lo, mid)
    return (lo + hi) / 2


class LayeredPrediction(NamedTuple):
    """Global minimiser of the deep linear UFM with L weight matrices after H_1 (M = L + 1
    factors, any per-class counts); for the ReLU model the deep-neural-collapse value.

    Per class k, with β_k = N·λ̄·n_k^(1/M − 1), λ̄ = (λ_H1·Π λ_Wl)^(1/M), the class's singular
    value of W_L⋯W_1H_1 divided by √n_k is the minimiser t_k of φ_{β_k}, and
    f* = Σ_k (n_k/N)·φ_{β_k}(t_k) (docs/theory.md, "Deep linear MSE"). L = 1: Theorem 3.1;
    L = 2: Theorem 4.1 (4.2 for ReLU).
    """

    objective: float  # f* (ReLU at depth ≥ 3 with K > 2: the DNC value, not the optimum)
    structure: str  # 'OF', 'OF on r of K classes' (the rest at zero) or 'zero'
    depth: int  # L
    lam_bar: float  # λ̄
    beta: tuple  # β_k per class
    t: tuple  # t_k per class at the global minimiser (0: the class is not fit)
    fit: tuple  # per class: whether it is fit (β_k < β_c)
    threshold: float  # β_c(M)
    local_limit: float  # β_max(M)
    exact: bool  # whether `objective` is the optimum (False: a reference value)
    activation: str  # 'linear' or 'relu' (then `objective` is the DNC value)
    # balanced classes only (None otherwise):
    Ka: Optional[float]  # β (K·a for L = 2, c for L = 1)
    s: Optional[float]  # the common singular value t at the global minimiser
    s_nonzero: Optional[float]  # the nonzero local minimiser's t, if it exists
    objective_nonzero: Optional[float]  # φ there (above β_c: a local minimum's value)
    rho_H: Optional[tuple]  # H̄_lᵀH̄_l = ρ_l·I for l = 1 … L (ReLU: H1 not determined, None)
    rho_W: Optional[float]  # W_L W_Lᵀ = ρ_W·I


def layered(hyper, sizes, depth=2, activation="linear"):
    """The deep linear closed form at depth L = `depth` for any counts (Theorem 4.1 at L = 2);
    for ReLU the DNC value, which is the optimum for L ≤ 2 (Theorem 4.2, assuming
    ‖W1H1‖_* = ‖σ(W1H1)‖_*) or K = 2, and an upper bound otherwise."""
    L, M, K, counts = depth, depth + 1, sizes.K, sizes.counts
    N = sum(counts)
    lam_H1 = float(hyper["lam_H1"])
    lam_Ws = [float(hyper[f"lam_W{layer}"]) for layer in range(1, L + 1)]
    lam_bar = (lam_H1 * math.prod(lam_Ws)) ** (1.0 / M)
    betas = [N * lam_bar * n_k ** (1.0 / M - 1.0) for n_k in counts]
    t_nz = [nonzero_stationary(b, M) for b in betas]
    t = [tn if tn is not None and phi(tn, b, M) < 0.5 else 0.0 for tn, b in zip(t_nz, betas)]
    values = [phi(tk, b, M) if tk > 0 else 0.5 for tk, b in zip(t, betas)]
    objective = sum(n_k / N * v for n_k, v in zip(counts, values))
    fit = tuple(tk > 0 for tk in t)
    r = sum(fit)
    structure = "OF" if r == K else "zero" if r == 0 else f"OF on {r} of {K} classes"
    exact = activation == "linear" or L <= 2 or K == 2
    balanced = dict(Ka=None, s=None, s_nonzero=None, objective_nonzero=None, rho_H=None,
                    rho_W=None)
    if sizes.balanced:
        n = sizes.n
        # Balanced factors: λ_X·σ_X² = λ̄·(√n·t)^(2/M) for every factor X (AM–GM); Grams multiply.
        unit = lam_bar * (math.sqrt(n) * t[0]) ** (2.0 / M) if t[0] > 0 else 0.0
        rho = [unit / (n * lam_H1)]
        for lam in lam_Ws[:-1]:
            rho.append(rho[-1] * unit / lam)
        if activation == "relu":
            rho[0] = None  # H1's Gram lies anywhere between an OF and an ETF (docs/theory.md)
        balanced = dict(Ka=betas[0], s=t[0], s_nonzero=t_nz[0],
                        objective_nonzero=None if t_nz[0] is None else phi(t_nz[0], betas[0], M),
                        rho_H=tuple(rho), rho_W=unit / lam_Ws[-1])
    return LayeredPrediction(objective=objective, structure=structure, depth=L, lam_bar=lam_bar,
                             beta=tuple(betas), t=tuple(t), fit=fit, threshold=beta_c(M),
                             local_limit=beta_max(M), exact=exact, activation=activation,
                             **balanced)


def layered_rank_objectives(prediction, K):
    """Objective of the balanced critical point with r nonzero singular values, r = 0 … K  [K+1].

    Each singular direction is a separate scalar problem, so with the nonzero local minimiser on
    r directions and zero on the rest f_r = (r·φ(t_nonzero) + (K − r)/2)/K. For M ≥ 3 factors
    these are local minima; gradient descent can end at any of them, and this names which one it
    reached. (For M = 2 the ones with r < K are saddles.)
    """
    f_zero = 0.5
    if prediction.objective_nonzero is None:
        return [f_zero] * (K + 1)
    return [(r * prediction.objective_nonzero + (K - r) * f_zero) / K for r in range(K + 1)]


class DeepCrossEntropyPrediction(NamedTuple):
    """Reference solutions of the deep linear cross-entropy UFM (Garrod & Keating 2025), balanced
    classes: deep neural collapse, the low-rank solution (K even) and zero; each a 1-D problem
    after balancing the M = L + 1 factors (penalty (M/2)·λ̄·Σ_j σ_j(Z)^(2/M))."""

    objective: float  # the lowest of the references
    structure: str  # which one: 'dnc', 'low-rank' or 'zero'
    depth: int
    lam_bar: float  # λ̄ = (λ_H1·Π λ_Wl)^(1/M)
    dnc: float  # f_DNC = min_α log(1 + (K−1)e^(−α)) + (M/2)λ̄(K−1)(α√n)^(2/M)
    dnc_alpha: float  # its α: class-mean logits α·P
    low_rank: Optional[float]  # f_LR (K even): min_β log(1 + e^(−2β) + (K−2)e^(−β)) + (M/2)λ̄(K/2)(2β√n)^(2/M)
    low_rank_beta: Optional[float]  # its β: K/2 blocks β[[1, −1], [−1, 1]]
    zero: float  # log K
    exact: bool  # L = 1: DNC is the optimum (Zhu et al. 2021); deeper: references only
    triangular: Optional[float] = None  # K = C(r, 2): the tight frame of T(r), rank r − 1 (§6.5)


# A tie between references means they are the same point (a 1-D minimum at 0 is the zero
# solution): name the simplest.
CE_PREFERENCE = ("zero", "dnc", "low-rank", "triangular")


def _min_on_ray(fn, hi):
    """min over x ∈ [0, hi] of a 1-D function: a log-spaced grid, then Brent's method on the
    bracket around the best grid point. Returns (x*, f(x*))."""
    from scipy.optimize import minimize_scalar

    grid = np.concatenate([[0.0], np.logspace(-8, math.log10(hi), 4000)])
    vals = np.array([fn(x) for x in grid])
    i = int(np.argmin(vals))
    if i == 0:
        return 0.0, float(vals[0])
    lo, up = grid[i - 1], grid[min(i + 1, len(grid) - 1)]
    res = minimize_scalar(fn, bounds=(lo, up), method="bounded",
                          options={"xatol": 1e-14 * max(1.0, up)})
    x, f = (float(res.x), float(res.fun)) if res.fun <= vals[i] else (grid[i], float(vals[i]))
    return x, f


def deep_cross_entropy(hyper, sizes, depth):
    """The references of the deep linear CE UFM at depth L (balanced classes, docs/theory.md).

    For small λ, f_LR < f_DNC iff (K/2)·2^(2/M) < K − 1: K ≥ 6 at L = 2, K ≥ 4 at L ≥ 3.
    """
    K, n, L, M = sizes.K, sizes.n, depth, depth + 1
    lam_bar = (float(hyper["lam_H1"]) * math.prod(
        float(hyper[f"lam_W{layer}"]) for layer in range(1, L + 1))) ** (1.0 / M)
    log_K = math.log(K)
    pen = lambda scale: M / 2 * lam_bar * scale ** (2.0 / M)
    # f ≥ the penalty, and f(0) = log K: the minimiser lies where the penalty is below log K
    reach = lambda count, factor: (log_K / (M / 2 * lam_bar * count)) ** (M / 2) / (factor * math.sqrt(n))
    f_dnc = lambda a: math.log1p((K - 1) * math.exp(-a)) + (K - 1) * pen(a * math.sqrt(n))
    alpha, dnc = _min_on_ray(f_dnc, min(reach(K - 1, 1.0), 1e4))
    low_rank = beta = None
    if K % 2 == 0:
        f_lr = lambda b: (math.log1p(math.exp(-2 * b) + (K - 2) * math.exp(-b))
                          + K / 2 * pen(2 * b * math.sqrt(n)))
        beta, low_rank = _min_on_ray(f_lr, min(reach(K / 2, 2.0), 1e4))
    r = triangular_rank(K)
    triangular = None
    if r is not None and r >= 5:  # T(3) is DNC's simplex, T(4) the low-rank blocks' octahedron
        triangular = deep_ce_construction(triangular_shape(r), hyper, sizes, L).objective
    refs = {"dnc": dnc, "low-rank": low_rank, "zero": log_K, "triangular": triangular}
    best = min((v, CE_PREFERENCE.index(k), k) for k, v in refs.items() if v is not None)[::2]
    return DeepCrossEntropyPrediction(objective=best[0], structure=best[1], depth=L,
                                      lam_bar=lam_bar, dnc=dnc, dnc_alpha=alpha,
                                      low_rank=low_rank, low_rank_beta=beta, zero=log_K,
                                      exact=L == 1, triangular=triangular)


def bias_free_minimiser(hyper, sizes, seed=0):
    """A minimiser of the balanced bias-free MSE UFM (Theorem 3.1): W = a·R with R a random row
    frame (R Rᵀ = I_K, from `seed`), a² = x/s_H, and h_(k,i) = s_H·w_k; every other minimiser is
    its rotation WQ, QᵀH. {"W": [K, d], "H": [d, N]} (float64 numpy); needs d ≥ K."""
    K, n, d = sizes.K, sizes.n, sizes.d
    x = plain(hyper, sizes, None).x
    s_H = math.sqrt(float(hyper["lam_W"]) / (n * float(hyper["lam_H"])))
    R = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, K)))[0].T
    W = math.sqrt(x / s_H) * R
    return {"W": W, "H": s_H * np.repeat(W.T, n, axis=1)}


def bias_free_hessian(hyper, sizes):
    """The whole Hessian spectrum of the balanced bias-free MSE UFM at its nonzero optimum
    (c < 1), as [(eigenvalue, multiplicity)] on the orthogonal complement of the symmetry orbit
    (docs/theory.md §6.4, derived there): with c = K√(nλ_Wλ_H), x = 1 − c, s_H = √(λ_W/(nλ_H)),
    a² = x/s_H (W = a·R, R Rᵀ = I_K), β = s_H·a (h_(k,i) = β·r_k), N = Kn:

      λ_H                      K(n − 1)(d − K)   within-class moves outside W's row space
      λ_H + a²/N               K²(n − 1)         within-class moves inside it
      λ_W + λ_H                K(d − K)          class means and classifier leaving it together
      eig [[A, √n(1 − 2c)/N], [·, B]]   each K(K + 1)/2   the symmetric class-pair blocks
      A + B                    K(K − 1)/2        the antisymmetric ones (their other root is 0: a
                                                 rotation of the orbit)
    with A = nβ²/N + λ_W and B = a²/N + λ_H; the orbit adds K(d − K) + K(K − 1)/2 zeros."""
    K, n, d = sizes.K, sizes.n, sizes.d
    lam_W, lam_H = float(hyper["lam_W"]), float(hyper["lam_H"])
    c = K * math.sqrt(n * lam_W * lam_H)
    if not sizes.balanced or c >= 1 or d < K:
        return None
    N = K * n
    s_H = math.sqrt(lam_W / (n * lam_H))
    a2 = (1 - c) / s_H
    beta2 = s_H * s_H * a2
    A, B = n * beta2 / N + lam_W, a2 / N + lam_H
    off = math.sqrt(n) * (1 - 2 * c) / N
    mid, half = (A + B) / 2, math.sqrt(((A - B) / 2) ** 2 + off ** 2)
    out = [(lam_H, K * (n - 1) * (d - K)), (lam_H + a2 / N, K * K * (n - 1)),
           (lam_W + lam_H, K * (d - K)), (mid - half, K * (K + 1) // 2),
           (mid + half, K * (K + 1) // 2), (A + B, K * (K - 1) // 2)]
    return sorted((v, m) for v, m in out if m > 0)


class Construction(NamedTuple):
    """A structured solution of a deep linear UFM: class-mean logits α·S for a fixed shape S
    [K, K], with its exact objective minimised over the free scale α (docs/theory.md §6.5)."""

    name: str
    objective: float
    alpha: float
    shape: np.ndarray  # S [K, K]: column k, the logits of class k's mean at α = 1
    rank: int  # rank of S


def ce_shape_objective(S, alpha, n, lam_bar, M):
    """f(α·S) of the deep linear CE UFM with balanced factors: (1/K)·Σ_k log Σ_j e^(α(S_jk − S_kk))
    + (M/2)·λ̄·Σ_i (α√n·σ_i(S))^(2/M) — the DNC and low-rank references are S = P and the blocks."""
    sigma = np.linalg.svd(np.asarray(S, np.float64), compute_uv=False)
    sigma = sigma[sigma > 1e-12 * sigma[0]]
    Z = alpha * np.asarray(S, np.float64)
    margins = Z - np.diag(Z)[None, :]
    top = margins.max(axis=0)
    with np.errstate(under="ignore"):  # e^(−large) → 0 is exact enough in a log-sum-exp
        ce = np.mean(top + np.log(np.sum(np.exp(margins - top), axis=0)))
    return float(ce + M / 2 * lam_bar * np.sum((alpha * math.sqrt(n) * sigma) ** (2.0 / M)))


def triangular_shape(r):
    """S [K, K], K = C(r, 2): the Gram matrix of u_ab = e_a + e_b − (2/r)·1 over pairs a < b of
    r coordinates (the triangular graph T(r), a strongly regular graph). Centred rank r − 1 with
    equal singular values r − 2: a tight frame of K classes in r − 1 dimensions."""
    if r < 3:
        raise ValueError(f"r must be >= 3 (K = C(r, 2) >= 3 classes), got {r}")
    pairs = [(a, b) for a in range(r) for b in range(a + 1, r)]
    U = np.array([[(i in pair) for i in range(r)] for pair in pairs], np.float64) - 2.0 / r
    return U @ U.T


def triangular_rank(K):
    """r with C(r, 2) = K, or None."""
    r = int(round((1 + math.sqrt(1 + 8 * K)) / 2))
    return r if r * (r - 1) // 2 == K else None


def deep_ce_construction(S, hyper, sizes, depth, name="shape"):
    """The construction α·S of the deep linear CE UFM at depth L, α minimised (balanced classes)."""
    n, M = sizes.n, depth + 1
    lam_bar = (float(hyper["lam_H1"]) * math.prod(
        float(hyper[f"lam_W{layer}"]) for layer in range(1, depth + 1))) ** (1.0 / M)
    fn = lambda a: ce_shape_objective(S, a, n, lam_bar, M)
    alpha, value = _min_on_ray(fn, 1e3)
    rank = int(np.linalg.matrix_rank(np.asarray(S, np.float64)))
    return Construction(name, value, alpha, np.asarray(S, np.float64), rank)


def balanced_factors(Zbar, hyper, sizes, depth):
    """Parameters H1 [d, N], W1 … W_L of a deep linear UFM whose product is Zbar ⊗ 1ᵀ [K, N], with
    the factors balanced for the λ's (factor l carries σ^(1/M)·√(λ̄/λ_l) of each singular value σ
    of the product: the minimum of Σ_l λ_l/2‖F_l‖² at that product). Needs d ≥ rank(Zbar)."""
    K, n, d, M = sizes.K, sizes.n, sizes.d, depth + 1
    Z = np.kron(np.asarray(Zbar, np.float64), np.ones((1, n)))
    U, sig, Vt = np.linalg.svd(Z, full_matrices=False)
    rho = int(np.sum(sig > 1e-12 * sig[0]))
    if rho > d:
        raise ValueError(f"d = {d} is below the construction's rank {rho}")
    lams = [float(hyper["lam_H1"])] + [float(hyper[f"lam_W{layer}"])
                                       for layer in range(1, depth + 1)]
    lam_bar = math.prod(lams) ** (1.0 / M)
    root = sig[:rho] ** (1.0 / M)
    scale = [math.sqrt(lam_bar / lam) for lam in lams]
    params = {"H1": np.zeros((d, sizes.N))}
    params["H1"][:rho] = (root * scale[0])[:, None] * Vt[:rho]
    for layer in range(1, depth):
        W = np.zeros((d, d))
        W[:rho, :rho] = np.diag(root * scale[layer])
        params[f"W{layer}"] = W
    last = np.zeros((K, d))
    last[:, :rho] = U[:, :rho] * (root * scale[depth])[None, :]
    params[f"W{depth}"] = last
    return params


def ce_shapes(K):
    """The deep linear CE constructions defined at K classes: {name: S [K, K]}: DNC (S = P), the
    low-rank blocks (K even: K/2 blocks [[1, −1], [−1, 1]]) and the triangular tight frame
    (K = C(r, 2))."""
    shapes = {"dnc": np.eye(K) - np.ones((K, K)) / K}
    if K % 2 == 0:
        shapes["low-rank"] = np.kron(np.eye(K // 2), np.array([[1.0, -1.0], [-1.0, 1.0]]))
    r = triangular_rank(K)
    if r is not None and r >= 5:  # T(3) is DNC's simplex, T(4) the blocks' octahedron
        shapes["triangular"] = triangular_shape(r)
    return shapes


def deep_ce_constructions(hyper, sizes, depth):
    """{name: Construction} of every shape of `ce_shapes` at these λ's, sizes and depth."""
    return {name: deep_ce_construction(S, hyper, sizes, depth, name)
            for name, S in ce_shapes(sizes.K).items()}


def deep_linear_dnc(hyper, sizes, depth):
    """Parameters of the deep linear MSE UFM at its DNC optimum (balanced, every class fit: the
    class-mean outputs t·I of `layered`, balanced factors); needs d ≥ K."""
    t = layered(hyper, sizes, depth).t[0]
    return balanced_factors(t * np.eye(sizes.K), hyper, sizes, depth)


def deep_linear_hessian(hyper, sizes, depth):
    """The whole Hessian spectrum of the balanced deep linear MSE UFM (depth L, M = L + 1 factors
    F_1 = H_1, F_2 = W_1, …, F_M = W_L) at its DNC optimum, as [(eigenvalue, multiplicity)] on the
    orthogonal complement of the symmetry orbit (docs/theory.md §6.4, derived there; Garrod &
    Keating's outliers and mini-bulk, every eigenvalue). With the factors x_l·(partial isometry)
    (x_l = (t√n)^(1/M)·√(λ̄/λ_l)), ρ = 1 − t, X_l = Π_(j≠l) x_j, Y_lm = Π_(j≠l,m) x_j, N = Kn:

      eig H₊ = XXᵀ/N − (ρ√n/N)·Y° + diag λ   each K(K + 1)/2   the factors' K×K in-frame blocks,
      eig H₋ = XXᵀ/N + (ρ√n/N)·Y° + diag λ   each K(K − 1)/2   symmetric and antisymmetric parts
                                                            (H₋ has L zeros: the orbit)
      eig [[λ_l, −ρ√n·Y_(l,l+1)/N], [·, λ_(l+1)]]   each K(d − K)   interface l leaving the frame
                                                    (one root 0: the orbit)
      λ_H1 + X_1²/N   K(N − K);   λ_H1   (d − K)(N − K)   within-class moves of H_1
      λ_l   (d − K)² for each W_l of the middle (l = 2 … M − 1)

    (Y° the symmetric M×M matrix of the Y_lm off the diagonal.) None where DNC is not the optimum
    with every class fit (an unbalanced count, d < K, or a class at zero)."""
    pred = layered(hyper, sizes, depth)
    K, n, d, M = sizes.K, sizes.n, sizes.d, depth + 1
    if not sizes.balanced or d < K or not all(pred.fit):
        return None
    N, t = K * n, pred.t[0]
    lams, _, X, Y = _factor_scalars(t * math.sqrt(n), hyper, depth)
    coupling = (1.0 - t) * math.sqrt(n) / N
    out = []
    for sign, mult in ((-1.0, K * (K + 1) // 2), (1.0, K * (K - 1) // 2)):
        block = np.outer(X, X) / N + sign * coupling * Y + np.diag(lams)
        out += [(v, mult) for v in np.linalg.eigvalsh(block)]
    out += _interfaces(lams, Y, coupling, K * (d - K))
    out += [(lams[0] + X[0] ** 2 / N, K * (N - K)), (lams[0], (d - K) * (N - K))]
    out += [(lam, (d - K) ** 2) for lam in lams[1:M - 1]]
    # the orbit: L zeros of H₋ per antisymmetric position, one root per interface pair
    return _spectrum(out, (M - 1) * (K * (K - 1) // 2 + K * (d - K)))


def _spectrum(blocks, orbit):
    """[(eigenvalue, multiplicity)] of a Hessian given as (eigenvalue, multiplicity) blocks, with
    the `orbit` eigenvalues nearest 0 (the symmetry directions) removed; equal eigenvalues (to
    rounding) grouped."""
    values = np.concatenate([[v] * m for v, m in blocks if m > 0])
    kept = np.sort(values[np.argsort(np.abs(values))[orbit:]])
    groups = []
    for v in kept:
        if groups and abs(v - groups[-1][0]) <= 1e-12 * max(1.0, abs(v)):
            groups[-1][1] += 1
        else:
            groups.append([float(v), 1])
    return [(v, m) for v, m in groups]


def _factor_scalars(singular, hyper, depth):
    """(λ_l, x_l, X_l = Π_(j≠l) x_j, Y_lm = Π_(j≠l,m) x_j with a zero diagonal) of balanced
    factors F_1 = H_1, F_2 = W_1, …, F_M = W_L whose product has every singular value `singular`."""
    M = depth + 1
    lams = [float(hyper["lam_H1"])] + [float(hyper[f"lam_W{layer}"])
                                       for layer in range(1, depth + 1)]
    lam_bar = math.prod(lams) ** (1.0 / M)
    x = np.array([singular ** (1.0 / M) * math.sqrt(lam_bar / lam) for lam in lams])
    total = float(np.prod(x))
    Y = total / np.outer(x, x)
    np.fill_diagonal(Y, 0.0)
    return lams, x, total / x, Y


def _interfaces(lams, Y, coupling, copies):
    """The leaving pairs (b_(l+1), c_l) of each interface: [[λ_l, −c·Y_(l,l+1)], [·, λ_(l+1)]]."""
    out = []
    for l in range(len(lams) - 1):
        c = coupling * Y[l, l + 1]
        mid, half = (lams[l] + lams[l + 1]) / 2, math.hypot((lams[l] - lams[l + 1]) / 2, c)
        out += [(mid - half, copies), (mid + half, copies)]
    return out


def deep_ce_hessian(hyper, sizes, depth):
    """The whole Hessian spectrum of the balanced deep linear cross-entropy UFM at DNC (the
    construction S = P at its best scale α, `deep_ce_constructions`), as [(eigenvalue,
    multiplicity)] on the orthogonal complement of the symmetry orbit (docs/theory.md §6.4,
    derived there). As for MSE (`deep_linear_hessian`) with frames of dimension r = K − 1, the
    residual replaced by the softmax's (G = −Kq·P: coupling Kq√n/N) and the squared error's unit
    curvature by the softmax's, q·I + κ·e_k e_kᵀ on a class-k sample's logits (p = e^α/(e^α + K − 1),
    q = (1 − p)/(K − 1), κ = (p − q)(1 − p + q)); its e_k e_kᵀ part reaches the in-frame blocks only
    through their diagonals, which splits the symmetric sector by the eigenvalues τ of
    B ↦ P·diag(B)·P: τ = 0 (K(K − 1)/2 − K), 1 − 1/K (once, B = P) and 1 − 2/K (K − 1 times, each
    coupled to H_1's move of every sample alike along one frame direction). None where the
    construction does not apply (unbalanced counts, d < K − 1)."""
    K, n, d, M = sizes.K, sizes.n, sizes.d, depth + 1
    if not sizes.balanced or d < K - 1 or K < 3:
        return None
    N, r = K * n, K - 1
    alpha = deep_ce_constructions(hyper, sizes, depth)["dnc"].alpha
    lams, _, X, Y = _factor_scalars(alpha * math.sqrt(n), hyper, depth)
    with np.errstate(over="ignore"):
        q = 1.0 / (math.exp(min(alpha, 700.0)) + K - 1)
    p = 1.0 - (K - 1) * q
    kappa = (p - q) * (1.0 - p + q)
    coupling = K * q * math.sqrt(n) / N
    D = np.diag(lams)

    def frame_block(curvature, sign):  # the in-frame M×M block of one position
        return curvature * np.outer(X, X) / N + sign * coupling * Y + D

    out = [(v, K * (K - 1) // 2 - K) for v in np.linalg.eigvalsh(frame_block(q, -1.0))]
    out += [(v, 1) for v in np.linalg.eigvalsh(frame_block(q + kappa * (1 - 1 / K), -1.0))]
    coupled = np.zeros((M + 1, M + 1))  # τ = 1 − 2/K with H_1's common move along the frame
    coupled[:M, :M] = frame_block(q + kappa * (1 - 2 / K), -1.0)
    coupled[M, M] = lams[0] + X[0] ** 2 * (q + kappa / K) / N
    coupled[:M, M] = coupled[M, :M] = kappa / N * math.sqrt((1 - 2 / K) / K) * X[0] * X
    out += [(v, K - 1) for v in np.linalg.eigvalsh(coupled)]
    out += [(v, (K - 1) * (K - 2) // 2) for v in np.linalg.eigvalsh(frame_block(q, 1.0))]
    out += _interfaces(lams, Y, coupling, r * (d - r))
    out += [(lams[0] + X[0] ** 2 * q / N, K * (n - 1) * (K - 2)),  # within-class, in the frame
            (lams[0] + X[0] ** 2 * (q + kappa * (1 - 1 / K)) / N, K * (n - 1)),
            (lams[0], (d - r) * (N - r))]
    out += [(lam, (d - r) ** 2) for lam in lams[1:M - 1]]
    out += [(lams[-1], d)]  # W_L's rows along 1: every logit moved alike, CE does not see it
    return _spectrum(out, (M - 1) * (r * (r - 1) // 2 + r * (d - r)))


# --- the deep ReLU MSE model: the triangular (strongly-regular-graph) construction -------------

def incidence(r):
    """A [r, K], K = C(r, 2): column ab is e_a + e_b (pairs a < b of r vertices)."""
    pairs = [(a, b) for a in range(r) for b in range(a + 1, r)]
    return np.array([[i in pair for pair in pairs] for i in range(r)], np.float64)


def srg_preactivation(r):
    """M = Aᵀ(I − 11ᵀ/4)A [K, K]: M_{ab,cd} = |{a,b} ∩ {c,d}| − 1, so ReLU(M) = I_K — an
    orthogonal frame from a pre-activation of rank r (r − 1 at r = 4; eigenvalues r − 2 on the
    r − 1 dimensions of A's rows orthogonal to 1, (4 − r)(r − 1)/2 on 1, 0 on the K − r of the
    triangular graph's last eigenspace) instead of K."""
    A = incidence(r)
    return A.T @ (np.eye(r) - np.ones((r, r)) / 4) @ A


class ReluConstruction(NamedTuple):
    """The triangular construction of the deep ReLU MSE UFM (docs/theory.md §6.6) at its best free
    scalars: levels H_2 … H_(L−1) with class means X_l = [u_l·A; v_l·1ᵀ] (non-negative, rank r),
    Z_L = s·M so that H_L = ReLU(Z_L) = s·I, W_L = w·I; H1, W1 balanced for X_2 (L = 2: for s·M)
    and every other W_l the least-norm map between its levels."""

    name: str
    objective: float
    theta: np.ndarray  # (log u_l, √v_l) for l = 2 … L−1, then log s, log w
    r: int
    rank: int  # of the last pre-activation's class means


def _srg_levels(theta, A, depth):
    K = A.shape[1]
    return [np.vstack([math.exp(theta[2 * i]) * A, theta[2 * i + 1] ** 2 * np.ones((1, K))])
            for i in range(depth - 2)]


def srg_objective(theta, r, lams, n):
    """The deep ReLU MSE objective at the triangular construction with scalars θ, exactly:
    (ws − 1)²/2 + √(λ_H1λ_W1)·√n·‖X_2‖_* + Σ_l λ_Wl/2‖X_(l+1)X_l⁺‖² + λ_W(L−1)/2·s²‖M X_(L−1)⁺‖²
    + λ_WL/2·w²K (L = 2: the nuclear norm of s·M and no middle). lams = (λ_H1, λ_W1, …, λ_WL)."""
    depth = len(lams) - 1
    A, M = incidence(r), srg_preactivation(r)
    K = A.shape[1]
    s, w = math.exp(theta[-2]), math.exp(theta[-1])
    value = (w * s - 1.0) ** 2 / 2 + lams[depth] / 2 * w * w * K
    bottom_weight = math.sqrt(lams[0] * lams[1] * n)
    if depth == 2:
        return value + bottom_weight * s * float(np.abs(np.linalg.eigvalsh(M)).sum())
    X = _srg_levels(theta, A, depth)
    value += bottom_weight * float(np.linalg.svd(X[0], compute_uv=False).sum())
    for i in range(len(X) - 1):  # W_(i+2): level i+2 to level i+3
        value += lams[i + 2] / 2 * float(np.sum((X[i + 1] @ np.linalg.pinv(X[i])) ** 2))
    return value + lams[depth - 1] / 2 * s * s * float(np.sum((M @ np.linalg.pinv(X[-1])) ** 2))


def deep_relu_srg(hyper, sizes, depth, starts=8):
    """The triangular construction at K = C(r, 2) classes (r ≥ 4), depth L ≥ 2, balanced counts:
    `srg_objective` minimised over its 2(L − 2) + 2 scalars (BFGS from `starts` seeded starts —
    the minimum over the scalars is not certified global, only the best found)."""
    from scipy import optimize

    r = triangular_rank(sizes.K)
    if r is None or r < 4:
        raise ValueError(f"the triangular construction needs K = C(r, 2) classes with r >= 4 "
                         f"(6, 10, 15, 21, …), got K = {sizes.K}")
    if not sizes.balanced:
        raise ValueError("the triangular construction is for balanced classes (one --n)")
    lams = [float(hyper["lam_H1"])] + [float(hyper[f"lam_W{layer}"])
                                       for layer in range(1, depth + 1)]
    rng = np.random.default_rng(0)
    best = None
    for _ in range(starts):  # a few seeded starts of a smooth problem in ≤ 2L scalars
        found = optimize.minimize(srg_objective, 0.5 * rng.normal(size=2 * (depth - 2) + 2),
                                  args=(r, lams, sizes.n), method="BFGS", options={"gtol": 1e-10})
        if best is None or found.fun < best.fun:
            best = found
    rank = int(np.linalg.matrix_rank(srg_preactivation(r)))
    return ReluConstruction("srg", float(best.fun), np.asarray(best.x), r, rank)


def srg_params(construction, hyper, sizes, depth):
    """Parameters of the deep ReLU MSE model at the construction (`deep_relu_srg`); needs
    d ≥ K (the last level is s·I)."""
    K, n, d, r = sizes.K, sizes.n, sizes.d, construction.r
    if d < K:
        raise ValueError(f"the triangular construction needs d >= K = {K} (its last level is an "
                         f"orthogonal frame), got d = {d}")
    theta, A, M = construction.theta, incidence(r), srg_preactivation(r)
    s, w = math.exp(theta[-2]), math.exp(theta[-1])
    X = _srg_levels(theta, A, depth)
    bottom = np.kron(s * M if depth == 2 else X[0], np.ones((1, n)))  # W1·H1, [rows, N]
    U, sig, Vt = np.linalg.svd(bottom, full_matrices=False)
    rho = int(np.sum(sig > 1e-12 * sig[0]))
    c = (float(hyper["lam_H1"]) / float(hyper["lam_W1"])) ** 0.25  # λ_H1‖H1‖² = λ_W1‖W1‖²
    params = {"H1": np.zeros((d, sizes.N)), "W1": np.zeros((d, d))}
    params["H1"][:rho] = (np.sqrt(sig[:rho]) / c)[:, None] * Vt[:rho]
    params["W1"][:bottom.shape[0], :rho] = U[:, :rho] * (np.sqrt(sig[:rho]) * c)[None, :]
    maps = [X[i + 1] @ np.linalg.pinv(X[i]) for i in range(len(X) - 1)]
    if depth >= 3:
        maps.append(s * M @ np.linalg.pinv(X[-1]))
    for layer, block in enumerate(maps, start=2):
        W = np.zeros((d, d))
        W[:block.shape[0], :block.shape[1]] = block
        params[f"W{layer}"] = W
    last = np.zeros((K, d))
    last[:, :K] = w * np.eye(K)
    params[f"W{depth}"] = last
    return params


class PerturbedPrediction(NamedTuple):
    """Theorem 5.1: the n → ∞ limit of the optimal W for fixed features H̄*⊗1ᵀ + E."""

    kappa: float  # attenuation (ρ + Kλ_W)/(ρ + K(λ_W + σ²))
    W_star: np.ndarray  # H̄*ᵀ/(ρ + Kλ_W)  [K, d], the optimum for collapsed features
    W_limit: np.ndarray  # κ·W*  [K, d]


def optimal_classifier(H, Y, lam_W):
    """W(H) = Y Hᵀ (H Hᵀ + N λ_W I)⁻¹ — the minimiser over W of the bias-free objective for fixed
    H [d, N] (docs/theory.md §3.6); Y [K, N]."""
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
    """Fixed classifier with ‖h‖² ≤ E_H (docs/theory.md §3.9): every h_{k,i} = √E_H·c_k, for any counts.

    For the layer-peeled model (learnable W, ‖w_k‖² ≤ E_W) only with balanced classes: W a simplex
    ETF of norm √E_W and h_{k,i} = √E_H·w_k/‖w_k‖.
    """

    objective: float  # Σ_k α_k Σ_i ℓ*  (no sessions)
    structure: str  # 'prototypes' (fixed classifier) or 'ETF' (layer-peeled model)
    loss_per_sample: float  # ℓ* at the optimum
    feature_norm: float  # √E_H
    margin: float  # logit of the true class minus any other at the optimum


def prototypes(hyper, sizes, frame, loss="ce", alpha="none"):
    """Closed form of the fixed-ETF / fixed-orthogonal / layer-peeled models (docs/theory.md §3.9), or None
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


def optimum(prediction):
    """The closed-form optimal value of a prediction, or None where there is none (no prediction,
    or one whose value is a reference rather than the proven optimum: `exact` False)."""
    if prediction is None or not getattr(prediction, "exact", True):
        return None
    return prediction.objective


LANDING_TOL = 1e-6  # relative gap within which a run counts as having reached a reference


def landing(prediction, objective, tol=LANDING_TOL):
    """Where a run with final `objective` landed against the references of a prediction, as a
    JSON-ready dict, or None for predictions that are the optimum itself.

    Deep linear CE: `reached` ('dnc', 'low-rank', 'zero', 'triangular' — the reference within a
    relative `tol`
    — or 'other'), `excess` = f − (the lowest reference) and each reference's relative gap.
    ReLU at any depth (the DNC value: the optimum by Theorem 4.2 at L ≤ 2, where a run below it
    would be a counterexample; a reference deeper): `dnc`, `below_dnc` (f below it by more than
    `tol`, relative) and `dnc_gap` = (f − f_DNC)/f_DNC.
    """
    if prediction is None or not math.isfinite(objective):
        return None
    if isinstance(prediction, DeepCrossEntropyPrediction):
        refs = {"dnc": prediction.dnc, "low-rank": prediction.low_rank, "zero": prediction.zero,
                "triangular": prediction.triangular}
        gaps = {k: (objective - v) / abs(v) for k, v in refs.items() if v is not None}
        closest = min(gaps, key=lambda k: (abs(gaps[k]), CE_PREFERENCE.index(k)))
        return {"reached": closest if abs(gaps[closest]) <= tol else "other",
                "excess": objective - prediction.objective, "gaps": gaps}
    if isinstance(prediction, LayeredPrediction) and prediction.activation == "relu":
        gap = (objective - prediction.objective) / prediction.objective
        return {"dnc": prediction.objective, "below_dnc": bool(gap < -tol), "dnc_gap": gap}
    return None
