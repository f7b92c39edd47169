"""Objectives of the unconstrained features models (docs/theory.md §2) and the registry of named models.

A model is a `Model` of pure functions. Sizes (K, n, d) are static Python ints; the λ's are a dict
of scalar leaves, so a new value never recompiles and a grid is a `vmap` away. The linear and ReLU
extended models are the depth-2 case of one layered model.
"""
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ufm import geometry, metrics, theory


class Sizes(NamedTuple):
    """Static sizes: K classes, n samples per class, feature dimension d.

    n is one count (balanced classes) or a tuple of K per-class counts (n_1, …, n_K); columns stay
    class-major either way.
    """

    K: int
    n: object  # int, or tuple of K ints
    d: int

    @property
    def balanced(self):
        return not isinstance(self.n, tuple)

    @property
    def counts(self):
        """(n_1, …, n_K)."""
        return (self.n,) * self.K if self.balanced else self.n

    @property
    def N(self):
        return sum(self.counts)

    @property
    def classes(self):
        """What ufm.metrics takes for the class layout: K, or the per-class counts."""
        return self.K if self.balanced else self.n


def one_hot_targets(sizes, dtype=None):
    """Y = I_K ⊗ 1_nᵀ  [K, N] (class-major columns; with per-class counts, block k has n_k)."""
    if sizes.balanced:
        return jnp.kron(jnp.eye(sizes.K, dtype=dtype), jnp.ones((1, sizes.n), dtype=dtype))
    labels = metrics.class_labels(sizes.counts, sizes.N)
    return jnp.asarray(labels[None, :] == np.arange(sizes.K)[:, None], dtype)


def _sq(A):
    return jnp.sum(A * A)


# --- plain UFM ---------------------------------------------------------------------------------

def plain_objective(params, hyper, sizes):
    """1/(2N)‖WH + b1ᵀ − Y‖² + λ_W/2‖W‖² + λ_H/2‖H‖² + λ_b/2‖b‖²  (Tirer & Bruna eqs. 3, 5, 14).

    params: W [K, d], H [d, N], and b [K] when the model has a bias; hyper: lam_W, lam_H, and lam_b
    when the bias is regularized (absent ⇒ bias-free, eq. 5, or unregularized bias, eq. 14).
    """
    W, H = params["W"], params["H"]
    logits = W @ H
    penalty = hyper["lam_W"] / 2 * _sq(W) + hyper["lam_H"] / 2 * _sq(H)
    if "b" in params:
        logits = logits + params["b"][:, None]
        if "lam_b" in hyper:
            penalty = penalty + hyper["lam_b"] / 2 * _sq(params["b"])
    Y = one_hot_targets(sizes, logits.dtype)
    return _sq(logits - Y) / (2 * sizes.N) + penalty


def _plain_init(bias):
    def init(key, sizes, scale):
        """W, H (and b) with i.i.d. N(0, scale²) entries; `scale` a scalar or a dict per block."""
        names = ("W", "H", "b") if bias else ("W", "H")
        shapes = {"W": (sizes.K, sizes.d), "H": (sizes.d, sizes.N), "b": (sizes.K,)}
        return _gaussian_blocks(key, {k: shapes[k] for k in names}, scale)

    return init


def plain_measurements(mse):
    """measure(params, sizes, hyper) for the one-level models: NC1/NC2 of H, NC2 of W, NC3, norms,
    Papyan's suite, and with a bias its summary; for the MSE models with a bias also Han et al.'s
    decomposition (an MSE identity; with their single λ = λ_W for both W and b)."""

    def measure(params, sizes, hyper):
        W, H = params["W"], params["H"]
        out = metrics.feature_measurements(H, sizes.classes, "H")
        out.update(metrics.classifier_measurements(W, H, sizes.classes))
        out["norm_H"] = jnp.linalg.norm(H)
        out.update(metrics.papyan_suite(W, H, params.get("b"), sizes.classes))
        if "b" in params:
            out["b_mean"] = jnp.mean(params["b"])
            out["b_spread"] = jnp.max(params["b"]) - jnp.min(params["b"])
            if mse and sizes.balanced:  # their W̃_LS formula is for balanced classes
                han = metrics.han_decomposition(W, params["b"], H, hyper["lam_W"])
                out.update(han_nc1=han.nc1, han_nc23=han.nc23, han_ls_perp=han.ls_perp)
        return out

    return measure


