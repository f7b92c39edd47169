"""Objectives of the unconstrained features models (SPEC §2) and the registry of named models.

A model is a `Model` of pure functions. Sizes (K, n, d) are static Python ints; the λ's are a dict
of scalar leaves, so a new value never recompiles and a grid is a `vmap` away. The linear and ReLU
extended models are the depth-2 case of one layered model.
"""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ufm import metrics, theory


class Sizes(NamedTuple):
    """Static sizes: K classes, n samples per class, feature dimension d."""

    K: int
    n: int
    d: int

    @property
    def N(self):
        return self.K * self.n


def one_hot_targets(sizes, dtype=None):
    """Y = I_K ⊗ 1_nᵀ  [K, N] (class-major columns)."""
    return jnp.kron(jnp.eye(sizes.K, dtype=dtype), jnp.ones((1, sizes.n), dtype=dtype))


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
        out = metrics.feature_measurements(H, sizes.K, "H")
        out.update(metrics.classifier_measurements(W, H))
        out["norm_H"] = jnp.linalg.norm(H)
        out.update(metrics.papyan_suite(W, H, params.get("b")))
        if "b" in params:
            out["b_mean"] = jnp.mean(params["b"])
            out["b_spread"] = jnp.max(params["b"]) - jnp.min(params["b"])
            if mse:
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


def _layered_objective(activation):
    def objective(params, hyper, sizes):
        """1/(2N)‖W_L σ(W_{L−1} … σ(W_1 H_1)) − Y‖² + Σ_l λ_{W_l}/2‖W_l‖² + λ_{H1}/2‖H_1‖².

        Tirer & Bruna eq. 23 (σ = identity) and eq. 24 (σ = ReLU) at depth L = 2.
        params: H1 [d, N], W_l [d, d] for l < L, W_L [K, d]; hyper: lam_H1, lam_W1 … lam_WL.
        """
        depth = _depth(params)
        H = layered_features(params, activation)[f"H{depth}"]
        logits = params[f"W{depth}"] @ H
        penalty = hyper["lam_H1"] / 2 * _sq(params["H1"])
        for layer in range(1, depth + 1):
            penalty = penalty + hyper[f"lam_W{layer}"] / 2 * _sq(params[f"W{layer}"])
        Y = one_hot_targets(sizes, logits.dtype)
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
        """NC1/NC2 of every feature level (and pre-activation), NC2 of W_L, NC3 on the deepest;
        with ReLU also the nuclear norms of each pre-activation Z_l and of H_l = σ(Z_l)."""
        depth = _depth(params)
        levels = layered_features(params, activation)
        out = {}
        for name, H in levels.items():
            if activation == "linear" and name.startswith("Z"):
                continue  # identical to H_l for the linear model
            out.update(metrics.feature_measurements(H, sizes.K, name))
            if name.startswith("Z"):  # Theorem 4.2's assumption ‖W1H1‖_* = ‖σ(W1H1)‖_*
                out[f"nuclear_{name}"] = metrics.nuclear_norm(H)
                out[f"nuclear_H{name[1:]}"] = metrics.nuclear_norm(levels[f"H{name[1:]}"])
        out.update(metrics.classifier_measurements(params[f"W{depth}"], levels[f"H{depth}"]))
        out.update(metrics.papyan_suite(params[f"W{depth}"], levels[f"H{depth}"]))
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

class Model(NamedTuple):
    """A named UFM: pure functions plus what the CLI and the theory need to know about it.

    init(key, sizes, scale) -> params; objective(params, hyper, sizes) -> scalar;
    measure(params, sizes, hyper) -> dict of scalars; hyper_names: the λ's it takes;
    theorem_min_d(K): the smallest d its theorem covers; init_scale: the paper's default;
    theory(hyper, sizes) -> the closed-form prediction (ufm.theory).
    """

    name: str
    init: Callable
    objective: Callable
    measure: Callable
    hyper_names: tuple
    theorem_min_d: Callable
    init_scale: float
    theory: Callable  # (hyper, sizes) -> closed-form prediction


def plain_model(name, bias):
    """bias ∈ {None, 'free', 'regularized'}: eqs. 5, 14 and 3."""
    hyper_names = ("lam_W", "lam_H") + (("lam_b",) if bias == "regularized" else ())
    min_d = (lambda K: K - 1) if bias == "free" else (lambda K: K)
    return Model(name, _plain_init(bias is not None), plain_objective, plain_measurements(True),
                 hyper_names, min_d, 1.0,
                 lambda hyper, sizes: theory.plain(hyper, sizes, bias))


def cross_entropy_model(name, bias):
    """The cross-entropy UFM (Zhu et al. 2021), bias-free or with a regularized bias."""
    hyper_names = ("lam_W", "lam_H") + (("lam_b",) if bias else ())
    return Model(name, _plain_init(bias), cross_entropy_objective, plain_measurements(False),
                 hyper_names,
                 lambda K: K - 1, 1.0, lambda hyper, sizes: theory.cross_entropy(hyper, sizes, bias))


def layered_model(name, depth, activation):
    """Depth-L model with L weight matrices after H_1 (L = 2: the extended UFMs, eqs. 23–24)."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got depth={depth}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    hyper_names = ("lam_H1",) + tuple(f"lam_W{layer}" for layer in range(1, depth + 1))
    return Model(name, _layered_init(depth), _layered_objective(activation),
                 _layered_measure(activation), hyper_names, lambda K: K, 0.1,
                 lambda hyper, sizes: theory.layered(hyper, sizes, depth, activation))


MODELS = {
    "bias-free": plain_model("bias-free", None),
    "unregularized-bias": plain_model("unregularized-bias", "free"),
    "regularized-bias": plain_model("regularized-bias", "regularized"),
    "linear-extended": layered_model("linear-extended", 2, "linear"),
    "relu-extended": layered_model("relu-extended", 2, "relu"),
    "ce": cross_entropy_model("ce", False),
    "ce-bias": cross_entropy_model("ce-bias", True),
}


def get_model(name):
    """The registered model called `name`; ValueError naming the choices otherwise."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]
