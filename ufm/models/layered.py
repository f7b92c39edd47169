"""The layered UFMs: linear and ReLU extended models (Tirer & Bruna eqs. 23–24, depth 2) and the
deep linear / ReLU (MSE) and deep linear cross-entropy UFMs of any depth (Súkeník et al.; Garrod &
Keating 2025; docs/theory.md §2.2, §3.4, §3.10). One model for every depth: the extended models
are its L = 2 case."""
import jax
import jax.numpy as jnp

from ufm import metrics, theory
from ufm.models.base import (Model, Option, balanced_only, gaussian_blocks, lam,
                             one_hot_targets, register, sq)

ACTIVATIONS = {"linear": lambda x: x, "relu": jax.nn.relu}
DEFAULT_DEPTH = 3  # the deep models' L when none is given


def layered_features(params, activation):
    """Feature levels of W_L σ(W_{L−1} … σ(W_1 H_1)): {'H1': H_1, 'Z2': W_1H_1, 'H2': σ(Z2), …}.

    Z_{l+1} = W_l H_l is the pre-activation, H_{l+1} = σ(Z_{l+1}); all [d, N].
    """
    sigma = ACTIVATIONS[activation]
    depth = weight_count(params)
    H = params["H1"]
    levels = {"H1": H}
    for layer in range(1, depth):  # over layers (static depth), not over gradient steps
        Z = params[f"W{layer}"] @ H
        H = sigma(Z)
        levels[f"Z{layer + 1}"] = Z
        levels[f"H{layer + 1}"] = H
    return levels


def weight_count(params):
    """L: the weight matrices W1 … WL among the parameter blocks."""
    return sum(1 for k in params if k.startswith("W"))


def layered_objective(activation, loss="mse"):
    def objective(params, hyper, sizes, session=None):
        """1/(2N)‖W_L σ(W_{L−1} … σ(W_1 H_1)) − Y‖² + Σ_l λ_{W_l}/2‖W_l‖² + λ_{H1}/2‖H_1‖².

        Tirer & Bruna eq. 23 (σ = identity) and eq. 24 (σ = ReLU) at depth L = 2; the deep UFM of
        Súkeník et al. for any L. loss='ce': (1/N)Σ CE(W_L⋯W_1 h_{k,i}, k) instead of the squared
        error (the deep linear CE UFM of Garrod & Keating 2025). params: H1 [d, N], W_l [d, d] for
        l < L, W_L [K, d]; hyper: lam_H1, lam_W1 … lam_WL.
        """
        depth = weight_count(params)
        H = layered_features(params, activation)[f"H{depth}"]
        logits = params[f"W{depth}"] @ H
        penalty = hyper["lam_H1"] / 2 * sq(params["H1"])
        for layer in range(1, depth + 1):
            penalty = penalty + hyper[f"lam_W{layer}"] / 2 * sq(params[f"W{layer}"])
        Y = one_hot_targets(sizes, logits.dtype)
        if loss == "ce":
            return metrics.cross_entropy(logits, Y) / sizes.N + penalty
        return sq(logits - Y) / (2 * sizes.N) + penalty

    return objective


def layered_init(depth):
    def init(key, hyper, sizes):
        """H1, W1 … W_L with i.i.d. N(0, init_scale²) entries (a scalar or a dict per block)."""
        shapes = {"H1": (sizes.d, sizes.N)}
        for layer in range(1, depth):
            shapes[f"W{layer}"] = (sizes.d, sizes.d)
        shapes[f"W{depth}"] = (sizes.K, sizes.d)
        return gaussian_blocks(key, shapes, hyper["init_scale"])

    return init


def layered_measure(activation):
    def measure(params, hyper, sizes, session=None):
        """Per level (H1, then each Z_l = W_{l−1}H_{l−1} and H_l = σ(Z_l); the logits W_L H_L):
        NC1 and NC2 against an OF and a simplex ETF, and the numerical rank of the class means
        and of the centred class means (relative cut-off metrics.RANK_TOL); NC2 of W_L and NC3 on
        the deepest level; with ReLU the nuclear norms of each Z_l and of H_l = σ(Z_l)."""
        depth = weight_count(params)
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


def layered_symmetries(depth, activation):
    """The interfaces (W_(l+1), W_l) and (W1, H1) at which an orthogonal Q cancels: every one of
    them in the linear model; with ReLU, (W1, H1) before the first nonlinearity, and at each
    later interface only rotations among units with the same activation pattern (σ(QZ) = Qσ(Z)
    near the point when the rows Q mixes are positive on the same samples and negative on the
    rest: a local symmetry; docs/theory.md §6.1)."""
    pairs = (("W1", "H1"),)
    for layer in range(1, depth):
        if activation == "linear":
            pairs += ((f"W{layer + 1}", f"W{layer}"),)
        else:
            pairs += ((f"W{layer + 1}", f"W{layer}", _pattern(layer + 1)),)
    return pairs