def cross_entropy_objective(params, hyper, sizes):
    """(1/N) Σ CE(W h_{k,i} + b, k) + λ_W/2‖W‖² + λ_H/2‖H‖² + λ_b/2‖b‖²  (Zhu et al. 2021).

    params: W [K, d], H [d, N], and b [K] for `ce-bias`; hyper: lam_W, lam_H (and lam_b).
    """
    W, H = params["W"], params["H"]
    logits = W @ H
    penalty = hyper["lam_W"] / 2 * _sq(W) + hyper["lam_H"] / 2 * _sq(H)
    if "b" in params:
        logits = logits + params["b"][:, None]
        penalty = penalty + hyper["lam_b"] / 2 * _sq(params["b"])
    Y = one_hot_targets(sizes, logits.dtype)
    ce = -jnp.sum(Y * jax.nn.log_softmax(logits, axis=0)) / sizes.N
    return ce + penalty


# --- layered (extended / deep) UFM -------------------------------------------------------------

ACTIVATIONS = {"linear": lambda x: x, "relu": jax.nn.relu}


def layered_features(params, activation):
    """Feature levels of W_L σ(W_{L−1} … σ(W_1 H_1)): {'H1': H_1, 'Z2': W_1H_1, 'H2': σ(Z2), …}.

    Z_{l+1} = W_l H_l is the pre-activation, H_{l+1} = σ(Z_{l+1}); all [d, N].
    """
    sigma = ACTIVATIONS[activation]
    depth = _depth(params)
    H = params["H1"]
    levels = {"H1": H}
    for layer in range(1, depth):  # over layers (static depth), not over gradient steps
        Z = params[f"W{layer}"] @ H
        H = sigma(Z)
        levels[f"Z{layer + 1}"] = Z
        levels[f"H{layer + 1}"] = H
    return levels


def _depth(params):
    return sum(1 for k in params if k.startswith("W"))


def _layered_objective(activation, loss="mse"):
    def objective(params, hyper, sizes):
        """1/(2N)‖W_L σ(W_{L−1} … σ(W_1 H_1)) − Y‖² + Σ_l λ_{W_l}/2‖W_l‖² + λ_{H1}/2‖H_1‖².

        Tirer & Bruna eq. 23 (σ = identity) and eq. 24 (σ = ReLU) at depth L = 2; the deep UFM of
        Súkeník et al. for any L. loss='ce': (1/N)Σ CE(W_L⋯W_1 h_{k,i}, k) instead of the squared
        error (the deep linear CE UFM of Garrod & Keating 2025). params: H1 [d, N], W_l [d, d] for
        l < L, W_L [K, d]; hyper: lam_H1, lam_W1 … lam_WL.
        """
        depth = _depth(params)
        H = layered_features(params, activation)[f"H{depth}"]
        logits = params[f"W{depth}"] @ H
        penalty = hyper["lam_H1"] / 2 * _sq(params["H1"])
        for layer in range(1, depth + 1):
            penalty = penalty + hyper[f"lam_W{layer}"] / 2 * _sq(params[f"W{layer}"])
        Y = one_hot_targets(sizes, logits.dtype)
        if loss == "ce":
            return -jnp.sum(Y * jax.nn.log_softmax(logits, axis=0)) / sizes.N + penalty
        return _sq(logits - Y) / (2 * sizes.N) + penalty

    return objective


