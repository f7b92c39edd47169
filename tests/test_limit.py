"""The λ → 0 limit of the CE UFM (ufm.limit, docs/theory.md §5.4): the UFM-SVM solved by ADMM from
random starts against SELI's closed form at balanced and imbalanced counts, its projection
against a generic QP solver, its factors, and the CE optimum's direction converging to it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from ufm import limit, metrics
from ufm.cli import main
from ufm.runner import train


@pytest.mark.parametrize("seed", range(3))
def test_margin_projection_equals_a_generic_qp_solver(seed):
    rng = np.random.default_rng(seed)
    K, k, c = 6, seed % 6, 0.5 + seed
    x = rng.normal(size=K) * 2
    y = np.asarray(limit.project_margins(jnp.asarray(x), k, c))
    cons = [{"type": "ineq", "fun": lambda z, j=j: z[k] - z[j] - c} for j in range(K) if j != k]
    ref = scipy.optimize.minimize(lambda z: np.sum((z - x) ** 2), x, constraints=cons,
                                  method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000}).x
    np.testing.assert_allclose(y, ref, atol=1e-6)  # SLSQP's own accuracy
    assert np.all(y[k] - np.delete(y, k) >= c - 1e-12)


@pytest.mark.parametrize("counts", [(5, 2, 1), (4, 4, 4), (50, 20, 5, 1, 1), (1000, 10, 1),
                                    tuple(range(1, 21))])
def test_svm_from_random_starts_is_seli(counts):
    """SELI: the class-centred logits are I − 11ᵀ/K at any counts, so the minimum is
    ‖(I − 11ᵀ/K)·D^½‖_* (computed here independently); (5, 2, 1): 3.17715055026175, checked
    outside ufm by multi-start SLSQP."""
    K = len(counts)
    P = np.eye(K) - np.ones((K, K)) / K
    expected = np.linalg.svd(P * np.sqrt(np.asarray(counts, float))[None, :],
                             compute_uv=False).sum()
    if counts == (5, 2, 1):
        assert expected == pytest.approx(3.17715055026175, abs=1e-13)
    sol = jax.jit(lambda key: limit.solve_svm(counts, key=key))(jax.random.PRNGKey(7))
    assert float(sol.gap) <= 1e-10
    assert float(sol.value) == pytest.approx(expected, rel=1e-10)
    assert float(sol.bound) <= expected * (1 + 1e-12)  # a lower bound, never above
    assert float(sol.bound) == pytest.approx(expected, rel=1e-9)
    assert limit.seli_error(sol.M) < 1e-8


def test_limit_factors_have_margin_one_and_the_svm_value():
    from ufm.models import Sizes

    counts = (6, 3, 2, 1)
    sizes = Sizes(4, counts, 5)
    sol = jax.jit(lambda: limit.solve_svm(counts))()
    W, H = (np.asarray(v) for v in limit.factors(np.asarray(sol.M), sizes).values())
    assert 0.5 * (np.sum(W * W) + np.sum(H * H)) == pytest.approx(float(sol.value), rel=1e-10)
    Z = W @ H
    y = metrics.class_labels(counts, sizes.N)
    margins = Z[y, np.arange(sizes.N)][None, :] - Z
    margins[y, np.arange(sizes.N)] = np.inf
    assert margins.min() == pytest.approx(1.0, abs=1e-9)


def test_cross_entropy_optimum_turns_toward_the_limit_as_lambda_vanishes():
    """The certified CE optimum at counts (5, 2, 1): the angle between its centred class logits
    and the limit's shrinks as λ falls (1e-2 → 1e-4 → 1e-6), and its norm grows."""
    counts, K = (5, 2, 1), 3
    target = np.eye(K) - np.ones((K, K)) / K
    cosines, norms = [], []
    for lam in (1e-2, 1e-4, 1e-6):
        r = train("ce", K=K, n=counts, d=4, lam_W=lam, lam_H=lam, optimizer="convex",
                  steps=100000)
        assert r.certificate["global"]
        M = r.params["W"] @ np.asarray(metrics.class_means(jnp.asarray(r.params["H"]), counts))
        C = M - M.mean(axis=0, keepdims=True)
        cosines.append(np.sum(C * target) / (np.linalg.norm(C) * np.linalg.norm(target)))
        norms.append(np.linalg.norm(M))
    assert cosines[0] < cosines[1] < cosines[2] and cosines[2] > 1 - 1e-3
    assert norms[0] < norms[1] < norms[2]


def test_cli_limit_writes_the_direction_and_refuses_other_models(tmp_path, capsys):
    out = tmp_path / "lim"
    assert main(["train", "ce", "--K", "3", "--n", "5,2,1", "--d", "4", "--limit", "--quiet",
                 "--out", str(out)]) == 0
    assert "SELI" in capsys.readouterr().out
    with np.load(out / "params.npz") as f:
        assert f["W"].shape == (3, 4) and f["H"].shape == (4, 8)
    assert main(["train", "bias-free", "--limit", "--quiet", "--out", str(tmp_path / "x")]) == 2
    assert "limit (--limit)" in capsys.readouterr().err
    assert main(["train", "ce", "--K", "4", "--d", "2", "--allow-small-d", "--limit",
                 "--quiet", "--out", str(tmp_path / "y")]) == 2
    assert "--limit needs d >= K − 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
