"""The proofs of Tirer & Bruna's theorems as chains of numerical checks (Appendices A–F).

A proof is a list of named `Step`s. Each step is a pure function of a point (the parameters of the
theorem's model, as a dict of arrays) returning (left side, right side) of one inequality or
identity of the proof. An inequality `lhs ≥ rhs` must hold at *every* point; at a global minimiser
it must be tight, because the proof's bound is attained exactly there. Steps marked
`where="optimum"` are statements about minimisers only (e.g. the assumption of Theorem 4.2) and are
evaluated only there.

The chains are written in the separable form of the proofs (Appendix A.1, B, C): after within-class
averaging (Jensen) the objective depends on the class means only; the optimal classifier for fixed
features is closed-form; the regularisers are bounded by nuclear norms (AM–GM, Lemma C.1); the trace
bound tr Z ≤ ‖Z‖_* reduces the fit to singular values; and a scalar problem per singular value has
the two regimes of Lemma A.1 / B.1 (or the quartic of Theorem 4.1).
"""
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ufm import certificate as cert_mod
from ufm import config as config_mod
from ufm import limits, linalg, metrics, optimise, theory
from ufm.metrics import nuclear_norm
from ufm.models import MODELS, layered_features, one_hot_targets
from ufm.models.plain import objective as plain_objective


class Step(NamedTuple):
    """One link of a proof: fn(point) -> (lhs, rhs), scalars or arrays of one shape.

    relation '>=': lhs ≥ rhs everywhere, with equality at the minimiser; '=': an identity.
    where: 'everywhere' (checked at random points and at the optimum) or 'optimum' (a property of
    minimisers only). tight: whether equality is expected at the optimum for this configuration
    (False e.g. for an angle bound at the zero solution, where angles are undefined).
    """

    name: str
    relation: str
    fn: Callable
    where: str = "everywhere"
    tight: bool = True
    doc: str = ""


class Proof(NamedTuple):
    """A theorem's proof: `steps(hyper, sizes)` builds the chain for one configuration.

    model: the registered model whose gradient-descent solution is the minimiser; blocks(sizes):
    name -> shape of a point; features/classifier: the blocks the degenerate random points act on.
    """

    theorem: str
    title: str
    model: str
    steps: Callable
    blocks: Callable
    features: str
    classifier: str
    finish: Callable = None  # (rng, point, sizes) -> point: a random point put in the theorem's setting


# --- shared pieces ---------------------------------------------------------------------------------

def _sq(A):
    return jnp.sum(A * A)