def _layered_init(depth):
    def init(key, sizes, scale):
        """H1, W1 … W_L with i.i.d. N(0, scale²) entries; `scale` a scalar or a dict per block."""
        shapes = {"H1": (sizes.d, sizes.N)}
        for layer in range(1, depth):
            shapes[f"W{layer}"] = (sizes.d, sizes.d)
        shapes[f"W{depth}"] = (sizes.K, sizes.d)
        return _gaussian_blocks(key, shapes, scale)

    return init


def _layered_measure(activation):
    def measure(params, sizes, hyper):
        """Per level (H1, then each Z_l = W_{l−1}H_{l−1} and H_l = σ(Z_l); the logits W_L H_L):
        NC1 and NC2 against an OF and a simplex ETF, and the numerical rank of the class means
        and of the centred class means (relative cut-off metrics.RANK_TOL); NC2 of W_L and NC3 on
        the deepest level; with ReLU the nuclear norms of each Z_l and of H_l = σ(Z_l)."""
        depth = _depth(params)
        levels = layered_features(params, activation)
        out = {}
        for name, H in levels.items():
            if activation == "linear" and name.startswith("Z"):
                continue  # identical to H_l for the linear model
            out.update(metrics.feature_measurements(H, sizes.classes, name))
            out.update(metrics.rank_measurements(H, sizes.classes, name))
            if name.startswith("Z"):  # Theorem 4.2's assumption ‖W1H1‖_* = ‖σ(W1H1)‖_*
                out[f"nuclear_{name}"] = metrics.nuclear_norm(H)
                out[f"nuclear_H{name[1:]}"] = metrics.nuclear_norm(levels[f"H{name[1:]}"])
        W, H = params[f"W{depth}"], levels[f"H{depth}"]
        out.update(metrics.rank_measurements(W @ H, sizes.classes, "logits"))
        out.update(metrics.classifier_measurements(W, H, sizes.classes))
        out.update(metrics.papyan_suite(W, H, classes=sizes.classes))
        out["norm_H1"] = jnp.linalg.norm(params["H1"])
        return out

    return measure


def _gaussian_blocks(key, shapes, scale):
    keys = jax.random.split(key, len(shapes))
    out = {}
    for k, (name, shape) in zip(keys, shapes.items()):
        s = scale[name] if isinstance(scale, dict) else scale
        out[name] = s * jax.random.normal(k, shape, dtype=jnp.result_type(float))
    return out


# --- registry ----------------------------------------------------------------------------------

DEFAULT_DEPTH = 3  # the deep models' L when none is given

class Model(NamedTuple):
    """A named UFM: pure functions plus what the CLI and the theory need to know about it.

    init(key, sizes, scale) -> params; objective(params, hyper, sizes) -> scalar;
    measure(params, sizes, hyper) -> dict of scalars; hyper_names: the λ's it takes;
    theorem_min_d(K): the smallest d its theorem covers; init_scale: the paper's default;
    theory(hyper, sizes) -> the closed-form prediction (ufm.theory); project: for a constrained
    model, the Euclidean projection applied after every optimiser step (projected GD).
    """

    name: str
    init: Callable
    objective: Callable
    measure: Callable
    hyper_names: tuple
    theorem_min_d: Callable
    init_scale: float
    theory: Callable  # (hyper, sizes) -> closed-form prediction
    project: Callable = None  # (params, hyper, sizes) -> params on the constraint set, or None


def plain_model(name, bias):
    """bias ∈ {None, 'free', 'regularized'}: eqs. 5, 14 and 3."""
    hyper_names = ("lam_W", "lam_H") + (("lam_b",) if bias == "regularized" else ())
    min_d = (lambda K: K - 1) if bias == "free" else (lambda K: K)
    return Model(name, _plain_init(bias is not None), plain_objective, plain_measurements(True),
                 hyper_names, min_d, 1.0,
                 _balanced(lambda hyper, sizes: theory.plain(hyper, sizes, bias)))


