"""Fixed classifiers with norm-constrained features, and the layer-peeled model (docs/theory.md
§3.9): a fixed simplex ETF (Yang et al., Neural Collapse Terminus, seed 000), a fixed
non-negative orthogonal frame (Kim & Kim, seed 004), and a learnable classifier with
norm-constrained class vectors (the layer-peeled model of Fang et al.). Projected gradient descent
keeps the features (and class vectors) in their balls; class-incremental sessions (`Session`)
optimise one group of classes at a time."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from ufm import convex, geometry, linalg, metrics, theory
from ufm.models.base import (BOUND, GlobalCertificate, Hyper, Model, Option, gaussian_blocks,
                             one_hot_targets, register)

LOSSES = ("ce", "dot-regression")
ALPHAS = ("none", "inverse-count")
E_H = Hyper("E_H", BOUND, f"E_H, the bound ‖h‖² ≤ E_H on every feature (default {BOUND:g})",
            positive=True)
E_W = Hyper("E_W", BOUND, f"E_W, the bound ‖w_k‖² ≤ E_W on every class vector (default "
                          f"{BOUND:g})", positive=True)


def sample_weights(sizes, alpha, active, dtype):
    """Weight of each sample's loss [N]: 1/N_active (`none`, the paper's average) or α_k = 1/n_k
    (`inverse-count`, seed 000's Extension 1: Σ_k (1/n_k) Σ_i ℓ); zero for inactive samples."""
    counts = np.asarray(sizes.counts, np.float64)
    labels = metrics.class_labels(sizes.counts, sizes.N)
    if alpha == "inverse-count":
        return active * jnp.asarray(1.0 / counts[labels], dtype)
    return active / jnp.sum(active)


def _prototype_loss(loss, mask_softmax):
    def per_sample(H, C, hyper, sizes, session):
        """ℓ(h_{k,i}) for every column [N]; C [d, K] the classifier's class vectors."""
        Y = one_hot_targets(sizes, H.dtype)
        logits = C.T @ H  # [K, N]
        if loss == "dot-regression":  # (c_yᵀh − √E_H)² / (2√E_H)  (Yang et al., docs/theory.md §3.9)
            root = jnp.sqrt(hyper["E_H"])
            return (jnp.sum(Y * logits, axis=0) - root) ** 2 / (2 * root)
        if mask_softmax and session is not None:  # drop the classes outside the session
            logits = jnp.where(session.logit_mask[:, None] > 0, logits, -jnp.inf)
        # where, not Y·log p: a masked class has log p = −inf (such samples are inactive)
        return -jnp.sum(jnp.where(Y > 0, jax.nn.log_softmax(logits, axis=0), 0.0), axis=0)

    return per_sample


def classifier_vectors(params):
    """The class vectors [d, K]: the fixed frame E, or the learnable Wᵀ of the layer-peeled model."""
    return jax.lax.stop_gradient(params["E"]) if "E" in params else params["W"].T


def _objective(loss, alpha, mask_softmax):
    per_sample = _prototype_loss(loss, mask_softmax)

    def objective(params, hyper, sizes, session=None):
        """Σ_k α_k Σ_i ℓ(h_{k,i}, C) (+ distill/2 · avg‖h − h^{(t−1)}‖² in incremental sessions).

        Yang et al. (Neural Collapse Terminus, seed 000) with C = E a fixed simplex ETF; Kim & Kim
        (seed 004) with C = Q a fixed non-negative OF; the layer-peeled model with C = Wᵀ. The
        norm constraints are not in the objective: `project` enforces them after every step.
        params: H [d, N] and E [d, K] (fixed) or W [K, d]; hyper: E_H (and E_W); session: the
        samples optimised, the softmax mask and the anchor of the distillation term, or None.
        """
        H = params["H"]
        active = jnp.ones(sizes.N, H.dtype) if session is None else session.active
        weights = sample_weights(sizes, alpha, active, H.dtype)
        losses = per_sample(H, classifier_vectors(params), hyper, sizes, session)
        value = jnp.sum(jnp.where(weights > 0, weights * losses, 0.0))
        if session is not None and session.anchor is not None:  # seed 000 Extension 2
            drift = jnp.sum((H - session.anchor) ** 2, axis=0)
            value = value + session.distill / 2 * jnp.sum(active * drift) / jnp.sum(active)
        return value

    return objective


def _project(halfspace, mask_softmax=False):
    def project(params, hyper, sizes, session=None):
        """Euclidean projection of every h_{k,i} onto ‖h‖² ≤ E_H (and, for the orthogonal
        classifier, onto Σ_{j≠k} hᵀq_j ≥ 0 first: for a half-space through the centre of the ball
        the projection onto the intersection is the ball's after the half-space's); rows of a
        learnable W onto ‖w_k‖² ≤ E_W."""
        H = params["H"]
        if halfspace:
            A = _other_class_sums(params["E"], sizes, session, mask_softmax)
            dot = jnp.sum(A * H, axis=0)
            norm2 = jnp.sum(A * A, axis=0)  # 0 only for a one-class masked session: no constraint
            H = H - jnp.minimum(dot, 0.0) / jnp.where(norm2 > 0, norm2, 1.0) * A
        H = _into_ball(H, hyper["E_H"], axis=0)
        if session is not None:  # in a session, the frozen features are left exactly as they are
            H = jnp.where(session.active[None, :] > 0, H, params["H"])
        out = dict(params, H=H)
        if "W" in params:
            out["W"] = _into_ball(params["W"], hyper["E_W"], axis=1)
        return out

    return project


def _other_class_sums(Q, sizes, session, mask_softmax):
    """a_{k,i} = Σ_{j≠k} q_j for every column (class k of sample i)  [d, N]; with the masked
    softmax in a session, over the session's classes only (the logits that exist there)."""
    if mask_softmax and session is not None:
        Q = Q * session.logit_mask[None, :]
    return (jnp.sum(Q, axis=1, keepdims=True) - Q)[:, metrics.class_labels(sizes.counts, sizes.N)]


def _into_ball(A, bound, axis):
    """Scale each column (axis=0) or row (axis=1) of A to squared norm ≤ bound."""
    norm = jnp.linalg.norm(A, axis=axis, keepdims=True)
    return A * jnp.minimum(1.0, jnp.sqrt(bound) / jnp.where(norm > 0, norm, 1.0))


def _init(frame):
    def init(key, hyper, sizes):
        """H with i.i.d. N(0, init_scale²) entries (projected before the first step), and the fixed
        classifier E [d, K] (`etf`: simplex ETF, unit columns; `orthogonal`: non-negative OF) or
        a learnable W [K, d] (`learnable`)."""
        k_frame, k_blocks = jax.random.split(key)
        shapes = {"H": (sizes.d, sizes.N)}
        if frame == "learnable":
            shapes["W"] = (sizes.K, sizes.d)
        params = gaussian_blocks(k_blocks, shapes, hyper["init_scale"])
        if frame == "etf":
            params["E"] = geometry.simplex_etf(k_frame, sizes.K, sizes.d).astype(params["H"].dtype)
        elif frame == "orthogonal":
            params["E"] = geometry.nonnegative_orthogonal_frame(k_frame, sizes.K, sizes.d).astype(
                params["H"].dtype)
        return params

    return init


def _measure(halfspace, mask_softmax):
    def measure(params, hyper, sizes, session=None):
        """Cosine of each class mean with its class vector (min and mean over classes), the
        largest ‖h‖²/E_H − 1 (≤ 0: feasible), NC1/NC2 of H, and for a learnable W its NC2, the
        largest ‖w_k‖²/E_W − 1 and the mean cosine between the minority classes' vectors."""
        H = params["H"]
        cos = prototype_cosines(params, sizes)
        out = {"cos_prototype_min": jnp.min(cos), "cos_prototype_mean": jnp.mean(cos),
               "feature_norm_excess": jnp.max(jnp.sum(H * H, axis=0)) / hyper["E_H"] - 1.0}
        out.update(metrics.feature_measurements(H, sizes.classes, "H"))
        if halfspace:
            A = _other_class_sums(params["E"], sizes, session, mask_softmax)
            dot = jnp.sum(A * H, axis=0)  # Σ_{j≠k} hᵀq_j ≥ 0, for the features being optimised
            if session is not None:
                dot = jnp.where(session.active > 0, dot, jnp.inf)
            out["halfspace_min"] = jnp.min(dot)
        if "W" in params:
            W = params["W"]
            out.update(metrics.classifier_measurements(W, H, sizes.classes))
            out["classifier_norm_excess"] = jnp.max(jnp.sum(W * W, axis=1)) / hyper["E_W"] - 1.0
            out["minority_cos"] = minority_cosine(W, sizes.counts)
        return out

    return measure


def prototype_cosines(params, sizes):
    """cos(h̄_k, c_k) of every class mean with its class vector (E's column or w_k)  [K]."""
    means, C = metrics.class_means(params["H"], sizes.classes), classifier_vectors(params)
    return jnp.sum(means * C, axis=0) / (jnp.linalg.norm(means, axis=0) * jnp.linalg.norm(C, axis=0))


def minority_cosine(W, counts):
    """Mean cos(w_k, w_k') over pairs of minority classes (those with the smallest count); with
    balanced classes, over all pairs (−1/(K−1) for a simplex ETF). Minority collapse: → 1."""
    minority = np.flatnonzero(np.asarray(counts) == min(counts))
    if len(minority) < 2:  # one minority class: no pair
        return jnp.zeros((), W.dtype)
    return metrics.mean_pairwise_cosine(W[minority].T)


def _bound_inputs(params, sizes):
    """What the global bound needs: the class means H̄ [d, K], and the class vectors (E [d, K] or
    W [K, d])."""
    out = {"Hbar": metrics.class_means(params["H"], sizes.classes)}
    out.update({k: params[k] for k in ("E", "W") if k in params})
    return out


def ce_prototype_loss(Z, weights, E_H):
    """φ(Z) = Σ_k ω_k CE(Z[:, k], k) and ∇φ [K, K] at the class means' logits (float64 numpy)."""
    shift = Z.max(axis=0, keepdims=True)
    lse = np.log(np.sum(np.exp(Z - shift), axis=0)) + shift[0]
    value = float(np.sum(weights * (lse - np.diag(Z))))
    return value, (convex._softmax(Z) - np.eye(Z.shape[0])) * weights[None, :]


def dot_regression_prototype_loss(Z, weights, E_H):
    """φ(Z) = Σ_k ω_k (z_kk − √E_H)²/(2√E_H) and ∇φ (Yang et al.'s dot-regression)."""
    root = math.sqrt(E_H)
    r = np.diag(Z) - root
    return float(np.sum(weights * r * r / (2 * root))), np.diag(weights * r / root)


PROTOTYPE_LOSSES = {"ce": ce_prototype_loss, "dot-regression": dot_regression_prototype_loss}


def _lower_bound(loss, alpha, halfspace):
    def lower_bound(inputs, hyper, sizes):
        """Frank–Wolfe bound (fixed classifier) or the SDP dual bound (layer-peeled model)
        (docs/theory.md §5.2), float64."""
        f64 = {k: np.asarray(v, np.float64) for k, v in inputs.items()}
        if "W" in f64:
            return convex.layer_peeled_bound(f64["W"], f64["Hbar"], sizes.counts,
                                             float(hyper["E_W"]), float(hyper["E_H"]),
                                             PROTOTYPE_LOSSES[loss], alpha)
        Q = f64["E"]
        A = (Q.sum(axis=1, keepdims=True) - Q) if halfspace else None
        return convex.fixed_classifier_bound(f64["Hbar"], Q, sizes.counts, float(hyper["E_H"]),
                                             PROTOTYPE_LOSSES[loss], alpha, A)

    return lower_bound


FRAME_TEXT = {"etf": "a fixed simplex ETF E", "orthogonal": "a fixed non-negative orthogonal "
              "frame Q (features in Σ_{j≠k} hᵀq_j ≥ 0)", "learnable": "a learnable W, ‖w_k‖² ≤ E_W "
              "(the layer-peeled model)"}


def constrained_model(name, frame, loss="ce", alpha="none", mask_softmax=False):
    """fixed-etf (frame 'etf'), fixed-orthogonal ('orthogonal') or lpm ('learnable'), with the
    loss, class weights and masked softmax given (static)."""
    hypers = (E_H, E_W) if frame == "learnable" else (E_H,)
    halfspace = frame == "orthogonal"
    return Model(
        name=name,
        description=f"{loss} of features ‖h‖² ≤ E_H against {FRAME_TEXT[frame]}, projected GD",
        init=_init(frame), objective=_objective(loss, alpha, mask_softmax),
        measure=_measure(halfspace, mask_softmax), hypers=hypers,
        theorem_min_d=(lambda K: K) if halfspace else (lambda K: K - 1), init_scale=1.0,
        theory=lambda hyper, sizes: theory.prototypes(hyper, sizes, frame, loss, alpha),
        project=_project(halfspace, mask_softmax),
        fixed_blocks=("E",) if frame != "learnable" else (), sessions=frame != "learnable",
        certificate=GlobalCertificate(
            _bound_inputs, _lower_bound(loss, alpha, halfspace),
            convex_min_d=(lambda K: 2 * K) if frame == "learnable" else (lambda K: 1),
            solver=_solver(frame, loss, alpha)))


def _options(losses):
    return (Option("loss", "ce", "the loss: cross-entropy (default)"
                                 + (" or dot-regression" if len(losses) > 1 else ""), losses),
            Option("alpha", "none", "per-class weights of the loss: none (average over samples, "
                                    "default) or inverse-count (α_k = 1/n_k)", ALPHAS),
            Option("mask_softmax", False, "softmax over the current session's classes only"))


register("fixed-etf", _options(LOSSES))(
    lambda **o: constrained_model("fixed-etf", "etf", **o))
register("fixed-orthogonal", _options(("ce",)))(
    lambda **o: constrained_model("fixed-orthogonal", "orthogonal", **o))
register("lpm", _options(("ce",)))(lambda **o: constrained_model("lpm", "learnable", **o))


# --- the convex solver of the constrained models (`--optimizer convex`; docs/theory.md §5.3) ---

def _reduced(loss, weights, E_H):
    """φ(Z) = Σ_k ω_k ℓ(z_k, k) of the class logits Z [K, K] (column k: class k's mean)."""
    def phi(Z):
        if loss == "dot-regression":
            root = jnp.sqrt(E_H)
            return jnp.sum(weights * (jnp.diag(Z) - root) ** 2 / (2 * root))
        return jnp.sum(weights * (jax.nn.logsumexp(Z, axis=0) - jnp.diag(Z)))

    return phi


def _lambda_min(S):
    """The smallest eigenvalue of a symmetric S by two largest singular values (SVD through
    ufm.linalg, safe under vmap on CPU): λ_min = r − σ_max(rI − S), r = σ_max(S)."""
    r = linalg.singular_values(S)[0]
    return r - linalg.singular_values(r * jnp.eye(S.shape[0], dtype=S.dtype) - S)[0]


def _solver(frame, loss, alpha):
    halfspace = frame == "orthogonal"

    def solve(model, sizes, hyper, max_iter, tol, key):
        """Accelerated projected gradient (restarted) on the class means — and, for the
        layer-peeled model, the class vectors — stopped when the relative gap to the Frank–Wolfe
        bound (fixed classifier) or to the SDP dual bound (layer-peeled) is ≤ tol. Returns
        (params with every feature at its class mean, iterations, gap). The fixed frame E is the
        one `init` draws from `key`, as for the other optimisers."""
        K, dtype = sizes.K, jnp.result_type(float)
        start = model.project(model.init(key, hyper, sizes), hyper, sizes)
        weights = jnp.asarray(convex.class_weights(sizes.counts, alpha), dtype)
        phi = _reduced(loss, weights, hyper["E_H"])
        E_H = hyper["E_H"]
        A = None
        if halfspace:
            Q = start["E"]
            A = jnp.sum(Q, axis=1, keepdims=True) - Q  # a_k = Σ_{j≠k} q_j  [d, K]
        learnable = frame == "learnable"

        def vectors(V):
            return V["W"].T if learnable else start["E"]

        def value(V):
            return phi(vectors(V).T @ V["Hbar"])

        def project(V):
            H = V["Hbar"]
            if halfspace:
                dot = jnp.sum(A * H, axis=0)
                H = H - jnp.minimum(dot, 0.0) / jnp.sum(A * A, axis=0) * A
            out = {"Hbar": _into_ball(H, E_H, axis=0)}
            if learnable:
                out["W"] = _into_ball(V["W"], hyper["E_W"], axis=1)
            return out

        def bound(V):
            Z = vectors(V).T @ V["Hbar"]
            f, grad = jax.value_and_grad(phi)(Z)
            if learnable:  # the SDP dual bound (docs/theory.md §5.2)
                C = jnp.zeros((2 * K, 2 * K), dtype)
                C = C.at[:K, K:].set(grad / 2).at[K:, :K].set(grad.T / 2)
                X = jnp.concatenate([V["W"], V["Hbar"].T])
                X = X @ X.T
                diag = jnp.diag(X)
                y = jnp.maximum(jnp.where(diag > 0, -jnp.diag(C @ X) / jnp.where(diag > 0, diag, 1),
                                          0.0), 0.0)
                y = y + jnp.maximum(0.0, -_lambda_min(C + jnp.diag(y)))
                e = jnp.concatenate([jnp.full(K, hyper["E_W"]), jnp.full(K, E_H)])
                return f - jnp.sum(grad * Z) - jnp.sum(y * e)
            G = start["E"] @ grad  # ∂φ/∂h̄_k  [d, K]; the Frank–Wolfe bound
            g = G
            if halfspace:
                ag = jnp.sum(A * G, axis=0)
                g = jnp.where(ag > 0, G - ag / jnp.sum(A * A, axis=0) * A, G)
            return f + jnp.sum(-jnp.sqrt(E_H) * jnp.linalg.norm(g, axis=0)
                               - jnp.sum(G * V["Hbar"], axis=0))

        curvature = 1 / jnp.sqrt(E_H) if loss == "dot-regression" else 0.5
        if learnable:
            step = 1.0 / (2 * jnp.max(weights) * curvature * K * (hyper["E_W"] + E_H))
        else:
            step = 1.0 / (jnp.max(weights) * curvature * linalg.singular_values(start["E"])[0] ** 2)
        grad = jax.grad(value)
        V0 = {"Hbar": metrics.class_means(start["H"], sizes.classes)}
        if learnable:
            V0["W"] = start["W"]
        V0 = project(V0)

        def relative_gap(V):
            f = value(V)
            return (f - bound(V)) / jnp.maximum(jnp.abs(f), 1e-6)

        def body(carry):
            i, V, Y, t, gap = carry
            new = project(jax.tree.map(lambda y, g: y - step * g, Y, grad(Y)))
            inner = sum(jnp.sum((Y[k] - new[k]) * (new[k] - V[k])) for k in V)
            restart = inner > 0
            t_new = jnp.where(restart, 1.0, (1 + jnp.sqrt(1 + 4 * t * t)) / 2)
            beta = jnp.where(restart, 0.0, (t - 1) / t_new)
            Y = jax.tree.map(lambda a, b: a + beta * (a - b), new, V)
            gap = jax.lax.cond((i + 1) % 10 == 0, lambda: relative_gap(new), lambda: gap)
            return i + 1, new, Y, t_new, gap

        def cond(carry):
            return (carry[0] < max_iter) & ~(carry[-1] <= tol)

        inf = jnp.asarray(jnp.inf, dtype)
        i, V, _, _, gap = jax.lax.while_loop(cond, body, (0, V0, V0, jnp.asarray(1.0, dtype), inf))
        params = dict(start, H=V["Hbar"][:, metrics.class_labels(sizes.counts, sizes.N)])
        if learnable:
            params["W"] = V["W"]
        return params, i, gap

    return solve
