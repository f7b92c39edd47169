"""Minority collapse in the cross-entropy UFM (docs/theory.md §5.5): a group of K_g ≥ 2 classes
of n_g samples has coinciding classifiers at the global optimum iff √n_g ≤ μ·N — checked against
the convex solver's certified optimum on both sides of the threshold, with and without a bias,
at two groups and at three clusters with counts in the thousands (Hong & Ling's setting)."""
import jax.numpy as jnp
import numpy as np
import pytest

from ufm import metrics, theory
from ufm.runner import train


def within_group_spread(r, groups):
    """a_g per group: the mean own-class logit minus the mean other-class logit within the group,
    over the group's classes (0 exactly when the group's classifiers coincide)."""
    counts = tuple(n for K, n in groups for _ in range(K))
    M = np.asarray(r.params["W"]) @ np.asarray(metrics.class_means(jnp.asarray(r.params["H"]),
                                                                   counts))
    out, start = [], 0
    for K, _ in groups:
        block = M[start:start + K, start:start + K]
        start += K
        out.append(np.trace(block) / K - (block.sum() - np.trace(block)) / (K * (K - 1)))
    return out


CASES = [  # (groups, λ_W, λ_H, model and bias λ); the threshold's side is computed, not typed
    (((2, 45), (2, 1)), 1e-2, 1e-2, "ce", None),  # N = 92 < 100: not collapsed
    (((2, 53), (2, 1)), 1e-2, 1e-2, "ce", None),  # N = 108: collapsed
    (((3, 60), (2, 4)), 4e-3, 2.5e-2, "ce", None),  # μ = 0.01, R = 15: N = 188 < 200
    (((3, 68), (2, 4)), 4e-3, 2.5e-2, "ce", None),  # R = 17: N = 212
    (((2, 45), (2, 1)), 1e-2, 1e-2, "ce-bias", 0.01),
    (((2, 53), (2, 1)), 1e-2, 1e-2, "ce-bias", 0.01),
    (((2, 3000), (3, 1500), (5, 30)), 5e-3, 5e-3, "ce-bias", 0.01),  # μN = 53.25: 3000 > 2836
    (((2, 3000), (3, 2000), (5, 30)), 5e-3, 5e-3, "ce-bias", 0.01),  # μN = 60.75: all collapse
]


@pytest.mark.parametrize("groups, lam_W, lam_H, model, lam_b", CASES)
def test_minority_collapse_threshold_against_the_certified_optimum(groups, lam_W, lam_H, model,
                                                                   lam_b):
    counts = tuple(n for K, n in groups for _ in range(K))
    K = len(counts)
    extra = {} if lam_b is None else {"lam_b": lam_b}
    r = train(model, K=K, n=counts, d=K + 1, optimizer="convex", steps=100000, lam_W=lam_W,
              lam_H=lam_H, **extra)
    assert r.certificate["global"]
    prediction = theory.minority_collapse(groups, lam_W, lam_H)
    for (Kg, n), a, collapsed in zip(groups, within_group_spread(r, groups),
                                     prediction.collapsed):
        # distance to the threshold, relative: the sides are well apart in every case
        assert abs(np.sqrt(n) / prediction.threshold - 1) > 0.02
        if collapsed:
            assert abs(a) <= 1e-9, (Kg, n, a)
        else:
            assert a > 1e-3, (Kg, n, a)


def test_two_group_ratio_is_the_threshold():
    """R* from minority_collapse_ratio is where √n_B = μN in minority_collapse, and matches the
    certified figure `imbalanced_ce` (K = 4, two minority classes of 1, λ = 1e-2: R* = 49)."""
    assert theory.minority_collapse_ratio(2, 2, 1, 1e-2) == pytest.approx(49.0)
    for K_A, K_B, n_B, mu in ((2, 2, 1, 1e-2), (3, 2, 4, 1e-2), (5, 5, 10, 3e-3)):
        R = theory.minority_collapse_ratio(K_A, K_B, n_B, mu)
        N = K_A * R * n_B + K_B * n_B
        assert np.sqrt(n_B) == pytest.approx(mu * N, rel=1e-12)
        below = theory.minority_collapse(((K_A, 0.99 * R * n_B), (K_B, n_B)), mu, mu)
        above = theory.minority_collapse(((K_A, 1.01 * R * n_B), (K_B, n_B)), mu, mu)
        assert not below.collapsed[1] and above.collapsed[1]