def _collapse(H, K):
    """Every feature replaced by its class mean: H̄ ⊗ 1_nᵀ  [d, N]."""
    return jnp.repeat(metrics.class_means(H, K), H.shape[1] // K, axis=1)


def _singular_values(A, count):
    """The `count` largest singular values of A, padded with zeros  [count]."""
    s = linalg.singular_values(A)[:count]
    return jnp.pad(s, (0, count - s.shape[0]))


def _ridge_chain(S, K, lam_W, lam_H, n, count):
    """The separable tail of Appendix A.1 for features whose class means (or centred means) are S.

    With W(S) = Sᵀ(SSᵀ + Kλ_W I)⁻¹ both share S's singular vectors; per singular value s the
    classifier's is w = s/(s² + Kλ_W). Returns (separable value, after AM–GM, scalar bound):
      Σ_j (w_j s_j − 1)²/(2K) + λ_W/2 w_j² + nλ_H/2 s_j²
      ≥ Σ_j (p_j − 1)²/(2K) + √(nλ_Wλ_H) p_j,  p_j = w_j s_j      (AM–GM, equal iff λ_W w² = nλ_H s²)
    over `count` directions (K for Theorem 3.1, K − 1 after centring for 3.2).
    """
    s = _singular_values(S, count)
    w = s / (s * s + K * lam_W)
    p = w * s
    separable = jnp.sum((p - 1) ** 2 / (2 * K) + lam_W / 2 * w * w + n * lam_H / 2 * s * s)
    balanced = jnp.sum((p - 1) ** 2 / (2 * K) + math.sqrt(n * lam_W * lam_H) * p)
    return separable, balanced


def _lemma_a1_value(c, count, K):
    """Lemma A.1/B.1: min over p ≥ 0 of Σ_{count} (p − 1)²/(2K) + (c/K)p, in its two regimes:
    p = 1 − c for c < 1 (value (count/K)(c − c²/2)), p = 0 for c ≥ 1 (value count/(2K))."""
    return count / K * ((c - c * c / 2) if c < 1 else 0.5)


def _fit_to_identity(Z, target):
    """‖Z − T‖²/(2K) for a K×K logit matrix Z of the class means."""
    return _sq(Z - target) / (2 * Z.shape[0])


# --- Theorem 3.1 (Appendix A / A.1) ---------------------------------------------------------------

def _theorem_31(hyper, sizes):
    K, n = sizes.K, sizes.n
    lam_W, lam_H = float(hyper["lam_W"]), float(hyper["lam_H"])
    c = K * math.sqrt(n * lam_W * lam_H)
    h = {"lam_W": lam_W, "lam_H": lam_H}
    f = lambda W, H: plain_objective({"W": W, "H": H}, h, sizes)
    Y = lambda H: one_hot_targets(sizes, H.dtype)

    def jensen(p):
        return f(p["W"], p["H"]), f(p["W"], _collapse(p["H"], K))

    def optimal_classifier(p):
        Hc = _collapse(p["H"], K)
        return f(p["W"], Hc), f(_optimal_W(Hc, Y(Hc), lam_W), Hc)

    def singular_values(p):
        Hc = _collapse(p["H"], K)
        separable, _ = _ridge_chain(metrics.class_means(Hc, K), K, lam_W, lam_H, n, K)
        return f(_optimal_W(Hc, Y(Hc), lam_W), Hc), separable

    def am_gm(p):
        return _ridge_chain(metrics.class_means(p["H"], K), K, lam_W, lam_H, n, K)

    def scalar(p):
        _, balanced = _ridge_chain(metrics.class_means(p["H"], K), K, lam_W, lam_H, n, K)
        return balanced, jnp.asarray(_lemma_a1_value(c, K, K), balanced.dtype)

    return [
        Step("jensen_within_class", ">=", jensen,
             doc="f(W, H) ≥ f(W, H̄⊗1ᵀ): replacing features by class means (Jensen)"),
        Step("optimal_classifier", ">=", optimal_classifier,
             doc="f(W, H) ≥ f(W(H), H), W(H) = Y Hᵀ(H Hᵀ + Nλ_W I)⁻¹ (eq. 36)"),
        Step("singular_value_reduction", "=", singular_values,
             doc="f(W(H), H) = Σ_j (w_j s_j − 1)²/(2K) + λ_W w_j²/2 + nλ_H s_j²/2 (eq. 37)"),
        Step("am_gm_balance", ">=", am_gm,
             doc="λ_W w²/2 + nλ_H s²/2 ≥ √(nλ_Wλ_H)·ws, equal iff balanced (eqs. 42–43)"),
        Step("scalar_problem", ">=", scalar,
             doc="Σ_j (p_j − 1)²/(2K) + (c/K)p_j ≥ f*: p = 1 − c if c < 1, else 0 (Lemma A.1, eq. 44)"),
    ]


def _optimal_W(H, Y, lam_W):
    """W(H) = Y Hᵀ (H Hᵀ + N λ_W I)⁻¹  [K, d] (eq. 36), via a d×d solve."""
    d, N = H.shape
    return linalg.solve(H @ H.T + N * lam_W * jnp.eye(d, dtype=H.dtype), H @ Y.T).T


# --- Theorem 3.2 (Appendix B) ----------------------------------------------------------------------

def _theorem_32(hyper, sizes):
    K, n = sizes.K, sizes.n
    lam_W, lam_H = float(hyper["lam_W"]), float(hyper["lam_H"])
    c = K * math.sqrt(n * lam_W * lam_H)
    h = {"lam_W": lam_W, "lam_H": lam_H}
    f = lambda W, H, b: plain_objective({"W": W, "H": H, "b": b}, h, sizes)

    def best_bias(W, H):
        """b*(W, H) = (1/K)1 − W h̄_G (eqs. 46–47)."""
        return jnp.full((K,), 1.0 / K, H.dtype) - W @ jnp.mean(H, axis=1)

    def centred(H):
        Hc = _collapse(H, K)
        return Hc - jnp.mean(Hc, axis=1, keepdims=True)

    def centred_classifier(Mc):
        Yc = one_hot_targets(sizes, Mc.dtype) - 1.0 / K  # P ⊗ 1ᵀ: the targets once b = 1/K
        return _optimal_W(Mc, Yc, lam_W)

    third = lambda H: jnp.full((K,), 1.0 / K, H.dtype)

    def bias_elimination(p):
        W, H = p["W"], p["H"]
        return f(W, H, p["b"]), f(W, H, best_bias(W, H))

    def jensen(p):
        W, H = p["W"], p["H"]
        return f(W, H, best_bias(W, H)), f(W, _collapse(H, K), best_bias(W, H))

    def centring(p):
        W, H = p["W"], p["H"]
        return f(W, _collapse(H, K), best_bias(W, H)), f(W, centred(H), third(H))

    def optimal_classifier(p):
        Mc = centred(p["H"])
        return f(p["W"], Mc, third(Mc)), f(centred_classifier(Mc), Mc, third(Mc))

    def singular_values(p):
        Mc = centred(p["H"])
        separable, _ = _ridge_chain(metrics.class_means(Mc, K), K, lam_W, lam_H, n, K - 1)
        return f(centred_classifier(Mc), Mc, third(Mc)), separable

    def am_gm(p):
        return _ridge_chain(metrics.centred_means(p["H"], K), K, lam_W, lam_H, n, K - 1)

    def scalar(p):
        _, balanced = _ridge_chain(metrics.centred_means(p["H"], K), K, lam_W, lam_H, n, K - 1)
        return balanced, jnp.asarray(_lemma_a1_value(c, K - 1, K), balanced.dtype)

    def equiangular_features(p):
        cos = metrics.mean_pairwise_cosine(metrics.class_means(p["H"], K))
        return cos, jnp.asarray(-1.0 / (K - 1), cos.dtype)

    def equiangular_classifier(p):
        cos = metrics.mean_pairwise_cosine(p["W"].T)
        return cos, jnp.asarray(-1.0 / (K - 1), cos.dtype)

    collapsed = c < 1
    return [
        Step("bias_elimination", ">=", bias_elimination,
             doc="f(W, H, b) ≥ f(W, H, b*), b* = (1/K)1 − W h̄_G (eqs. 46–47)"),
        Step("jensen_within_class", ">=", jensen,
             doc="replacing features by class means lowers f (Jensen, eq. 48)"),
        Step("centring", ">=", centring,
             doc="dropping the global mean h̄_G: fit unchanged, ‖H̄‖² ≥ ‖M̄‖² (triangle step)"),
        Step("optimal_classifier", ">=", optimal_classifier,
             doc="W(M̄) = P M̄ᵀ(M̄M̄ᵀ + Kλ_W I)⁻¹ minimises the centred problem"),
        Step("singular_value_reduction", "=", singular_values,
             doc="the centred problem as Σ_{j<K} (w_j s_j − 1)²/(2K) + λ_W w_j²/2 + nλ_H s_j²/2"),
        Step("am_gm_balance", ">=", am_gm,
             doc="λ_W w²/2 + nλ_H s²/2 ≥ √(nλ_Wλ_H)·ws (AM–GM, eq. 49)"),
        Step("scalar_problem", ">=", scalar,
             doc="Σ_{j<K} (p_j − 1)²/(2K) + (c/K)p_j ≥ f* (Lemma B.1: p = 1 − c, or 0 if c ≥ 1)"),
        Step("equiangular_bound_features", ">=", equiangular_features, tight=collapsed,
             doc="mean pairwise cosine of the class means ≥ −1/(K−1), equal for a simplex ETF"),
        Step("equiangular_bound_classifier", ">=", equiangular_classifier, tight=collapsed,
             doc="mean pairwise cosine of the rows of W ≥ −1/(K−1), equal for a simplex ETF"),
    ]


# --- Lemma C.1 -------------------------------------------------------------------------------------

def _lemma_c1(hyper, sizes):
    def bound(p):
        A, B = p["A"], p["B"]
        return (_sq(A) + _sq(B)) / 2, nuclear_norm(A @ B)

    def svd_factors(Z):
        U, s, Vt = linalg.svd(Z)
        root = jnp.sqrt(s)
        return U * root, root[:, None] * Vt  # A* = U S^½, B* = S^½ Vᵀ

    def minimiser_value(p):
        Z = p["A"] @ p["B"]
        A, B = svd_factors(Z)
        return (_sq(A) + _sq(B)) / 2, nuclear_norm(Z)

    def minimiser_product(p):
        Z = p["A"] @ p["B"]
        A, B = svd_factors(Z)
        return A @ B, Z

    def balanced(p):
        return p["A"].T @ p["A"], p["B"] @ p["B"].T

    return [
        Step("nuclear_norm_bound", ">=", bound,
             doc="½(‖A‖² + ‖B‖²) ≥ ‖AB‖_* for every factorisation (eq. 58)"),
        Step("svd_minimiser_value", "=", minimiser_value,
             doc="A* = U S^½, B* = S^½ Vᵀ from Z = U S Vᵀ attain ½(‖A*‖² + ‖B*‖²) = ‖Z‖_*"),
        Step("svd_minimiser_product", "=", minimiser_product, doc="A* B* = Z"),
        Step("balanced_at_minimiser", "=", balanced, where="optimum",
             doc="a minimiser is balanced: AᵀA = BBᵀ"),
    ]


def lemma_c1_point(W, H, lam_W, lam_H):
    """The factors (A, B) = ((λ_W/λ_H)^¼ W, (λ_H/λ_W)^¼ H) of the bias-free model: AB = WH and
    √(λ_Wλ_H)·½(‖A‖² + ‖B‖²) = λ_W‖W‖²/2 + λ_H‖H‖²/2, so Lemma C.1 is tight at its minimiser."""
    r = (lam_W / lam_H) ** 0.25
    return {"A": r * W, "B": H / r}


# --- Theorems 4.1 and 4.2 (Appendices C, E) --------------------------------------------------------

def _three_factor(hyper, sizes):
    K, n = sizes.K, sizes.n
    l2, l1, lh = float(hyper["lam_W2"]), float(hyper["lam_W1"]), float(hyper["lam_H1"])
    a = (n * lh * l1 * l2) ** (1.0 / 3.0)
    fstar = theory.layered({"lam_W2": l2, "lam_W1": l1, "lam_H1": lh}, sizes).objective
    return K, n, l2, l1, lh, a, fstar


def _three_factor_tail(Z, a, fstar):
    """(fit + (3/2)a Σσ^{2/3}, Σ_j g(σ_j), f*) for the class-mean logits Z [K, K]."""
    K = Z.shape[0]
    s = _singular_values(Z, K)
    eye = jnp.eye(K, dtype=Z.dtype)
    schatten = 1.5 * a * jnp.sum(s ** (2.0 / 3.0))
    separable = jnp.sum((s - 1) ** 2 / (2 * K) + 1.5 * a * s ** (2.0 / 3.0))
    return _fit_to_identity(Z, eye) + schatten, separable, jnp.asarray(fstar, Z.dtype)


def _three_factor_steps(Zfn, a, fstar):
    """The shared tail: (3/2)a‖Z‖_{S2/3}^{2/3} bound, trace bound and scalar problem."""
    def singular_values(p):
        bound, separable, _ = _three_factor_tail(Zfn(p), a, fstar)
        return bound, separable

    def scalar(p):
        _, separable, f = _three_factor_tail(Zfn(p), a, fstar)
        return separable, f

    return [
        Step("singular_value_reduction", ">=", singular_values,
             doc="‖Z − I‖² ≥ Σ_j (σ_j − 1)² since tr Z ≤ ‖Z‖_* (von Neumann)"),
        Step("flat_spectrum_scalar_problem", ">=", scalar,
             doc="Σ_j g(σ_j) ≥ K·min_s g(s), g(s) = (s−1)²/(2K) + (3/2)a s^{2/3}; the minimiser "
                 "is the largest root t⁴ − t + Ka = 0 (s = t³) for Ka < 2^{−4/3}, else s = 0"),
    ]


def _theorem_41(hyper, sizes):
    K, n, l2, l1, lh, a, fstar = _three_factor(hyper, sizes)
    h = {"lam_W2": l2, "lam_W1": l1, "lam_H1": lh}
    f = MODELS["linear-extended"].objective
    with_H1 = lambda p, H1: dict(p, H1=H1)
    eye = lambda Z: jnp.eye(K, dtype=Z.dtype)

    def means(p):
        return metrics.class_means(p["H1"], K)

    def Z(p):
        return p["W2"] @ p["W1"] @ means(p)

    def jensen(p):
        return f(p, h, sizes), f(with_H1(p, _collapse(p["H1"], K)), h, sizes)

    def subproblem_features(p):
        """Lemma C.1 on (W1, H̄1): λ_W1‖W1‖²/2 + nλ_H1‖H̄1‖²/2 ≥ √(nλ_W1λ_H1)‖W1H̄1‖_* (eq. 63)."""
        collapsed = f(with_H1(p, _collapse(p["H1"], K)), h, sizes)
        H2 = p["W1"] @ means(p)
        return collapsed, (_fit_to_identity(Z(p), eye(H2)) + l2 / 2 * _sq(p["W2"])
                           + math.sqrt(n * l1 * lh) * nuclear_norm(H2))

    def subproblem_classifier(p):
        """Lemma C.1 on (W2, W1): λ_W2‖W2‖²/2 + λ_W1‖W1‖²/2 ≥ √(λ_W2λ_W1)‖W2W1‖_* (eq. 65)."""
        collapsed = f(with_H1(p, _collapse(p["H1"], K)), h, sizes)
        V = p["W2"] @ p["W1"]
        return collapsed, (_fit_to_identity(Z(p), eye(V)) + math.sqrt(l2 * l1) * nuclear_norm(V)
                           + n * lh / 2 * _sq(means(p)))

    def balance_features(p):
        _, rhs = subproblem_features(p)
        return rhs, _three_factor_tail(Z(p), a, fstar)[0]

    def balance_classifier(p):
        _, rhs = subproblem_classifier(p)
        return rhs, _three_factor_tail(Z(p), a, fstar)[0]

    def flat(block):
        def fn(p):
            s = linalg.singular_values(block(p))[:K]
            return s[0], s[-1]
        return fn

    return [
        Step("jensen_within_class", ">=", jensen,
             doc="f(W2, W1, H1) ≥ f(W2, W1, H̄1⊗1ᵀ) (Jensen, eq. 57)"),
        Step("subproblem_features", ">=", subproblem_features,
             doc="Lemma C.1 on W1, H1: the two-factor problem in (W2, H2 = W1H1) (eq. 63)"),
        Step("subproblem_classifier", ">=", subproblem_classifier,
             doc="Lemma C.1 on W2, W1: the two-factor problem in (W2W1, H1) (eq. 65)"),
        Step("balance_features", ">=", balance_features,
             doc="λ_W2‖W2‖²/2 + β‖H̄2‖_* ≥ (3/2)a Σσ_j(W2H̄2)^{2/3}, β = √(nλ_W1λ_H1)"),
        Step("balance_classifier", ">=", balance_classifier,
             doc="β'‖W2W1‖_* + nλ_H1‖H̄1‖²/2 ≥ (3/2)a Σσ_j(W2W1H̄1)^{2/3}, β' = √(λ_W2λ_W1)"),
        *_three_factor_steps(Z, a, fstar),
        Step("flat_spectrum_features", "=", flat(lambda p: p["W1"] @ means(p)), where="optimum",
             doc="sub-problem (63)'s solution: H̄2 = W1H̄1 has equal singular values (an OF)"),
        Step("flat_spectrum_classifier", "=", flat(lambda p: p["W2"] @ p["W1"]), where="optimum",
             doc="sub-problem (65)'s solution: W2W1 has equal singular values"),
    ]


def _theorem_42(hyper, sizes):
    K, n, l2, l1, lh, a, fstar = _three_factor(hyper, sizes)
    h = {"lam_W2": l2, "lam_W1": l1, "lam_H1": lh}
    f = MODELS["relu-extended"].objective
    beta = math.sqrt(l1 * lh)

    def H2(p):
        return layered_features(p, "relu")["H2"]

    def reduced(W2, H):
        """G(W2, H2) = 1/(2N)‖W2H2 − Y‖² + λ_W2‖W2‖²/2 + √(λ_W1λ_H1)‖H2‖_* (eq. 75)."""
        Y = one_hot_targets(sizes, H.dtype)
        return _sq(W2 @ H - Y) / (2 * sizes.N) + l2 / 2 * _sq(W2) + beta * nuclear_norm(H)

    def Z(p):
        return p["W2"] @ metrics.class_means(H2(p), K)

    def lemma_c1(p):
        return l1 / 2 * _sq(p["W1"]) + lh / 2 * _sq(p["H1"]), beta * nuclear_norm(p["W1"] @ p["H1"])

    def assumption(p):
        return nuclear_norm(p["W1"] @ p["H1"]), nuclear_norm(H2(p))

    def relu_reduction(p):
        return f(p, h, sizes), reduced(p["W2"], H2(p))

    def jensen(p):
        return reduced(p["W2"], H2(p)), reduced(p["W2"], _collapse(H2(p), K))

    def balance(p):
        _, collapsed = jensen(p)
        return collapsed, _three_factor_tail(Z(p), a, fstar)[0]

    def optimal_value(p):
        value = f(p, h, sizes)
        return value, jnp.asarray(fstar, value.dtype)

    return [
        Step("lemma_c1_features", ">=", lemma_c1,
             doc="λ_W1‖W1‖²/2 + λ_H1‖H1‖²/2 ≥ √(λ_W1λ_H1)‖W1H1‖_* (Lemma C.1)"),
        Step("nuclear_norm_equality", "=", assumption, where="optimum",
             doc="the theorem's assumption ‖W1H1‖_* = ‖σ(W1H1)‖_* at a global minimiser"),
        Step("relu_reduction", ">=", relu_reduction, where="optimum",
             doc="f_ReLU ≥ G(W2, σ(W1H1)) (eq. 75): Lemma C.1 plus the assumption"),
        Step("jensen_within_class", ">=", jensen,
             doc="G(W2, H2) ≥ G(W2, H̄2⊗1ᵀ): G is convex in H2 (Jensen)"),
        Step("balance", ">=", balance,
             doc="λ_W2‖W2‖²/2 + √n·β‖H̄2‖_* ≥ (3/2)a Σσ_j(W2H̄2)^{2/3}"),
        *_three_factor_steps(Z, a, fstar),
        Step("optimal_value", "=", optimal_value, where="optimum",
             doc="the ReLU model's minimum equals the linear model's f* (Theorem 4.2)"),
    ]


# --- Theorem 5.1 (Appendix F) ----------------------------------------------------------------------

def _theorem_51(hyper, sizes):
    K, n = sizes.K, sizes.n
    lam_W = float(hyper["lam_W"])

    def features(p):
        return jnp.repeat(p["Hbar"], n, axis=1) + p["E"]

    def fit(W, H):
        """The part of eq. 80 that depends on W: 1/(2N)‖WH − Y‖² + λ_W‖W‖²/2 (eq. 81)."""
        Y = one_hot_targets(sizes, H.dtype)
        return _sq(W @ H - Y) / (2 * sizes.N) + lam_W / 2 * _sq(W)

    def rho(Hbar):
        return jnp.trace(Hbar.T @ Hbar) / K

    def optimal_classifier(p):
        H = features(p)
        return fit(p["W"], H), fit(_optimal_W(H, one_hot_targets(sizes, H.dtype), lam_W), H)

    def push_through(p):
        Hbar = p["Hbar"]
        d = Hbar.shape[0]
        mu = K * lam_W
        lhs = linalg.solve(Hbar @ Hbar.T + mu * jnp.eye(d, dtype=Hbar.dtype), Hbar).T
        rhs = linalg.solve(Hbar.T @ Hbar + mu * jnp.eye(K, dtype=Hbar.dtype), Hbar.T)
        return lhs, rhs

    def clean_solution(p):
        Hbar = p["Hbar"]
        Hc = jnp.repeat(Hbar, n, axis=1)
        return _optimal_W(Hc, one_hot_targets(sizes, Hc.dtype), lam_W), Hbar.T / (rho(Hbar) + K * lam_W)

    def large_n_limit(p):
        H, Hbar = features(p), p["Hbar"]
        sigma2 = _sq(p["E"]) / p["E"].size
        kappa_W_star = Hbar.T / (rho(Hbar) + K * (lam_W + sigma2))
        return _optimal_W(H, one_hot_targets(sizes, H.dtype), lam_W), kappa_W_star

    return [
        Step("optimal_classifier", ">=", optimal_classifier,
             doc="for fixed H: f(W) ≥ f(W(H)), W(H) = Y Hᵀ(HHᵀ + Nλ_W I)⁻¹ (eq. 82)"),
        Step("push_through_identity", "=", push_through,
             doc="H̄ᵀ(H̄H̄ᵀ + Kλ_W I)⁻¹ = (H̄ᵀH̄ + Kλ_W I)⁻¹H̄ᵀ (eq. 84)"),
        Step("collapsed_solution", "=", clean_solution,
             doc="for H = H̄*⊗1ᵀ with H̄*ᵀH̄* = ρI: W(H) = H̄*ᵀ/(ρ + Kλ_W) = W* (eq. 84)"),
        Step("large_n_limit", "=", large_n_limit, where="optimum",
             doc="W(H̄*⊗1ᵀ + E) = κW*, κ = (ρ + Kλ_W)/(ρ + K(λ_W + σ²)) once E has its limit "
                 "moments (class sums 0, EEᵀ = Nσ²I; eqs. 86–88)"),
    ]


# --- registry --------------------------------------------------------------------------------------

def _plain_blocks(bias):
    def blocks(sizes):
        out = {"W": (sizes.K, sizes.d), "H": (sizes.d, sizes.N)}
        if bias:
            out["b"] = (sizes.K,)
        return out
    return blocks


def _layered_blocks(sizes):
    return {"W2": (sizes.K, sizes.d), "W1": (sizes.d, sizes.d), "H1": (sizes.d, sizes.N)}


PROOFS = {
    "3.1": Proof("3.1", "bias-free UFM collapses to an orthogonal frame", "bias-free", _theorem_31,
                 _plain_blocks(False), "H", "W"),
    "3.2": Proof("3.2", "unregularized bias: collapse to a simplex ETF", "unregularized-bias",
                 _theorem_32, _plain_blocks(True), "H", "W"),
    "C.1": Proof("C.1", "min_{AB=Z} ½(‖A‖² + ‖B‖²) = ‖Z‖_*", "bias-free", _lemma_c1,
                 lambda s: {"A": (s.K, s.d), "B": (s.d, s.N)}, "B", "A"),
    "4.1": Proof("4.1", "linear extended UFM: orthogonal collapse at both levels", "linear-extended",
                 _theorem_41, _layered_blocks, "H1", "W2"),
    "4.2": Proof("4.2", "ReLU extended UFM: non-negative orthogonal collapse of σ(W1H1)",
                 "relu-extended", _theorem_42, _layered_blocks, "H1", "W2"),
    "5.1": Proof("5.1", "fixed perturbed features: W attenuated, structure kept", "bias-free",
                 _theorem_51, lambda s: {"W": (s.K, s.d), "Hbar": (s.d, s.K), "E": (s.d, s.N)},
                 "E", "W", lambda rng, p, sizes: dict(p, Hbar=_random_of(rng, p["Hbar"]))),
}


def get_proof(name):
    """The proof of theorem `name` ('3.1', '3.2', 'C.1', '4.1', '4.2', '5.1')."""
    key = str(name).upper().removeprefix("LEMMA").strip(" -_")
    if key not in PROOFS:
        raise ValueError(f"unknown theorem {name!r}; choose one of: {', '.join(PROOFS)}")
    return PROOFS[key]


# --- evaluation ------------------------------------------------------------------------------------

KINDS = ("gaussian", "rank-deficient", "zero-classifier", "collapsed", "zero")
# (holds, tight): relative to max(1, |lhs|, |rhs|). float64 round-off of the SVDs and solves is
# ~1e-13 at these sizes; 1e-8 at the optimum is what gradient descent reaches in float64.
TOLERANCES = {np.dtype("float64"): (1e-9, 1e-8), np.dtype("float32"): (1e-4, 1e-3)}


def _random_of(rng, like):
    """A random orthogonal frame of the shape of `like` [d, K] with Gram ρI, ρ from like's scale."""
    d, K = like.shape
    Q, _ = np.linalg.qr(rng.standard_normal((d, K)))
    rho = float(np.sum(like * like)) / K
    return math.sqrt(rho) * Q


def random_points(proof, sizes, R, seed=0):
    """R random points [float64 numpy dicts] cycling through KINDS: Gaussian blocks of random
    scale (10^U(−2, 1)), rank-deficient features (rank 1 … K−1, and W1 too), zero classifier,
    exactly collapsed features, and the origin. Returns (points, kinds)."""
    rng = np.random.default_rng(seed)
    shapes = proof.blocks(sizes)
    points, kinds = [], []
    for i in range(R):
        kind = KINDS[i % len(KINDS)]
        p = {k: 10 ** rng.uniform(-2, 1) * rng.standard_normal(s) for k, s in shapes.items()}
        if kind == "rank-deficient":
            for name in (proof.features, "W1"):
                if name in p:
                    rows, cols = p[name].shape
                    r = int(rng.integers(1, sizes.K))
                    p[name] = rng.standard_normal((rows, r)) @ rng.standard_normal((r, cols)) / r
        elif kind == "zero-classifier":
            p[proof.classifier] = np.zeros(shapes[proof.classifier])
        elif kind == "collapsed" and shapes[proof.features][1] == sizes.N:
            p[proof.features] = np.asarray(_collapse(jnp.asarray(p[proof.features]), sizes.K))
        elif kind == "zero":
            p = {k: np.zeros(s) for k, s in shapes.items()}
        if proof.finish is not None:
            p = proof.finish(rng, p, sizes)
        points.append(p)
        kinds.append(kind)
    return points, kinds


def evaluate(steps, points, at, dtype=None):
    """Rows {name, at, lhs, rhs, gap, holds, expected} of every step at every point.

    at='random': only steps with where='everywhere', which must hold (≥ up to round-off, '='
    to round-off). at='optimum': every step; where tight, |gap| must be within the tight tolerance.
    For '≥' gap = lhs − rhs; for '=' gap = ‖lhs − rhs‖ and lhs, rhs are reported as norms.
    """
    dtype = np.dtype(dtype or jnp.result_type(float))
    hold_tol, tight_tol = TOLERANCES[dtype]
    chosen = [s for s in steps if at == "optimum" or s.where == "everywhere"]
    stacked = {k: jnp.asarray(np.stack([p[k] for p in points]), dtype) for k in points[0]}
    values = jax.jit(jax.vmap(lambda p: [s.fn(p) for s in chosen]))(stacked)
    rows = []
    for step, (lhs, rhs) in zip(chosen, values):
        lhs, rhs = np.asarray(lhs, np.float64), np.asarray(rhs, np.float64)
        for i in range(len(points)):
            l, r = lhs[i], rhs[i]
            if step.relation == ">=":
                gap, l, r = float(l - r), float(l), float(r)
            else:
                gap, l, r = float(np.linalg.norm(l - r)), float(np.linalg.norm(l)), float(np.linalg.norm(r))
            scale = max(1.0, abs(l), abs(r))
            tight = at == "optimum" and step.tight
            if not np.isfinite(gap):
                holds = False
            elif tight:
                holds = abs(gap) <= tight_tol * scale
            elif step.relation == ">=":
                holds = gap >= -hold_tol * scale
            else:
                holds = gap <= hold_tol * scale
            rows.append({"name": step.name, "at": at, "lhs": l, "rhs": r, "gap": gap,
                         "holds": bool(holds), "expected": "tight" if tight else "holds",
                         "relation": step.relation})
    return rows


def _exact_moment_noise(rng, sizes, sigma):
    """E [d, N] with the n → ∞ moments exactly: class sums zero and EEᵀ = Nσ²I (needs N − K ≥ d)."""
    X = rng.standard_normal((sizes.N, sizes.d))
    X = X - np.repeat(X.reshape(sizes.K, sizes.n, sizes.d).mean(axis=1), sizes.n, axis=0)
    Q, _ = np.linalg.qr(X)  # orthonormal columns, each orthogonal to every class indicator
    return sigma * math.sqrt(sizes.N) * Q.T


def fixed_features_classifier(H, Y, lam_W, lr, steps):
    """Gradient descent on W alone for fixed features H [d, N] (eq. 81), from W = 0: one scan."""
    return _classifier_scan(H, Y, jnp.asarray(lam_W, H.dtype), jnp.asarray(lr, H.dtype), steps)


@functools.partial(jax.jit, static_argnums=4)
def _classifier_scan(H, Y, lam_W, lr, steps):
    N = H.shape[1]
    grad = jax.grad(lambda W: _sq(W @ H - Y) / (2 * N) + lam_W / 2 * _sq(W))
    W0 = jnp.zeros((Y.shape[0], H.shape[0]), H.dtype)
    return jax.lax.scan(lambda W, _: (W - lr * grad(W), None), W0, None, length=steps)[0]


def optimum_point(proof, sizes, hyper, *, steps, lr, seed=0, restarts=1, optimizer="gd",
                  init_scale=None, sigma=0.1, tol=None):
    """The optimiser's solution of the theorem's model as a point of its proof, the Result (None
    for 5.1, whose features are fixed and only W is optimised, by GD) and its certificate."""
    from ufm.runner import train

    lams = {k: hyper[k] for k in MODELS[proof.model].hyper_names}
    if proof.theorem == "5.1":
        rng = np.random.default_rng(seed)
        rho = theory.plain(lams, sizes).rho_H
        Hbar = math.sqrt(rho) * np.linalg.qr(rng.standard_normal((sizes.d, sizes.K)))[0]
        E = _exact_moment_noise(rng, sizes, sigma)
        H = jnp.asarray(np.repeat(Hbar, sizes.n, axis=1) + E, jnp.result_type(float))
        Y = one_hot_targets(sizes, H.dtype)
        W = fixed_features_classifier(H, Y, lams["lam_W"], lr, steps)
        value = lambda W: _sq(W @ H - Y) / (2 * sizes.N) + lams["lam_W"] / 2 * _sq(W)
        f, g = jax.value_and_grad(value)(W)
        best = value(jnp.asarray(theory.optimal_classifier(H, Y, lams["lam_W"]), H.dtype))
        cert = cert_mod.certificate([float(f)], jnp.linalg.norm(g) / max(abs(float(f)), 1e-6),
                                    None, steps, cert_mod.certificate_tol(tol), float(best))
        return {"W": np.asarray(W), "Hbar": Hbar, "E": E}, None, cert
    result = train(proof.model, K=sizes.K, n=sizes.n, d=sizes.d, steps=steps, log_every=steps,
                   seed=seed, lr=lr, restarts=restarts, optimizer=optimizer,
                   init_scale=init_scale, tol=tol, allow_small_d=True, **lams)
    params = {k: np.asarray(v, np.float64) for k, v in result.params.items()}
    if proof.theorem == "C.1":
        params = lemma_c1_point(params["W"], params["H"], lams["lam_W"], lams["lam_H"])
    return params, result, result.certificate


def run_proof(theorem, *, K=4, n=10, d=8, random=200, seed=0, steps=50000, lr=0.1, restarts=1,
              optimizer="gd", init_scale=None, sigma=0.1, tol=None, allow_small_d=False, **lams):
    """Check every step of a proof at `random` random points and at the gradient-descent solution.

    Returns the proof.json document {"theorem", "config", "steps": rows, "summary"}; rows as in
    `evaluate`, with the random points' index and kind. ValueError (naming the flag) on bad input.
    """
    from ufm import spec as spec_mod

    n = config_mod.parse_counts(n, K)
    if isinstance(n, tuple):
        raise ValueError(f"n (--n) must be one count for the proofs (balanced classes), got {n}")
    proof = get_proof(theorem)
    # the run's checks, as `ufm train` makes them (ufm.spec); then the proof's own
    run = spec_mod.build(proof.model, K=K, n=n, d=d, steps=steps, log_every=steps, seed=seed,
                         lr=lr, init_scale=init_scale, restarts=restarts,
                         optimizer="gd" if proof.theorem == "5.1" else optimizer,
                         allow_small_d=allow_small_d, tol=tol, **lams)
    model, sizes, hyper = run.model, run.sizes, dict(run.hyper)
    for name in model.hyper_names:
        if hyper[name] <= 0:
            raise ValueError(f"{name} ({config_mod.flag(name)}) must be > 0 for the proof of "
                             f"{proof.theorem} (the bounds divide by it), got {hyper[name]}")
    if isinstance(random, bool) or not isinstance(random, int) or random < 0:
        raise ValueError(f"random (--random) must be an integer >= 0, got {random!r}")
    limits.check_fits(random * limits.run_bytes(model, sizes, "gd", 1),
                      f"{random:,} random points (--random) of the {model.name} model at K={K}, "
                      f"n={n}, d={d}")
    if proof.theorem == "5.1":
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma (--sigma) must be finite and >= 0, got {sigma}")
        if sizes.N - K < d:
            raise ValueError(f"n (--n)={n} is too small for Theorem 5.1's exact-moment noise: it "
                             f"needs K·n − K >= d, i.e. n >= {math.ceil((d + K) / K)} for K={K}, d={d}")
    steps_of = proof.steps(hyper, sizes)
    rows = []
    if random:
        points, kinds = random_points(proof, sizes, random, seed)
        for j, row in enumerate(evaluate(steps_of, points, "random")):
            i = j % random
            rows.append(dict(row, point=i, kind=kinds[i]))
    point, result, cert = optimum_point(proof, sizes, hyper, steps=steps, lr=lr, seed=seed,
                                        restarts=restarts, optimizer=optimizer,
                                        init_scale=init_scale, sigma=sigma, tol=tol)
    rows += evaluate(steps_of, [point], "optimum")
    config = dict(theorem=proof.theorem, model=proof.model, K=K, n=n, d=d, random=random,
                  seed=seed, steps=steps, restarts=restarts, optimizer=optimizer,
                  dtype=str(jnp.result_type(float)), **{k: v for k, v in hyper.items()})
    if proof.theorem == "5.1":
        config["sigma"] = sigma
    if result is not None:
        config["objective"] = result.final["objective"]
        config["closed_form"] = None if result.theory is None else result.theory.objective
        config["diverged_at"] = result.diverged_at
    config["certificate"] = cert
    return {"theorem": proof.theorem, "title": proof.title, "config": config, "steps": rows,
            "summary": summarise(rows)}


def summarise(rows):
    """Per step and place: how many points, how many hold, the worst gap  [list of dicts]."""
    out = {}
    for row in rows:
        key = (row["name"], row["at"])
        s = out.setdefault(key, {"name": row["name"], "at": row["at"], "points": 0, "hold": 0,
                                 "worst": row, "relation": row["relation"]})
        s["points"] += 1
        s["hold"] += row["holds"]
        worse = (-row["gap"] if row["relation"] == ">=" and row["expected"] == "holds"
                 else abs(row["gap"]))
        was = s["worst"]
        was_v = (-was["gap"] if was["relation"] == ">=" and was["expected"] == "holds"
                 else abs(was["gap"]))
        if (not row["holds"] and was["holds"]) or (row["holds"] == was["holds"] and worse > was_v):
            s["worst"] = row
    return [dict(s, worst={k: s["worst"][k] for k in ("lhs", "rhs", "gap", "holds")})
            for s in out.values()]


def format_table(doc):
    """The printed table: one line per step and place, the worst point for the random ones."""
    lines = [f"Theorem {doc['theorem']}: {doc['title']}  ({doc['config']['dtype']})",
             f"{'step':34s} {'at':8s} {'rel':3s} {'lhs':>14s} {'rhs':>14s} {'gap':>10s}  holds"]
    for s in doc["summary"]:
        w = s["worst"]
        holds = f"{s['hold']}/{s['points']}" if s["at"] == "random" else ("yes" if w["holds"] else "NO")
        lines.append(f"{s['name']:34s} {s['at']:8s} {s['relation']:3s} {w['lhs']:14.8g} "
                     f"{w['rhs']:14.8g} {w['gap']:10.2e}  {holds}")
    return "\n".join(lines)


def step_gap(step, lhs, rhs):
    """lhs − rhs for '≥' (≥ 0, 0 when tight); ‖lhs − rhs‖ for '='."""
    if step.relation == ">=":
        return lhs - rhs
    return jnp.sqrt(_sq(lhs - rhs))


def gap_trajectory(theorem, sizes, hyper, *, steps, log_every, seed=0, optimizer="gd"):
    """The gap of every step of a proof along one gradient-descent run of its model, as one scan.

    hyper: the model's λ's with `lr` and `init_scale`. Returns (steps [T], {name: gap [T]}),
    recorded at step 0 and every `log_every` steps.
    """
    proof = get_proof(theorem)
    if proof.theorem == "5.1":
        raise ValueError("theorem 5.1 optimises W for fixed features; its steps have no "
                         "trajectory of the model to follow")
    model = MODELS[proof.model]
    chain = proof.steps(hyper, sizes)
    point_of = ((lambda p: lemma_c1_point(p["W"], p["H"], hyper["lam_W"], hyper["lam_H"]))
                if proof.theorem == "C.1" else (lambda p: p))
    jhyper = optimise.as_hyper(hyper)
    problem = optimise.Problem(model, sizes, optimise.get_optimizer(optimizer, model))

    def gaps(params):
        point = point_of(params)
        return {s.name: step_gap(s, *s.fn(point)) for s in chain}

    @jax.jit
    def run(key):
        state = optimise.init_state(problem, key, jhyper)

        def interval(s, _):
            s = optimise.advance(problem, s, jhyper, log_every)
            return s, (s.step, gaps(s.params))

        _, (at, history) = jax.lax.scan(interval, state, None, length=steps // log_every)
        first = gaps(state.params)
        return (jnp.concatenate([state.step[None], at]),
                {k: jnp.concatenate([first[k][None], v]) for k, v in history.items()})

    at, history = run(jax.random.PRNGKey(seed))
    return np.asarray(at), {k: np.asarray(v) for k, v in history.items()}
