"""Frames of neural collapse: simplex ETF, orthogonal frame (OF), non-negative OF.

Constructors return the K frame vectors as the columns of a [d, K] matrix with unit columns,
randomly rotated by a PRNG key. Distances take a [K, K] matrix (a Gram matrix, or a product such
as W H̄) and measure how far its direction is from the ideal one (docs/theory.md §1, §4).
"""
import jax
import jax.numpy as jnp

from ufm import linalg


def _check_frame_size(K, d, min_d, name):
    for arg, value in (("K", K), ("d", d)):
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise ValueError(f"{name}: {arg} must be an integer, got {value!r}")
    if K < 2:
        raise ValueError(f"K must be >= 2, got K={K}")
    if d < min_d:
        raise ValueError(f"{name} needs d >= {min_d} for K={K}, got d={d}")


def random_orthonormal(key, d, k):
    """Random d×k matrix with orthonormal columns (Haar-distributed) [d, k]."""
    q, r = linalg.qr(jax.random.normal(key, (d, k)))
    return q * jnp.sign(jnp.diagonal(r))  # sign fix makes the distribution Haar


def centering(K):
    """P = I_K − 1 1ᵀ / K  [K, K]."""
    return jnp.eye(K) - jnp.ones((K, K)) / K


def simplex_etf(key, K, d):
    """Simplex ETF: unit columns with pairwise cosine −1/(K−1); needs d ≥ K−1  [d, K]."""
    _check_frame_size(K, d, K - 1, "a simplex ETF")
    # Orthonormal basis of 1^⊥ in R^K: the first K−1 left singular vectors of P.
    basis = jnp.linalg.svd(centering(K))[0][:, : K - 1]
    return jnp.sqrt(K / (K - 1)) * random_orthonormal(key, d, K - 1) @ basis.T


def orthogonal_frame(key, K, d):
    """Orthogonal frame: K orthonormal columns in R^d; needs d ≥ K  [d, K]."""
    _check_frame_size(K, d, K, "an orthogonal frame")
    return random_orthonormal(key, d, K)


def nonnegative_orthogonal_frame(key, K, d):
    """Non-negative OF: unit columns, entrywise ≥ 0, with disjoint supports; needs d ≥ K  [d, K].

    Randomness permutes the coordinates and draws the positive weights on each support
    (a rotation would break non-negativity).
    """
    _check_frame_size(K, d, K, "a non-negative orthogonal frame")
    k_perm, k_val = jax.random.split(key)
    owner = jax.random.permutation(k_perm, jnp.arange(d) % K)  # every class owns >= 1 coordinate
    Q = jax.random.uniform(k_val, (d, K), minval=0.5, maxval=1.5)
    Q = jnp.where(owner[:, None] == jnp.arange(K)[None, :], Q, 0.0)
    return Q / jnp.linalg.norm(Q, axis=0)


def _unit(A):
    """A / ‖A‖_F; NaN for A = 0, which has no direction (docs/theory.md §4, degenerate
    configurations), so a zero matrix is at an undefined distance from every frame."""
    norm = jnp.linalg.norm(A)
    return jnp.where(norm > 0, A / jnp.where(norm > 0, norm, 1.0), jnp.nan)


def _check_square(A, name="A"):
    shape = getattr(A, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1] or shape[0] < 2:
        raise ValueError(f"{name} must be a square [K, K] matrix with K >= 2 (a Gram matrix or a "
                         f"product such as W H̄), got shape {shape}")


def etf_distance(A):
    """‖A/‖A‖ − P/√(K−1)‖_F for A [K, K]; 0 iff A ∝ P with a positive factor; NaN for A = 0."""
    _check_square(A)
    K = A.shape[-1]
    return jnp.linalg.norm(_unit(A) - centering(K) / jnp.sqrt(K - 1.0))


def of_distance(A):
    """‖A/‖A‖ − I/√K‖_F for A [K, K]; 0 iff A ∝ I with a positive factor; NaN for A = 0."""
    _check_square(A)
    K = A.shape[-1]
    return jnp.linalg.norm(_unit(A) - jnp.eye(K) / jnp.sqrt(K * 1.0))


def is_etf(G, tol=1e-6):
    """Whether the Gram matrix G [K, K] is that of a simplex ETF, to within `tol`."""
    return bool(etf_distance(G) <= tol)


def is_orthogonal_frame(G, tol=1e-6):
    """Whether the Gram matrix G [K, K] is that of an orthogonal frame, to within `tol`."""
    return bool(of_distance(G) <= tol)
