"""Neural-collapse measurements (docs/theory.md §4), pure functions of arrays.

Layout: features H [d, N] are class-major (the samples of class 0, then of class 1, …); classifier
W [K, d]. `classes` (the argument named K) is either the number of classes K, for balanced classes
of N/K samples each, or the tuple of per-class counts (n_1, …, n_K). Class means are unweighted
over classes (Σ_B = M̄M̄ᵀ/K, h̄_G = mean of the class means); Σ_W averages over all N samples. Every
function works in float32 and float64 alike.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ufm import linalg
from ufm.conventions import RANK_TOL
from ufm.geometry import centering, etf_distance, of_distance




def shifted_logsumexp(V):
    """log Σ_j e^(V_j) over axis 0 of V [K, N], without cancellation when one entry dominates:
    m + log1p(expm1(V_a − m) + Σ_(j≠a) e^(V_j − m)) with a the argmax and m = V_a held constant
    (so the value and every derivative are those of the log-sum-exp). With V = z − z_y it is the
    cross-entropy of z at label y as it is, not as lse(z) − z_y: a CE of 1e-10 keeps its digits
    (docs/theory.md §5.1)."""
    m = jax.lax.stop_gradient(jnp.max(V, axis=0))
    a = jax.lax.stop_gradient(jnp.argmax(V, axis=0))
    top = jnp.take_along_axis(V, a[None, :], axis=0)[0]
    rest = jnp.where(jnp.arange(V.shape[0])[:, None] == a[None, :], 0.0, jnp.exp(V - m[None, :]))
    return m + jnp.log1p(jnp.expm1(top - m) + jnp.sum(rest, axis=0))


@jax.custom_jvp
def cross_entropy(logits, targets):
    """Σ_i CE(z_i, t_i) for logits [K, N] and target distributions targets [K, N] (one-hot or
    soft): lse(z − c) − ⟨t, z − c⟩ with c = ⟨t, z⟩, so the second term is 0 and no two numbers
    near each other are subtracted (`shifted_logsumexp`). Its derivative is softmax(z) − t with
    the same care (`softmax_minus`): through c, automatic differentiation would take it as
    p_y − (p_y + Σ_(j≠y) p_j) and lose the small sum's digits."""
    c = jnp.sum(targets * logits, axis=0)
    return jnp.sum(shifted_logsumexp(logits - c[None, :]))


def softmax_minus(logits, targets):
    """softmax(z) − t [K, N] per column, without cancellation where a target entry is near 1 (at
    most one per column): there p − t = (1 − t) − Σ_(i≠j) p_i, a sum of small numbers."""
    P = jax.nn.softmax(logits, axis=0)
    K = logits.shape[0]
    others = (jnp.ones((K, K), P.dtype) - jnp.eye(K, dtype=P.dtype)) @ P
    return jnp.where(targets > 0.5, (1.0 - targets) - others, P - targets)


@cross_entropy.defjvp
def _cross_entropy_jvp(primals, tangents):
    logits, targets = primals
    d_logits, d_targets = tangents
    value = cross_entropy(logits, targets)
    slope = jnp.sum(softmax_minus(logits, targets) * d_logits) - jnp.sum(logits * d_targets)
    return value, slope


def nuclear_norm(A):
    """‖A‖_* = Σ singular values."""
    return jnp.sum(linalg.singular_values(A))


def numerical_rank(A, rtol=RANK_TOL):
    """The number of singular values of A above rtol × the largest (0 for A = 0)  [] int."""
    s = linalg.singular_values(A)
    return jnp.sum(s > rtol * s[0]).astype(jnp.int32)


def num_classes(classes):
    """K from `classes` (K itself, or the tuple of per-class counts)."""
    return len(classes) if isinstance(classes, (tuple, list)) else int(classes)


