"""Small-sample diagnostics (ufm/measure/diagnostics.py): effective ranks exact at N ≤ d, every
class counted, linear CKA — against answers known in closed form."""
import json
import math

import numpy as np
import pytest

from ufm.cli import main
from ufm.measure.diagnostics import diagnostics, effective_rank, linear_cka

RNG = np.random.default_rng(0)


def simplex_rows(N, d, scale=1.0):
    """N rows in R^d (d ≥ N − 1) at a regular simplex's vertices: centred, N − 1 equal singular
    values, so the effective rank is N − 1 exactly."""
    B = np.linalg.svd(np.eye(N) - 1.0 / N)[0][:, :N - 1]  # orthonormal basis of 1^⊥ [N, N − 1]
    U = np.linalg.qr(RNG.normal(size=(d, N - 1)))[0]  # isometric into R^d
    return scale * B @ U.T


@pytest.mark.parametrize("N,d", [(3, 50), (10, 50), (40, 50), (50, 50), (8, 7)])
def test_equal_singular_values_give_the_count_at_any_n_against_d(N, d):
    assert effective_rank(simplex_rows(N, d, scale=3.7)) == pytest.approx(N - 1, rel=1e-12)


def test_isotropic_samples_are_near_n_not_a_floor():
    for N in (5, 20, 100):  # N ≤ d: Gaussian rows in 1000 dimensions are nearly orthogonal
        r = effective_rank(RNG.normal(size=(N, 1000)))
        assert N - 1 - 0.1 * N < r <= N - 1 + 1e-9


def test_rank_one_and_degenerate_inputs():
    v = RNG.normal(size=8)
    assert effective_rank(np.outer(RNG.normal(size=30), v)) == pytest.approx(1.0, rel=1e-12)
    assert effective_rank(np.ones((5, 3))) == 0.0  # all rows equal: nothing left after centring
    assert effective_rank(RNG.normal(size=(1, 4))) == 0.0  # one row
    # two equal singular values of weights p = (1/2, 1/2) and one of 0: exp(log 2) = 2
    A = np.zeros((6, 4))
    A[:3, 0], A[3:, 0] = 1.0, -1.0
    A[::2, 1], A[1::2, 1] = 1.0, -1.0
    s = np.linalg.svd(A - A.mean(0), compute_uv=False)
    p = s[s > 1e-12] / s[s > 1e-12].sum()
    assert effective_rank(A) == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-12)


def test_linear_cka_invariances_and_a_direct_value():
    X = RNG.normal(size=(30, 6))
    Q = np.linalg.qr(RNG.normal(size=(6, 6)))[0]
    assert linear_cka(X, 3.0 * X @ Q + 5.0) == pytest.approx(1.0, rel=1e-12)
    Y = RNG.normal(size=(30, 4))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    direct = np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) *
                                               np.linalg.norm(Yc.T @ Yc))
    assert linear_cka(X, Y) == pytest.approx(direct, rel=1e-12)
    wide = RNG.normal(size=(5, 40)), RNG.normal(size=(5, 30))  # the N×N Gram path
    Xc, Yc = (w - w.mean(0) for w in wide)
    direct = np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) *
                                               np.linalg.norm(Yc.T @ Yc))
    assert linear_cka(*wide) == pytest.approx(direct, rel=1e-12)
    assert math.isnan(linear_cka(np.ones((4, 3)), RNG.normal(size=(4, 2))))


def test_every_class_is_in_the_aggregate():
    K, d = 4, 30
    blocks = [simplex_rows(n, d) + 10 * RNG.normal(size=d) for n in (6, 3, 2)]
    one = RNG.normal(size=(1, d))  # a class of one sample: effective rank 0, still counted
    X = np.concatenate(blocks + [one])
    labels = np.repeat(np.arange(K), [6, 3, 2, 1])
    out = diagnostics({"f": X}, labels)["layers"]["f"]
    assert out["effective_rank_per_class"] == pytest.approx([5, 2, 1, 0], rel=1e-12, abs=1e-12)
    assert out["effective_rank_classes"] == pytest.approx(2.0, rel=1e-12)


def test_the_cli_adds_the_diagnostics(tmp_path, capsys):
    labels = np.repeat(np.arange(3), 4)
    f1 = RNG.normal(size=(12, 20))
    np.savez(tmp_path / "run.npz", l1=f1, l2=2 * f1 @ np.linalg.qr(RNG.normal(size=(20, 20)))[0],
             labels=labels)
    assert main(["measure", str(tmp_path / "run.npz"), "--diagnostics", "--quiet", "--out",
                 str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "effective_rank" in out and "linear CKA l1 – l2: 1" in out
    doc = json.loads((tmp_path / "m" / "measure.json").read_text())
    assert doc["cka"]["l1|l2"] == pytest.approx(1.0, rel=1e-12)
    assert doc["layers"]["l1"]["effective_rank"] == pytest.approx(effective_rank(f1), rel=1e-12)
    assert len(doc["effective_rank_per_class"]["l2"]) == 3
