"""The next-token-prediction UFM (after Zhao, Behnia, Vakilian & Thrampoulidis 2024; docs/theory.md
§5.6): N contexts j, each with a next-token distribution p_j over a vocabulary of V tokens,

    (1/N)·Σ_j CE(W·h_j, p_j) + λ_W/2‖W‖² + λ_H/2‖H‖²,   W [V, d], H [d, N],

CE against the soft target, CE(z, p) = lse(z) − ⟨p, z⟩. The distributions come from a file
(`--targets`, P [V, N], column j = p_j) or from a support pattern (`--supports`: a 0/1 matrix
file [V, N] or token lists "0,1;1,2;2", uniform on each support). A context that appears several
times is several columns. Sizes: K = V (W's rows), N = K·n contexts (as `regression`: pass --n so
that the counts sum to N).

Convex in Z = WH, so certified at every λ: for G = s·∇L(Z) with ‖G‖_op ≤ μ = √(λ_Wλ_H),
L(Z') + μ‖Z'‖_* ≥ −L*(G) = (1/N)·Σ_j Entropy((1 − s)·p_j + s·softmax(z_j)), s ∈ [0, 1]; the
bound equals the minimum at the optimum when d ≥ V. Its λ → 0 limit (`--limit`) is
`ufm.limit.solve_support_svm`: the logits' growing direction, every in-support logit equal and
≥ 1 above the rest.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from ufm import convex, metrics
from ufm.files import read_matrix
from ufm.models.base import (TWO_FACTOR_SYMMETRY, GlobalCertificate, Model, Option, register, sq)
from ufm.models.plain import TWO_FACTOR, two_factor_init

SUM_TOL = 1e-9  # a target column sums to 1 within this
ZERO_LOGITS = 1e-6  # logits all below this: the zero solution (no embedding directions)


def _context_error(what, j, why):
    return ValueError(f"{what}: context {j} (column {j}) {why}")


def read_targets(value):
    """`--targets` as a hashable tuple of rows [V, N]; ValueError naming it and the first bad
    context otherwise."""
    what = "targets (--targets)"
    P = read_matrix(value, what, "targets", "a V×N matrix of next-token distributions")
    if P.ndim != 2 or P.size == 0:
        raise ValueError(f"{what} must be a V×N matrix (column j: the next-token distribution "
                         f"of context j), got shape {P.shape}")
    for j in range(P.shape[1]):
        col = P[:, j]
        if not np.all(np.isfinite(col)):
            raise _context_error(what, j, "holds NaN or inf")
        if np.any(col < 0):
            raise _context_error(what, j, f"has a negative probability ({col.min():.3g})")
        if abs(col.sum() - 1.0) > SUM_TOL:
            raise _context_error(what, j, f"sums to {col.sum():.12g}, not 1 (a distribution "
                                          f"over the vocabulary)")
    return tuple(tuple(float(v) for v in row) for row in P)


def read_supports(value):
    """`--supports` — a 0/1 matrix [V, N] (file or array) or token lists "0,1;1,2;2" (one list
    per context; V = the largest token + 1) — as the uniform targets on each support."""
    what = "supports (--supports)"
    if isinstance(value, str) and not any(value.endswith(e) for e in (".npy", ".npz", ".csv",
                                                                       ".txt")):
        try:
            lists = [[int(t) for t in part.split(",") if t.strip()] for part in value.split(";")]
        except ValueError:
            raise ValueError(f"{what} must be a 0/1 matrix file or token lists like "
                             f"'0,1;1,2;2', got {value!r}") from None
        for j, tokens in enumerate(lists):
            if not tokens:
                raise _context_error(what, j, "has an empty support")
            if min(tokens) < 0:
                raise _context_error(what, j, f"names token {min(tokens)}; tokens are ≥ 0")
        S = np.zeros((max(max(t) for t in lists) + 1, len(lists)))
        for j, tokens in enumerate(lists):
            S[tokens, j] = 1.0
    else:
        S = read_matrix(value, what, "supports", "a V×N 0/1 matrix")
        if S.ndim != 2 or S.size == 0 or not np.all((S == 0) | (S == 1)):
            raise ValueError(f"{what} must be a V×N matrix of 0s and 1s (column j: the support "
                             f"of context j), got shape {S.shape}")
        for j in np.flatnonzero(S.sum(axis=0) == 0)[:1]:
            raise _context_error(what, j, "has an empty support")
    return tuple(tuple(float(v) for v in row) for row in S / S.sum(axis=0, keepdims=True))


TARGETS = Option("targets", None, "the next-token distributions P, a V×N matrix (column j: "
                 "context j's) in a .npy/.npz/.csv/.txt file; --K V, N = K·n", convert=read_targets)
SUPPORTS = Option("supports", None, "a support pattern instead of --targets: a V×N 0/1 matrix "
                  "file or token lists '0,1;1,2;2' (uniform on each support)",
                  convert=read_supports)


def entropy(Q):
    """Σ_j Entropy(q_j) of the columns of Q [V, N] (0·log 0 = 0; numpy float64)."""
    Q = np.asarray(Q, np.float64)
    return float(-np.sum(np.where(Q > 0, Q * np.log(np.where(Q > 0, Q, 1.0)), 0.0)))


def dual_bound(Z, P, mu):
    """The certificate's lower bound from logits Z [V, N] (module docstring; numpy float64): the
    best s ∈ [0, s_max] by golden section on the concave (1/N)·Σ_j H((1 − s)p_j + s·σ_j)."""
    Z, P = np.asarray(Z, np.float64), np.asarray(P, np.float64)
    N = P.shape[1]
    E = np.exp(Z - Z.max(axis=0, keepdims=True))
    sigma = E / E.sum(axis=0, keepdims=True)
    grad_norm = np.linalg.norm((sigma - P) / N, 2)
    s_max = 1.0 if grad_norm == 0 else min(1.0, mu / grad_norm)
    return convex._golden_max(lambda s: entropy((1 - s) * P + s * sigma) / N, 0.0, s_max)


def default_targets(V, N):
    """The built-in pattern (neither --targets nor --supports): context j has support {k, k + 1}
    (mod V), k = j mod V, with probabilities (r + 1, 1)/(r + 2), r = j div V — every support
    shared by the contexts k, k + V, …, each with another distribution on it."""
    P = np.zeros((V, N))
    for j in range(N):
        k, r = j % V, j // V
        P[k, j], P[(k + 1) % V, j] = (r + 1) / (r + 2), 1 / (r + 2)
    return P


POLISH_STEPS = 100  # proximal-gradient steps on the convex problem before the bound is taken
POLISH_EVERY = 25


def polished_bound(Z, P, mu, steps=POLISH_STEPS):
    """The best dual_bound over `steps` accelerated proximal-gradient (FISTA) steps on L(Z) +
    μ‖Z‖_* from the run's logits Z (numpy float64). Any point's gradient gives a valid bound;
    the bound is first-order in the point's error, so the run's point (a relative gradient of
    1e-10) leaves ~1e-9, and a few dozen steps of the convex problem itself take it to ~1e-12
    (docs/theory.md §5.6)."""
    Z, P = np.asarray(Z, np.float64), np.asarray(P, np.float64)
    N = P.shape[1]
    step = 2.0 * N  # 1/Lipschitz: CE's Hessian in one column is ≤ ½·I, over N columns
    best = dual_bound(Z, P, mu)
    X, Y, t = Z, Z, 1.0
    # on the host in float64 numpy, as every certificate (convex.py): a fixed 100 steps after the
    # run, whatever the run's dtype, not the run's own steps
    for i in range(1, steps + 1):
        E = np.exp(Y - Y.max(axis=0, keepdims=True))
        G = (E / E.sum(axis=0, keepdims=True) - P) / N
        U, sv, Vt = np.linalg.svd(Y - step * G, full_matrices=False)
        X_next = (U * np.maximum(sv - step * mu, 0.0)[None, :]) @ Vt
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        X, Y, t = X_next, X_next + (t - 1) / t_next * (X_next - X), t_next
        if i % POLISH_EVERY == 0:
            best = max(best, dual_bound(X, P, mu))
    return best


def ntp_model(targets=None, supports=None):
    if targets is not None and supports is not None:
        raise ValueError("ntp takes one of targets (--targets FILE) and supports "
                         "(--supports PATTERN), not both")
    given = targets if targets is not None else supports

    def distributions(sizes):
        """P [V, N] (float64 numpy) and its supports."""
        P = default_targets(sizes.K, sizes.N) if given is None else np.asarray(given, np.float64)
        return P, P > 0

    def objective(params, hyper, sizes, session=None):
        """(1/N)·Σ_j CE(W·h_j, p_j) + λ_W/2‖W‖² + λ_H/2‖H‖² (module docstring)."""
        W, H = params["W"], params["H"]
        P = jnp.asarray(distributions(sizes)[0], H.dtype)
        return (metrics.cross_entropy(W @ H, P) / sizes.N
                + hyper["lam_W"] / 2 * sq(W) + hyper["lam_H"] / 2 * sq(H))

    def measure(params, hyper, sizes, session=None):
        """The loss above its floor (the targets' mean entropy), the probability left outside
        the supports, how far the in-support logits are from log p (their λ → 0 limit), and
        the smallest cosine between a context's embedding and the mean direction of the
        contexts sharing its support (1: one direction per support; docs/theory.md §5.6)."""
        W, H = params["W"], params["H"]
        Z = W @ H
        P0, S0 = distributions(sizes)
        P, S = jnp.asarray(P0, H.dtype), jnp.asarray(S0)
        logp = jnp.log(jnp.where(S, P, 1.0))
        # in-support logits minus log p, centred over the support: 0 in the limit
        centred = jnp.where(S, Z - logp, 0.0)
        centred = centred - jnp.sum(centred, axis=0) / jnp.sum(S, axis=0)
        ratio_error = jnp.max(jnp.abs(jnp.where(S, centred, 0.0)))
        sm = jnp.exp(Z - jnp.max(Z, axis=0))
        sm = sm / jnp.sum(sm, axis=0)
        # each context's embedding against the mean direction of the contexts sharing its
        # support (groups from the static pattern: O(N·d), no N × N array)
        _, group = np.unique(S0.T, axis=0, return_inverse=True)
        group = group.ravel()
        unit = H / jnp.maximum(jnp.sqrt(jnp.sum(H * H, axis=0)), jnp.finfo(H.dtype).tiny)
        direction = jax.ops.segment_sum(unit.T, group, num_segments=int(group.max()) + 1)
        direction = direction / jnp.maximum(jnp.sqrt(jnp.sum(direction * direction, axis=1,
                                                             keepdims=True)),
                                            jnp.finfo(H.dtype).tiny)
        cos = jnp.sum(unit.T * direction[group], axis=1)
        # at the zero solution (every logit below 1e-6, to the run's accuracy) the embeddings
        # are round-off and have no direction
        defined = jnp.max(jnp.abs(Z)) > ZERO_LOGITS
        return {
            "loss": metrics.cross_entropy(Z, P) / sizes.N,
            "excess_loss": metrics.cross_entropy(Z, P) / sizes.N - entropy(P0) / sizes.N,
            "mass_outside_support": jnp.mean(jnp.sum(jnp.where(S, 0.0, sm), axis=0)),
            "log_ratio_error": ratio_error,
            "same_support_min_cos": jnp.where(defined, jnp.min(cos), jnp.nan),
            "norm_W": jnp.sqrt(sq(W)), "norm_H": jnp.sqrt(sq(H)),
        }

    def check(sizes):
        shape = None if given is None else np.shape(given)
        if shape is not None and shape != (sizes.K, sizes.N):
            what = "targets (--targets)" if targets is not None else "supports (--supports)"
            raise ValueError(f"{what} is {shape[0]}×{shape[1]} (V×N) but K (--K) is {sizes.K} "
                             f"and N = {sizes.N} contexts: pass --K {shape[0]} and --n so that "
                             f"the counts sum to {shape[1]}")

    def logits(params, sizes):
        return {"Z": params["W"] @ params["H"]}  # traced: the bound reads it on the host

    def lower_bound(inputs, hyper, sizes):
        mu = math.sqrt(float(hyper["lam_W"]) * float(hyper["lam_H"]))
        return polished_bound(inputs["Z"], distributions(sizes)[0], mu)

    source = ("--targets" if targets is not None else "--supports" if supports is not None else
              "the built-in pattern")
    return Model(
        name="ntp",
        description=f"next-token prediction UFM: (1/N)Σ_j CE(Wh_j, p_j) + λ_W/2‖W‖² + "
                    f"λ_H/2‖H‖², soft targets from {source} (Zhao et al. 2024)",
        init=two_factor_init(False), objective=objective, measure=measure, hypers=TWO_FACTOR,
        theorem_min_d=lambda K: 1, init_scale=1.0, theory=lambda hyper, sizes: None,
        check=check,
        certificate=GlobalCertificate(logits, lower_bound, convex_min_d=lambda K: K),
        symmetries=TWO_FACTOR_SYMMETRY,
        limit=lambda hyper, sizes: {"supports": distributions(sizes)[1]})


register("ntp", (TARGETS, SUPPORTS))(ntp_model)