def class_labels(classes, N):
    """The class of every column [N] (numpy, static)."""
    counts = classes if isinstance(classes, (tuple, list)) else (N // classes,) * classes
    return np.repeat(np.arange(len(counts)), counts)


def check_features(H, K, name="H"):
    """ValueError unless H is [d, N] class-major features for `K` (the number of classes, ≥ 2,
    dividing N; or per-class counts ≥ 1 summing to N). A transposed H is caught wherever its
    shape disagrees with K (counts, or N not divisible by K); a [N, d] array whose N is a
    multiple of K looks like valid [d, N] features and cannot be told apart."""
    shape = getattr(H, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"{name} must be a 2-D array [d, N] of features (columns are samples, "
                         f"class-major), got shape {shape}")
    d, N = shape
    if d < 1 or N < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {shape}")
    if isinstance(K, (tuple, list)):
        counts = list(K)
        if len(counts) < 2 or any(isinstance(c, bool) or not isinstance(c, (int, np.integer))
                                  or c < 1 for c in counts):
            raise ValueError(f"per-class counts must be >= 2 positive integers, got {tuple(K)}")
        if sum(counts) != N:
            hint = " (transposed? expected [d, N])" if sum(counts) == d else ""
            raise ValueError(f"per-class counts {tuple(K)} sum to {sum(counts)}, but {name} has "
                             f"{N} columns{hint}")
        return
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)):
        raise ValueError(f"K must be the number of classes (an int) or the per-class counts, "
                         f"got {K!r}")
    if K < 2:
        raise ValueError(f"K must be >= 2, got {K}")
    if N % K:
        hint = " (transposed? expected [d, N])" if d % K == 0 else ""
        raise ValueError(f"{name} has {N} columns, not a multiple of K={K}: balanced classes need "
                         f"N = K·n{hint}; pass per-class counts for unequal classes")


def check_classifier(W, H=None, classes=None):
    """ValueError unless W is [K, d] with K ≥ 2 (and d = H's rows, K = the classes' count)."""
    shape = getattr(W, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"W must be a 2-D array [K, d] (one row per class), got shape {shape}")
    if shape[0] < 2 or shape[1] < 1:
        raise ValueError(f"W must have K >= 2 rows (one per class) and d >= 1 columns, got "
                         f"shape {shape}")
    if H is not None:
        if getattr(H, "shape", None) is None or len(H.shape) != 2:
            raise ValueError(f"H must be a 2-D array [d, N], got shape {getattr(H, 'shape', None)}")
        if H.shape[0] != shape[1]:
            hint = " (transposed?)" if H.shape[0] == shape[0] else ""
            raise ValueError(f"W [K, d] has shape {shape} but H [d, N] has {H.shape[0]} rows: "
                             f"d must agree{hint}")
    if classes is not None and num_classes(classes) != shape[0]:
        raise ValueError(f"W has {shape[0]} rows but there are {num_classes(classes)} classes")