def _pattern(level):
    """activity(params) -> [d, N] bool: which samples each unit of Z_level is active on (units
    with equal rows may be rotated among themselves)."""
    return lambda params: layered_features(params, "relu")[f"Z{level}"] > 0


def ce_constructions(depth):
    """constructions(hyper, sizes) -> {name: params} of the deep linear CE model: DNC, the
    low-rank blocks and the triangular tight frame (theory.ce_shapes), each at its optimal scale,
    factored with balanced factors (theory.balanced_factors)."""

    def constructions(hyper, sizes):
        if not sizes.balanced:
            raise ValueError("the constructions are for balanced classes (one --n)")
        found = theory.deep_ce_constructions(hyper, sizes, depth)
        return {name: theory.balanced_factors(c.alpha * c.shape, hyper, sizes, depth)
                for name, c in found.items() if c.rank <= sizes.d}

    return constructions


def relu_constructions(depth):
    """constructions(hyper, sizes) -> {'srg': params} of the deep ReLU MSE model: the triangular
    construction (theory.deep_relu_srg) at K = C(r, 2) classes, d ≥ K, balanced counts."""

    def constructions(hyper, sizes):
        found = theory.deep_relu_srg(hyper, sizes, depth)
        return {"srg": theory.srg_params(found, hyper, sizes, depth)}

    return constructions


def pre_activations(params, sizes=None):
    """(Z_2, …, Z_L): the ReLU model's pre-activations, where it has kinks at 0."""
    levels = layered_features(params, "relu")
    return tuple(levels[f"Z{layer}"] for layer in range(2, weight_count(params) + 1))


MAX_DEPTH = 64  # deeper programs take minutes to compile (see layered_model)
COMPILE_SECONDS_PER_LAYER = 0.5  # measured: docs/performance.md, "Deep models"


def layered_model(name, depth, activation, loss="mse"):
    """Depth-L model with L weight matrices after H_1 (L = 2: the extended UFMs, eqs. 23–24;
    L = 1 with MSE: the bias-free model), MSE or (linear only) cross-entropy."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth (--depth) must be an integer >= 1, got {depth!r}")
    if depth > MAX_DEPTH:
        raise ValueError(f"depth (--depth) must be at most {MAX_DEPTH}, got {depth}: every layer "
                         f"is its own block of the compiled program (its λ is a hyperparameter "
                         f"of its own), so compiling takes time and memory linear in L, about "
                         f"{COMPILE_SECONDS_PER_LAYER:g} s per layer on a CPU core — "
                         f"{depth * COMPILE_SECONDS_PER_LAYER / 60:.0f} min here")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if loss not in ("mse", "ce") or (loss == "ce" and activation != "linear"):
        raise ValueError(f"loss must be 'mse', or 'ce' with the linear activation; got {loss!r} "
                         f"with {activation!r}")
    hypers = (lam("lam_H1", "λ_H1, the first-level features' weight decay"),) + tuple(
        lam(f"lam_W{layer}", f"λ of W{layer}", tied="lam_W") for layer in range(1, depth + 1))
    if loss == "ce":
        prediction = balanced_only(
            lambda hyper, sizes: theory.deep_cross_entropy(hyper, sizes, depth))
    else:
        prediction = lambda hyper, sizes: theory.layered(hyper, sizes, depth, activation)
    fit = "Σ CE(·, y)/N" if loss == "ce" else "‖· − Y‖²/(2N)"
    sigma = "" if activation == "linear" else "σ = ReLU, "
    return Model(name=name,
                 description=f"{fit} of W_L σ(W_(L−1) ⋯ σ(W_1 H_1)) with {sigma}weight decay "
                             f"on every W_l and H_1",
                 init=layered_init(depth), objective=layered_objective(activation, loss),
                 measure=layered_measure(activation), hypers=hypers,
                 theorem_min_d=(lambda K: K - 1) if loss == "ce" else (lambda K: K),
                 init_scale=0.1, theory=prediction,
                 depth=depth, symmetries=layered_symmetries(depth, activation),
                 kinks=None if activation == "linear" else pre_activations,
                 constructions=(ce_constructions(depth) if loss == "ce" else
                                relu_constructions(depth) if activation == "relu" else None))


DEPTH = Option("depth", DEFAULT_DEPTH, "L, the weight matrices after H1 (default 3)")

register("linear-extended")(lambda: layered_model("linear-extended", 2, "linear"))
register("relu-extended")(lambda: layered_model("relu-extended", 2, "relu"))
register("deep-linear", (DEPTH,))(
    lambda depth: layered_model("deep-linear", depth, "linear"))
register("deep-relu", (DEPTH,))(lambda depth: layered_model("deep-relu", depth, "relu"))
register("deep-linear-ce", (DEPTH,))(
    lambda depth: layered_model("deep-linear-ce", depth, "linear", "ce"))
