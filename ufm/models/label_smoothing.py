"""The cross-entropy UFM with label smoothing: targets ỹ = (1 − ε)e_y + (ε/K)1 (docs/theory.md
§3.12). The loss is convex in the logits, so the global certificate and the convex solver apply
as for `ce`; its closed form (balanced classes) is below."""
import math
from typing import NamedTuple

import jax.numpy as jnp

from ufm import convex, metrics
from ufm.models.base import (TWO_FACTOR_SYMMETRY, GlobalCertificate, Hyper, Model, balanced_only,
                             one_hot_targets, register, sq)
from ufm.models.cross_entropy import CE_LOSS
from ufm.models.plain import (TWO_FACTOR, class_logits, penalised_bound, two_factor_init,
                             two_factor_measurements)

SMOOTHING = Hyper("smoothing", 0.1, "ε, the label smoothing: targets (1 − ε)e_y + ε/K (default "
                                    "0.1, in [0, 1))", below=1.0)


def smoothed_targets(hyper, K, dtype=None):
    """(1 − ε)I + (ε/K)11ᵀ  [K, K]: column k the target distribution of class k."""
    eps = hyper["smoothing"]
    return (1 - eps) * jnp.eye(K, dtype=dtype) + eps / K * jnp.ones((K, K), dtype)


def objective(params, hyper, sizes, session=None):
    """(1/N) Σ_i [lse(W h_i) − ⟨ỹ_i, W h_i⟩] + λ_W/2‖W‖² + λ_H/2‖H‖²  (cross-entropy against the
    smoothed targets ỹ_i = (1 − ε)e_{y_i} + (ε/K)1). params: W [K, d], H [d, N]."""
    W, H = params["W"], params["H"]
    logits = W @ H
    Y = smoothed_targets(hyper, sizes.K, logits.dtype) @ one_hot_targets(sizes, logits.dtype)
    ce = metrics.cross_entropy(logits, Y) / sizes.N
    return ce + hyper["lam_W"] / 2 * sq(W) + hyper["lam_H"] / 2 * sq(H)


class SmoothingPrediction(NamedTuple):
    """The minimiser of the label-smoothed CE UFM (balanced, d ≥ K − 1)."""

    objective: float
    structure: str  # 'ETF' or 'zero'
    c: float  # K·√(nλ_Wλ_H)
    p: float  # the softmax probability of the correct class at the optimum
    x: float  # class logits M = x·P, P = I − 11ᵀ/K

    def describe(self):
        return (f"class logits x·(I − 11ᵀ/K), x = {self.x:.4g}: correct-class probability "
                f"{self.p:.4g} (zero solution once 1 − (K−1)(ε/K + μ√n) ≤ 1/K)")


def theory(hyper, sizes):
    """Closed form (float64, independent of the simulator; docs/theory.md §3.12). By symmetry and
    the shift invariance of CE the class logits are M = x·P; with μ = √(λ_Wλ_H) the objective is
    log(K − 1 + eˣ) − x/K − x(1 − ε)(K − 1)/K + μ√n(K − 1)x, minimised where the correct class's
    probability is p = 1 − (K − 1)(ε/K + μ√n): x = log(p(K − 1)/(1 − p)) when p > 1/K, else 0."""
    K, n = sizes.K, sizes.n
    eps = float(hyper["smoothing"])
    mu = math.sqrt(float(hyper["lam_W"]) * float(hyper["lam_H"]))
    p = 1 - (K - 1) * (eps / K + mu * math.sqrt(n))
    x = math.log(p * (K - 1) / (1 - p)) if p > 1 / K else 0.0
    value = (math.log(K - 1 + math.exp(x)) - x / K - x * (1 - eps) * (K - 1) / K
             + mu * math.sqrt(n) * (K - 1) * x)
    return SmoothingPrediction(value, "ETF" if x > 0 else "zero", K * math.sqrt(n) * mu,
                               max(p, 1 / K), x)


REDUCED = convex.TwoFactor(CE_LOSS, lambda hyper, sizes: smoothed_targets(hyper, sizes.K))

register("ce-smoothing")(lambda: Model(
    name="ce-smoothing",
    description="(1/N)Σ CE(Wh, (1 − ε)e_y + ε/K) + λ_W/2‖W‖² + λ_H/2‖H‖² (label smoothing)",
    init=two_factor_init(False), objective=objective, measure=two_factor_measurements(False),
    hypers=TWO_FACTOR + (SMOOTHING,), theorem_min_d=lambda K: K - 1, init_scale=1.0,
    theory=balanced_only(theory),
    certificate=GlobalCertificate(class_logits, penalised_bound(REDUCED, None),
                                  convex_min_d=lambda K: K, two_factor=REDUCED,
                                  solver=convex.solve),
    symmetries=TWO_FACTOR_SYMMETRY))
