"""The cross-entropy UFM, bias-free or with a regularized bias (Zhu et al. 2021; docs/theory.md
§2.3, §3.5)."""

from ufm import convex, metrics, theory
from ufm.models.base import (TWO_FACTOR_SYMMETRY, Model, balanced_only, one_hot_targets,
                             register, sq)
from ufm.models.plain import (LAM_B, TWO_FACTOR, class_logits, penalised_bound, two_factor_init,
                             two_factor_measurements)


def objective(params, hyper, sizes, session=None):
    """(1/N) Σ CE(W h_{k,i} + b, k) + λ_W/2‖W‖² + λ_H/2‖H‖² + λ_b/2‖b‖²  (Zhu et al. 2021).

    params: W [K, d], H [d, N], and b [K] for `ce-bias`; hyper: lam_W, lam_H (and lam_b).
    """
    W, H = params["W"], params["H"]
    logits = W @ H
    penalty = hyper["lam_W"] / 2 * sq(W) + hyper["lam_H"] / 2 * sq(H)
    if "b" in params:
        logits = logits + params["b"][:, None]
        penalty = penalty + hyper["lam_b"] / 2 * sq(params["b"])
    Y = one_hot_targets(sizes, logits.dtype)
    ce = metrics.cross_entropy(logits, Y) / sizes.N
    return ce + penalty


CE = convex.TwoFactor("ce")


def cross_entropy_model(name, bias):
    """The cross-entropy UFM (Zhu et al. 2021), bias-free or with a regularized bias."""
    hypers = TWO_FACTOR + ((LAM_B,) if bias else ())
    return Model(
        name, f"cross-entropy UFM: (1/N)Σ CE(Wh{' + b' if bias else ''}, y) + λ_W/2‖W‖² + "
              f"λ_H/2‖H‖²{' + λ_b/2‖b‖²' if bias else ''} (Zhu et al. 2021)",
        two_factor_init(bias), objective, two_factor_measurements(False), hypers,
        lambda K: K - 1, 1.0,
        balanced_only(lambda hyper, sizes: theory.cross_entropy(hyper, sizes, bias)),
        bias="regularized" if bias else None, bound_inputs=class_logits,
        lower_bound=penalised_bound(CE, "regularized" if bias else None),
        convex_min_d=lambda K: K, solver=convex.solve, two_factor=CE,
        symmetries=TWO_FACTOR_SYMMETRY)


register("ce")(lambda: cross_entropy_model("ce", False))
register("ce-bias")(lambda: cross_entropy_model("ce-bias", True))