def cross_entropy_model(name, bias):
    """The cross-entropy UFM (Zhu et al. 2021), bias-free or with a regularized bias."""
    hyper_names = ("lam_W", "lam_H") + (("lam_b",) if bias else ())
    return Model(name, _plain_init(bias), cross_entropy_objective, plain_measurements(False),
                 hyper_names,
                 lambda K: K - 1, 1.0,
                 _balanced(lambda hyper, sizes: theory.cross_entropy(hyper, sizes, bias)))


def layered_model(name, depth, activation, loss="mse"):
    """Depth-L model with L weight matrices after H_1 (L = 2: the extended UFMs, eqs. 23–24;
    L = 1 with MSE: the bias-free model), MSE or (linear only) cross-entropy."""
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth (--depth) must be an integer >= 1, got {depth!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if loss not in ("mse", "ce") or (loss == "ce" and activation != "linear"):
        raise ValueError(f"loss must be 'mse', or 'ce' with the linear activation; got {loss!r} "
                         f"with {activation!r}")
    hyper_names = ("lam_H1",) + tuple(f"lam_W{layer}" for layer in range(1, depth + 1))
    if loss == "ce":
        prediction = _balanced(lambda hyper, sizes: theory.deep_cross_entropy(hyper, sizes, depth))
    else:
        prediction = lambda hyper, sizes: theory.layered(hyper, sizes, depth, activation)
    return Model(name, _layered_init(depth), _layered_objective(activation, loss),
                 _layered_measure(activation), hyper_names,
                 (lambda K: K - 1) if loss == "ce" else (lambda K: K), 0.1, prediction)


def _balanced(prediction):
    """The theorems of Tirer & Bruna and Zhu et al. are for balanced classes: None otherwise."""
    return lambda hyper, sizes: prediction(hyper, sizes) if sizes.balanced else None


# --- fixed classifiers with norm-constrained features, and the layer-peeled model (docs/theory.md §3.9) -----

LOSSES = ("ce", "dot-regression")
FIXED_BLOCKS = ("E",)  # parameters that are inputs, not variables: stop_gradient in the objective
ALPHAS = ("none", "inverse-count")


def sample_weights(sizes, alpha, active, dtype):
    """Weight of each sample's loss [N]: 1/N_active (`none`, the paper's average) or α_k = 1/n_k
    (`inverse-count`, seed 000's Extension 1: Σ_k (1/n_k) Σ_i ℓ); zero for inactive samples."""
    counts = np.asarray(sizes.counts, np.float64)
    labels = metrics.class_labels(sizes.counts, sizes.N)
    if alpha == "inverse-count":
        return active * jnp.asarray(1.0 / counts[labels], dtype)
    return active / jnp.sum(active)


def _prototype_loss(loss, mask_softmax):
    def per_sample(H, C, sizes, hyper):
        """ℓ(h_{k,i}) for every column [N]; C [d, K] the classifier's class vectors."""
        Y = one_hot_targets(sizes, H.dtype)
        logits = C.T @ H  # [K, N]
        if loss == "dot-regression":  # (c_yᵀh − √E_H)² / (2√E_H)  (Yang et al., docs/theory.md §3.9)
            root = jnp.sqrt(hyper["E_H"])
            return (jnp.sum(Y * logits, axis=0) - root) ** 2 / (2 * root)
        if mask_softmax and "logit_mask" in hyper:  # drop the classes outside the session
            logits = jnp.where(hyper["logit_mask"][:, None] > 0, logits, -jnp.inf)
        # where, not Y·log p: a masked class has log p = −inf (such samples are inactive)
        return -jnp.sum(jnp.where(Y > 0, jax.nn.log_softmax(logits, axis=0), 0.0), axis=0)

    return per_sample


def _classifier_vectors(params):
    """The class vectors [d, K]: the fixed frame E, or the learnable Wᵀ of the layer-peeled model."""
    return jax.lax.stop_gradient(params["E"]) if "E" in params else params["W"].T


def _constrained_objective(loss, alpha, mask_softmax):
    per_sample = _prototype_loss(loss, mask_softmax)

    def objective(params, hyper, sizes):
        """Σ_k α_k Σ_i ℓ(h_{k,i}, C) (+ distill/2 · avg‖h − h^{(t−1)}‖² in incremental sessions).

        Yang et al. (Neural Collapse Terminus, seed 000) with C = E a fixed simplex ETF; Kim & Kim
        (seed 004) with C = Q a fixed non-negative OF; the layer-peeled model with C = Wᵀ. The
        norm constraints are not in the objective: `project` enforces them after every step.
        params: H [d, N] and E [d, K] (fixed) or W [K, d]; hyper: E_H (and E_W); in a session
        also active [N] (the samples optimised), anchor [d, N], distill, logit_mask [K].
        """
        H = params["H"]
        active = hyper.get("active", jnp.ones(sizes.N, H.dtype))
        weights = sample_weights(sizes, alpha, active, H.dtype)
        losses = per_sample(H, _classifier_vectors(params), sizes, hyper)
        value = jnp.sum(jnp.where(weights > 0, weights * losses, 0.0))
        if "anchor" in hyper:  # seed 000 Extension 2: tie features to the previous session's
            drift = jnp.sum((H - hyper["anchor"]) ** 2, axis=0)
            value = value + hyper["distill"] / 2 * jnp.sum(active * drift) / jnp.sum(active)
        return value

    return objective


def _project_features(halfspace, mask_softmax=False):
    def project(params, hyper, sizes):
        """Euclidean projection of every h_{k,i} onto ‖h‖² ≤ E_H (and, for the orthogonal
        classifier, onto Σ_{j≠k} hᵀq_j ≥ 0 first: for a half-space through the centre of the ball
        the projection onto the intersection is the ball's after the half-space's); rows of a
        learnable W onto ‖w_k‖² ≤ E_W."""
        H = params["H"]
        if halfspace:
            A = _other_class_sums(params["E"], sizes, hyper, mask_softmax)
            dot = jnp.sum(A * H, axis=0)
            norm2 = jnp.sum(A * A, axis=0)  # 0 only for a one-class masked session: no constraint
            H = H - jnp.minimum(dot, 0.0) / jnp.where(norm2 > 0, norm2, 1.0) * A
        H = _into_ball(H, hyper["E_H"], axis=0)
        if "active" in hyper:  # in a session, the frozen features are left exactly as they are
            H = jnp.where(hyper["active"][None, :] > 0, H, params["H"])
        out = dict(params, H=H)
        if "W" in params:
            out["W"] = _into_ball(params["W"], hyper["E_W"], axis=1)
        return out

    return project


def _other_class_sums(Q, sizes, hyper, mask_softmax):
    """a_{k,i} = Σ_{j≠k} q_j for every column (class k of sample i)  [d, N]; with the masked
    softmax in a session, over the session's classes only (the logits that exist there)."""
    if mask_softmax and "logit_mask" in hyper:
        Q = Q * hyper["logit_mask"][None, :]
    return (jnp.sum(Q, axis=1, keepdims=True) - Q)[:, metrics.class_labels(sizes.counts, sizes.N)]


def _into_ball(A, bound, axis):
    """Scale each column (axis=0) or row (axis=1) of A to squared norm ≤ bound."""
    norm = jnp.linalg.norm(A, axis=axis, keepdims=True)
    return A * jnp.minimum(1.0, jnp.sqrt(bound) / jnp.where(norm > 0, norm, 1.0))


def _constrained_init(frame):
    def init(key, sizes, scale):
        """H with i.i.d. N(0, scale²) entries (projected before the first step), and the fixed
        classifier E [d, K] (`etf`: simplex ETF, unit columns; `orthogonal`: non-negative OF) or
        a learnable W [K, d] (`learnable`)."""
        k_frame, k_blocks = jax.random.split(key)
        shapes = {"H": (sizes.d, sizes.N)}
        if frame == "learnable":
            shapes["W"] = (sizes.K, sizes.d)
        params = _gaussian_blocks(k_blocks, shapes, scale)
        if frame == "etf":
            params["E"] = geometry.simplex_etf(k_frame, sizes.K, sizes.d).astype(params["H"].dtype)
        elif frame == "orthogonal":
            params["E"] = geometry.nonnegative_orthogonal_frame(k_frame, sizes.K, sizes.d).astype(
                params["H"].dtype)
        return params

    return init


def _constrained_measure(frame, mask_softmax=False):
    def measure(params, sizes, hyper):
        return _constrained_measurements(params, sizes, hyper, frame == "orthogonal", mask_softmax)

    return measure


def _constrained_measurements(params, sizes, hyper, halfspace, mask_softmax):
    """Cosine of each class mean with its class vector (min and mean over classes), the largest
    ‖h‖²/E_H − 1 (≤ 0: feasible), NC1/NC2 of H, and for a learnable W its NC2, the largest
    ‖w_k‖²/E_W − 1 and the mean cosine between the minority classes' vectors."""
    H = params["H"]
    cos = prototype_cosines(params, sizes)
    out = {"cos_prototype_min": jnp.min(cos), "cos_prototype_mean": jnp.mean(cos),
           "feature_norm_excess": jnp.max(jnp.sum(H * H, axis=0)) / hyper["E_H"] - 1.0}
    out.update(metrics.feature_measurements(H, sizes.classes, "H"))
    if halfspace:
        A = _other_class_sums(params["E"], sizes, hyper, mask_softmax)
        dot = jnp.sum(A * H, axis=0)  # Σ_{j≠k} hᵀq_j ≥ 0, for the features being optimised
        if "active" in hyper:
            dot = jnp.where(hyper["active"] > 0, dot, jnp.inf)
        out["halfspace_min"] = jnp.min(dot)
    if "W" in params:
        W = params["W"]
        out.update(metrics.classifier_measurements(W, H, sizes.classes))
        out["classifier_norm_excess"] = jnp.max(jnp.sum(W * W, axis=1)) / hyper["E_W"] - 1.0
        out["minority_cos"] = minority_cosine(W, sizes.counts)
    return out


def prototype_cosines(params, sizes):
    """cos(h̄_k, c_k) of every class mean with its class vector (E's column or w_k)  [K]."""
    means, C = metrics.class_means(params["H"], sizes.classes), _classifier_vectors(params)
    return jnp.sum(means * C, axis=0) / (jnp.linalg.norm(means, axis=0) * jnp.linalg.norm(C, axis=0))


def minority_cosine(W, counts):
    """Mean cos(w_k, w_k') over pairs of minority classes (those with the smallest count); with
    balanced classes, over all pairs (−1/(K−1) for a simplex ETF). Minority collapse: → 1."""
    minority = np.flatnonzero(np.asarray(counts) == min(counts))
    if len(minority) < 2:  # one minority class: no pair
        return jnp.zeros((), W.dtype)
    return metrics.mean_pairwise_cosine(W[minority].T)


@functools.lru_cache(maxsize=None)
def constrained_model(name, frame, loss="ce", alpha="none", mask_softmax=False):
    """fixed-etf (frame 'etf'), fixed-orthogonal ('orthogonal') or lpm ('learnable'), with the
    loss, class weights and masked softmax given (static). Cached: one Model per variant."""
    if loss not in LOSSES:
        raise ValueError(f"loss (--loss) must be one of {', '.join(LOSSES)}, got {loss!r}")
    if alpha not in ALPHAS:
        raise ValueError(f"alpha (--alpha) must be one of {', '.join(ALPHAS)}, got {alpha!r}")
    hyper_names = ("E_H", "E_W") if frame == "learnable" else ("E_H",)
    min_d = (lambda K: K) if frame == "orthogonal" else (lambda K: K - 1)
    return Model(name, _constrained_init(frame), _constrained_objective(loss, alpha, mask_softmax),
                 _constrained_measure(frame, mask_softmax), hyper_names, min_d, 1.0,
                 lambda hyper, sizes: theory.prototypes(hyper, sizes, frame, loss, alpha),
                 _project_features(frame == "orthogonal", mask_softmax))


MODELS = {
    "bias-free": plain_model("bias-free", None),
    "unregularized-bias": plain_model("unregularized-bias", "free"),
    "regularized-bias": plain_model("regularized-bias", "regularized"),
    "linear-extended": layered_model("linear-extended", 2, "linear"),
    "relu-extended": layered_model("relu-extended", 2, "relu"),
    "deep-linear": layered_model("deep-linear", DEFAULT_DEPTH, "linear"),
    "deep-relu": layered_model("deep-relu", DEFAULT_DEPTH, "relu"),
    "deep-linear-ce": layered_model("deep-linear-ce", DEFAULT_DEPTH, "linear", "ce"),
    "ce": cross_entropy_model("ce", False),
    "ce-bias": cross_entropy_model("ce-bias", True),
    "fixed-etf": constrained_model("fixed-etf", "etf"),
    "fixed-orthogonal": constrained_model("fixed-orthogonal", "orthogonal"),
    "lpm": constrained_model("lpm", "learnable"),
}
FRAMES = {"fixed-etf": "etf", "fixed-orthogonal": "orthogonal", "lpm": "learnable"}
DEEP = {"deep-linear": ("linear", "mse"), "deep-relu": ("relu", "mse"),
        "deep-linear-ce": ("linear", "ce")}  # name -> (activation, loss); any --depth


def get_model(name, loss=None, alpha=None, mask_softmax=False, depth=None):
    """The registered model called `name`; ValueError naming the choices otherwise.

    loss ('ce' | 'dot-regression'), alpha ('none' | 'inverse-count') and mask_softmax choose a
    variant of the constrained models (fixed-etf, fixed-orthogonal, lpm) and apply to no other;
    depth (L ≥ 1, default 3) applies to the deep models only (deep-linear, deep-relu,
    deep-linear-ce).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    if depth is not None and name not in DEEP:
        raise ValueError(f"depth (--depth) applies only to the deep models "
                         f"({', '.join(DEEP)}), not to {name!r}")
    if name in DEEP and depth is not None and depth != DEFAULT_DEPTH:
        return _deep_model(name, depth)
    options = {"loss": loss, "alpha": alpha, "mask_softmax": mask_softmax or None}
    given = {k: v for k, v in options.items() if v is not None}
    if name not in FRAMES:
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise ValueError(f"{flags} apply only to the constrained models "
                             f"({', '.join(FRAMES)}), not to {name!r}")
        return MODELS[name]
    if name != "fixed-etf" and given.get("loss", "ce") != "ce":
        raise ValueError(f"loss (--loss) {given['loss']!r} is defined only for fixed-etf "
                         f"(docs/theory.md §3.9); {name!r} uses ce")
    if not given:
        return MODELS[name]
    return constrained_model(name, FRAMES[name], given.get("loss", "ce"),
                             given.get("alpha", "none"), bool(mask_softmax))


@functools.lru_cache(maxsize=None)
def _deep_model(name, depth):
    """deep-linear / deep-relu / deep-linear-ce at depth L (cached: one Model per depth)."""
    return layered_model(name, depth, *DEEP[name])


def model_depth(model):
    """L of a layered model (the number of weight matrices after H_1), None for the others."""
    return sum(1 for k in model.hyper_names if k.startswith("lam_W") and k[5:].isdigit()) or None