def class_means(H, K):
    """H̄ = [h̄_1 … h̄_K]  [d, K] from class-major H [d, N]; K or the per-class counts."""
    check_features(H, K)
    d, N = H.shape
    if not isinstance(K, (tuple, list)):
        return H.reshape(d, K, N // K).mean(axis=-1)
    counts = np.asarray(K)
    labels = class_labels(K, N)
    averaging = (labels[:, None] == np.arange(len(counts))[None, :]) / counts[None, :]  # [N, K]
    return H @ jnp.asarray(averaging, H.dtype)


def centred_means(H, K):
    """M̄ = H̄ − h̄_G 1ᵀ  [d, K]."""
    Hbar = class_means(H, K)
    return Hbar - Hbar.mean(axis=1, keepdims=True)


def within_class_deviations(H, K):
    """h_{k,i} − h̄_k for every column  [d, N]."""
    check_features(H, K)
    d, N = H.shape
    if isinstance(K, (tuple, list)):
        return H - class_means(H, K)[:, class_labels(K, N)]
    Hk = H.reshape(d, K, N // K)
    return (Hk - Hk.mean(axis=-1, keepdims=True)).reshape(d, N)


def nc1(H, K):
    """NC1 = (1/K) tr(Σ_W Σ_B^†)  (Tirer & Bruna eq. 26; Papyan et al. 2020).

    Computed in the (K−1)-dim span of M̄ = U S Vᵀ: with Σ_B = M̄M̄ᵀ/K,
    NC1 = Σ_{j<K} ‖u_jᵀ D‖² / (N s_j²), D the within-class deviations. No d×d pseudo-inverse and no
    subtraction Σ_T − Σ_B, so it is ≥ 0 and accurate in float32 near collapse. Directions whose
    singular value is below s₁·max(d, N)·eps are dropped (the pseudo-inverse cut-off; `ufm
    measure --pinv-rtol` offers others, docs/theory.md §4).

    NaN when no direction is left — all class means at one point, including features that are
    exactly zero or have underflowed to zero (the zero solution) — and for non-finite H: NC1 is a
    ratio of vanishing quantities there, not 0.
    """
    check_features(H, K)
    N = H.shape[1]
    U, s, _ = linalg.svd(centred_means(H, K))
    k = num_classes(K)
    U, s = U[:, : k - 1], s[: k - 1]  # rank(M̄) ≤ K − 1: columns sum to zero
    cutoff = s[0] * max(H.shape) * jnp.finfo(H.dtype).eps
    keep = s > cutoff
    proj = jnp.sum((U.T @ within_class_deviations(H, K)) ** 2, axis=1)
    value = jnp.sum(jnp.where(keep, proj / (N * jnp.where(keep, s, 1.0) ** 2), 0.0))
    return jnp.where(jnp.all(jnp.isfinite(H)) & jnp.any(keep), value, jnp.nan)


def nc2_etf_features(H, K):
    """NC2-ETF of features: distance of the centred-mean Gram M̄ᵀM̄ from a simplex ETF."""
    M = centred_means(H, K)
    return etf_distance(M.T @ M)


def nc2_of_features(H, K):
    """NC2-OF of features: distance of the uncentred-mean Gram H̄ᵀH̄ from an OF."""
    Hbar = class_means(H, K)
    return of_distance(Hbar.T @ Hbar)


def nc2_etf_weights(W):
    """NC2-ETF of the classifier: distance of WWᵀ [K, K] from a simplex ETF."""
    check_classifier(W)
    return etf_distance(W @ W.T)


def nc2_of_weights(W):
    """NC2-OF of the classifier: distance of WWᵀ [K, K] from an OF."""
    check_classifier(W)
    return of_distance(W @ W.T)


def nc3_etf(W, H, classes=None):
    """NC3-ETF: ‖W M̄/‖W M̄‖ − P/√(K−1)‖ (alignment with the centred means)."""
    check_classifier(W, H, classes)
    return etf_distance(W @ centred_means(H, classes or W.shape[0]))


def nc3_of(W, H, classes=None):
    """NC3-OF: ‖W H̄/‖W H̄‖ − I/√K‖ (alignment with the uncentred means)."""
    check_classifier(W, H, classes)
    return of_distance(W @ class_means(H, classes or W.shape[0]))


def nc1_unnormalised(H, K):
    """tr(Σ_W Σ_B^†) without the 1/K; = K·nc1. (Papyan et al. 2020 and tding1's validate_NC.py,
    the code of Zhu et al. 2021, both divide by K, i.e. report `nc1`.)"""
    return num_classes(K) * nc1(H, K)


def _cosines(A):
    """Pairwise cosines of the columns of A [d, K]  [K, K]."""
    norms = jnp.linalg.norm(A, axis=0)
    U = A / jnp.where(norms > 0, norms, 1.0)
    return U.T @ U


def _off_diagonal(C):
    K = C.shape[0]
    return C[~np.eye(K, dtype=bool)]  # K is static: a concrete mask works under jit


def mean_pairwise_cosine(A):
    """Mean over k ≠ k' of cos(a_k, a_k') for the columns of A [m, K]; a zero column counts 0."""
    return jnp.mean(_off_diagonal(_cosines(A)))


def self_duality(W, H, classes=None):
    """‖Wᵀ/‖W‖ − M̄/‖M̄‖‖²  (Papyan et al. 2020, NC3 'convergence to self-duality'); NaN when W or
    M̄ is zero (no direction to compare), never a 'perfect' 0."""
    check_classifier(W, H, classes)
    M = centred_means(H, classes or W.shape[0])
    nW, nM = jnp.linalg.norm(W), jnp.linalg.norm(M)
    value = jnp.sum((W.T / jnp.where(nW > 0, nW, 1.0) - M / jnp.where(nM > 0, nM, 1.0)) ** 2)
    return jnp.where((nW > 0) & (nM > 0), value, jnp.nan)


def equinorm_features(H, K):
    """std/mean of ‖h̄_k − h̄_G‖ over classes, population std (the simulator's convention; Papyan
    et al. 2020's code used torch's unbiased std: `equinorm_features_unbiased`). NaN when every
    centred mean is zero."""
    norms = jnp.linalg.norm(centred_means(H, K), axis=0)
    return jnp.std(norms) / jnp.mean(norms)


def equinorm_features_unbiased(H, K):
    """As `equinorm_features` with the unbiased (K−1) std, as some later papers report it."""
    norms = jnp.linalg.norm(centred_means(H, K), axis=0)
    return jnp.std(norms, ddof=1) / jnp.mean(norms)


def equinorm_weights(W):
    """std/mean of ‖w_k‖ over classes, population std (see `equinorm_features`); NaN for W = 0."""
    check_classifier(W)
    norms = jnp.linalg.norm(W, axis=1)
    return jnp.std(norms) / jnp.mean(norms)


def equinorm_weights_unbiased(W):
    """As `equinorm_weights` with the unbiased (K−1) std."""
    check_classifier(W)
    norms = jnp.linalg.norm(W, axis=1)
    return jnp.std(norms, ddof=1) / jnp.mean(norms)


def _defined_cosines(A):
    """Off-diagonal cosines of the columns of A, NaN if any column is zero (no direction)."""
    cos = _off_diagonal(_cosines(A))
    return jnp.where(jnp.all(jnp.linalg.norm(A, axis=0) > 0), cos, jnp.nan)


def equiangularity_features(H, K):
    """Population std over k ≠ k' of cos(h̄_k − h̄_G, h̄_k' − h̄_G) (Papyan et al. 2020, Fig. 3);
    NaN if a centred mean is zero."""
    return jnp.std(_defined_cosines(centred_means(H, K)))


def equiangularity_weights(W):
    """Population std over k ≠ k' of cos(w_k, w_k') (Papyan et al. 2020, Fig. 3); NaN if a row
    of W is zero."""
    check_classifier(W)
    return jnp.std(_defined_cosines(W.T))


def max_angle_features(H, K):
    """Avg_{k≠k'} |cos(h̄_k − h̄_G, h̄_k' − h̄_G) + 1/(K−1)| (Papyan et al. 2020, Fig. 4)."""
    k = num_classes(K)
    return jnp.mean(jnp.abs(_defined_cosines(centred_means(H, K)) + 1.0 / (k - 1)))


def mean_cosine_uncentred(H, K):
    """Avg_{k≠k'} cos(h̄_k, h̄_k') of the uncentred class means: −1/(K−1) at a simplex ETF
    centred at the origin, 0 at an orthogonal frame (the bias transition, docs/theory.md §3.3);
    NaN if a class mean is zero."""
    return jnp.mean(_defined_cosines(class_means(H, K)))


def max_angle_weights(W):
    """Avg_{k≠k'} |cos(w_k, w_k') + 1/(K−1)| (Papyan et al. 2020, Fig. 4)."""
    check_classifier(W)
    K = W.shape[0]
    return jnp.mean(jnp.abs(_defined_cosines(W.T) + 1.0 / (K - 1)))


def nc4_mismatch(W, H, b=None, classes=None):
    """Fraction of samples where argmax_k (W h + b)_k ≠ argmin_k ‖h − h̄_k‖ (Papyan et al. 2020,
    NC4: the classifier against the nearest class centre; b = 0 for a bias-free model)."""
    check_classifier(W, H, classes)
    if b is not None and getattr(b, "shape", None) != (W.shape[0],):
        raise ValueError(f"b must have shape [K] = ({W.shape[0]},), got {getattr(b, 'shape', b)}")
    logits = W @ H + (0.0 if b is None else b[:, None])
    Hbar = class_means(H, classes or W.shape[0])
    # ‖h − h̄_k‖² up to the ‖h‖² every class shares: [K, N], not a [d, K, N] tensor
    dist = jnp.sum(Hbar * Hbar, axis=0)[:, None] - 2 * Hbar.T @ H
    return jnp.mean((jnp.argmax(logits, axis=0) != jnp.argmin(dist, axis=0)).astype(H.dtype))


def papyan_suite(W, H, b=None, classes=None):
    """The rest of docs/theory.md §4 (Papyan et al. 2020's measurements), keyed by name."""
    K = classes or W.shape[0]
    return {
        "self_duality": self_duality(W, H, K),
        "equinorm_H": equinorm_features(H, K),
        "equinorm_W": equinorm_weights(W),
        "equiangularity_H": equiangularity_features(H, K),
        "equiangularity_W": equiangularity_weights(W),
        "max_angle_H": max_angle_features(H, K),
        "max_angle_W": max_angle_weights(W),
        "nc4_mismatch": nc4_mismatch(W, H, b, K),
    }


class HanDecomposition(NamedTuple):
    """Han, Papyan & Donoho (2022): L = L_NC1 + L_NC2/3 + L_LS⊥ for the augmented classifier."""

    W_ls: jax.Array  # W̃_LS [K, d+1]
    nc1: jax.Array  # ½ tr(W̃_LS (Σ̃_W + λI) W̃_LSᵀ)
    nc23: jax.Array  # (1/(2K)) ‖W̃_LS M̃ − I‖²
    ls_perp: jax.Array  # ½ tr((W̃ − W̃_LS)(Σ̃_T + μ̃_Gμ̃_Gᵀ + λI)(W̃ − W̃_LS)ᵀ)
    loss: jax.Array  # ½ Avg‖W̃h̃ − y‖² + λ/2‖W̃‖²


def han_decomposition(W, b, H, lam):
    """The MSE decomposition of Han, Papyan & Donoho (docs/theory.md §3.8) with W̃ = [W, b], h̃ = [h; 1].

    W̃_LS = (1/K) M̃ᵀ (Σ̃_T + μ̃_Gμ̃_Gᵀ + λI)⁻¹, M̃ the uncentred augmented class means [d+1, K].
    W [K, d], b [K] (zeros for a bias-free model), H [d, N] class-major, λ ≥ 0 (λ = 0 needs the
    augmented second moment to be invertible).
    """
    K = W.shape[0]
    d, N = H.shape
    Ht = jnp.concatenate([H, jnp.ones((1, N), H.dtype)])  # h̃  [d+1, N]
    Wt = jnp.concatenate([W, b[:, None]], axis=1)  # W̃  [K, d+1]
    Mt = class_means(Ht, K)  # [d+1, K]
    second = Ht @ Ht.T / N  # Σ̃_T + μ̃_G μ̃_Gᵀ
    reg = lam * jnp.eye(d + 1, dtype=H.dtype)
    W_ls = linalg.solve(second + reg, Mt / K).T  # (second + λI) symmetric
    D = within_class_deviations(Ht, K)
    Sw = D @ D.T / N  # Σ̃_W (zero row/column for the constant coordinate)
    E = Wt - W_ls
    Y = jnp.kron(jnp.eye(K, dtype=H.dtype), jnp.ones((1, N // K), H.dtype))
    return HanDecomposition(
        W_ls=W_ls,
        nc1=0.5 * jnp.trace(W_ls @ (Sw + reg) @ W_ls.T),
        nc23=jnp.sum((W_ls @ Mt - jnp.eye(K, dtype=H.dtype)) ** 2) / (2 * K),
        ls_perp=0.5 * jnp.trace(E @ (second + reg) @ E.T),
        loss=jnp.sum((Wt @ Ht - Y) ** 2) / (2 * N) + lam / 2 * jnp.sum(Wt ** 2))


def feature_measurements(H, K, name):
    """NC1 and NC2 (ETF and OF) of one level of features, keyed `nc1_{name}` etc."""
    return {
        f"nc1_{name}": nc1(H, K),
        f"nc2_etf_{name}": nc2_etf_features(H, K),
        f"nc2_of_{name}": nc2_of_features(H, K),
    }


def rank_measurements(H, K, name, rtol=RANK_TOL):
    """Numerical rank of the class means H̄ and of the centred means M̄ of one level, keyed
    `rank_{name}` and `rank_centred_{name}` (deep models: DNC has rank K, or K − 1 centred;
    low-rank solutions less)."""
    return {f"rank_{name}": numerical_rank(class_means(H, K), rtol),
            f"rank_centred_{name}": numerical_rank(centred_means(H, K), rtol)}


def classifier_measurements(W, H, classes=None):
    """NC2 of the classifier W [K, d] and NC3 of W against the features H [d, N] it reads."""
    return {
        "nc2_etf_W": nc2_etf_weights(W),
        "nc2_of_W": nc2_of_weights(W),
        "nc3_etf": nc3_etf(W, H, classes),
        "nc3_of": nc3_of(W, H, classes),
        "norm_W": jnp.linalg.norm(W),
    }


UNDEFINED_REASONS = (  # (name prefix, why a NaN value of that measurement has no value)
    ("nc1", "all class means of that level coincide (Σ_B = 0), e.g. features at zero"),
    ("equinorm_W", "every classifier row is zero"),
    ("equinorm", "every centred class mean is zero"),
    ("nc2_etf_W", "the classifier is zero: no direction"),
    ("nc2_of_W", "the classifier is zero: no direction"),
    ("nc2", "the class means are zero: no direction"),
    ("nc3", "W or the class means are zero: no direction"),
    ("self_duality", "W or the centred class means are zero: no direction"),
    ("equiangularity", "a class mean or classifier row is zero: no direction"),
    ("max_angle", "a class mean or classifier row is zero: no direction"),
    ("cos_", "a class mean is zero: no direction"),
    ("han_", "the least-squares problem of the decomposition is singular"),
    ("nrc3", "the predicted W Wᵀ is zero (every singular value thresholded) or λ_W = 0"),
    ("nrc", "the centred features are zero (to round-off): no subspace to measure"),
)


def undefined_reasons(final, diverged=False):
    """{measurement: why it is NaN} for the NaN values of a dict of final measurements
    (docs/theory.md §4, degenerate configurations). A diverged run's NaNs are its divergence."""
    out = {}
    for name, value in final.items():
        if isinstance(value, float) and math.isnan(value):
            if diverged:
                out[name] = "the run diverged"
                continue
            out[name] = next((why for prefix, why in UNDEFINED_REASONS if name.startswith(prefix)),
                             "undefined at this configuration")
    return out


def total_covariance_split(H, K):
    """(Σ_T, Σ_W, Σ_B) [d, d] each; Σ_T = Σ_W + Σ_B for balanced classes."""
    N = H.shape[1]
    D = within_class_deviations(H, K)
    M = centred_means(H, K)
    Hc = H - H.mean(axis=1, keepdims=True)
    return Hc @ Hc.T / N, D @ D.T / N, M @ M.T / num_classes(K)


__all__ = [
    "centering",
    "num_classes",
    "class_labels",
    "nuclear_norm",
    "numerical_rank",
    "rank_measurements",
    "RANK_TOL",
    "mean_pairwise_cosine",
    "class_means",
    "centred_means",
    "within_class_deviations",
    "nc1",
    "nc2_etf_features",
    "nc2_of_features",
    "nc2_etf_weights",
    "nc2_of_weights",
    "nc3_etf",
    "nc3_of",
    "feature_measurements",
    "classifier_measurements",
    "nc1_unnormalised",
    "self_duality",
    "equinorm_features",
    "equinorm_features_unbiased",
    "equinorm_weights",
    "equinorm_weights_unbiased",
    "equiangularity_features",
    "equiangularity_weights",
    "max_angle_features",
    "max_angle_weights",
    "nc4_mismatch",
    "papyan_suite",
    "HanDecomposition",
    "han_decomposition",
    "total_covariance_split",
    "undefined_reasons",
]
