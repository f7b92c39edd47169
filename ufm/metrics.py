"""Neural-collapse measurements (SPEC §4), pure functions of arrays.

Layout: features H [d, N] are class-major with n samples per class (column k·n + i is sample i of
class k); classifier W [K, d]. Every function works in float32 and float64 alike.
"""
import jax.numpy as jnp

from ufm.geometry import centering, etf_distance, of_distance


def class_means(H, K):
    """H̄ = [h̄_1 … h̄_K]  [d, K] from class-major H [d, N]."""
    d, N = H.shape
    return H.reshape(d, K, N // K).mean(axis=-1)


def centred_means(H, K):
    """M̄ = H̄ − h̄_G 1ᵀ  [d, K]."""
    Hbar = class_means(H, K)
    return Hbar - Hbar.mean(axis=1, keepdims=True)


def within_class_deviations(H, K):
    """h_{k,i} − h̄_k for every column  [d, N]."""
    d, N = H.shape
    Hk = H.reshape(d, K, N // K)
    return (Hk - Hk.mean(axis=-1, keepdims=True)).reshape(d, N)


def nc1(H, K):
    """NC1 = (1/K) tr(Σ_W Σ_B^†)  (Tirer & Bruna eq. 26; Papyan et al. 2020).

    Computed in the (K−1)-dim span of M̄ = U S Vᵀ: with Σ_B = M̄M̄ᵀ/K,
    NC1 = Σ_{j<K} ‖u_jᵀ D‖² / (N s_j²), D the within-class deviations. No d×d pseudo-inverse and no
    subtraction Σ_T − Σ_B, so it is ≥ 0 and accurate in float32 near collapse. Directions whose
    singular value is below the pseudo-inverse cut-off (e.g. all means at one point) are dropped.
    """
    N = H.shape[1]
    U, s, _ = jnp.linalg.svd(centred_means(H, K), full_matrices=False)
    U, s = U[:, : K - 1], s[: K - 1]  # rank(M̄) ≤ K − 1: columns sum to zero
    cutoff = s[0] * max(H.shape) * jnp.finfo(H.dtype).eps
    keep = s > cutoff
    proj = jnp.sum((U.T @ within_class_deviations(H, K)) ** 2, axis=1)
    value = jnp.sum(jnp.where(keep, proj / (N * jnp.where(keep, s, 1.0) ** 2), 0.0))
    return jnp.where(jnp.all(jnp.isfinite(H)), value, jnp.nan)


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
    return etf_distance(W @ W.T)


def nc2_of_weights(W):
    """NC2-OF of the classifier: distance of WWᵀ [K, K] from an OF."""
    return of_distance(W @ W.T)


def nc3_etf(W, H):
    """NC3-ETF: ‖W M̄/‖W M̄‖ − P/√(K−1)‖ (alignment with the centred means)."""
    return etf_distance(W @ centred_means(H, W.shape[0]))


def nc3_of(W, H):
    """NC3-OF: ‖W H̄/‖W H̄‖ − I/√K‖ (alignment with the uncentred means)."""
    return of_distance(W @ class_means(H, W.shape[0]))


def feature_measurements(H, K, name):
    """NC1 and NC2 (ETF and OF) of one level of features, keyed `nc1_{name}` etc."""
    return {
        f"nc1_{name}": nc1(H, K),
        f"nc2_etf_{name}": nc2_etf_features(H, K),
        f"nc2_of_{name}": nc2_of_features(H, K),
    }


def classifier_measurements(W, H):
    """NC2 of the classifier W [K, d] and NC3 of W against the features H [d, N] it reads."""
    return {
        "nc2_etf_W": nc2_etf_weights(W),
        "nc2_of_W": nc2_of_weights(W),
        "nc3_etf": nc3_etf(W, H),
        "nc3_of": nc3_of(W, H),
        "norm_W": jnp.linalg.norm(W),
    }


def total_covariance_split(H, K):
    """(Σ_T, Σ_W, Σ_B) [d, d] each; Σ_T = Σ_W + Σ_B for balanced classes."""
    N = H.shape[1]
    D = within_class_deviations(H, K)
    M = centred_means(H, K)
    Hc = H - H.mean(axis=1, keepdims=True)
    return Hc @ Hc.T / N, D @ D.T / N, M @ M.T / K


__all__ = [
    "centering",
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
    "total_covariance_split",
]
