"""Cross-entropy UFM (docs/theory.md §3.7) against its closed form, float64 gradient descent."""
import math

import numpy as np
import pytest

import ufm

CE = [
    dict(K=4, n=10, d=8, lam_W=1e-2, lam_H=2e-2),
    dict(K=3, n=5, d=2, lam_W=3e-2, lam_H=1e-2),  # d = K − 1
    dict(K=6, n=4, d=10, lam_W=5e-3, lam_H=1e-2),
]


@pytest.mark.parametrize("model", ["ce", "ce-bias"])
@pytest.mark.parametrize("kw", CE)
def test_cross_entropy_collapses_to_simplex_etf(model, kw):
    extra = {"lam_b": 1e-2} if model == "ce-bias" else {}
    r = ufm.train(model, steps=60000, log_every=60000, lr=0.5, **kw, **extra)
    th = r.theory
    assert th.structure == "ETF" and th.c < 1
    assert r.final["objective"] == pytest.approx(th.objective, rel=1e-8)
    K, n = kw["K"], kw["n"]
    W, H = r.params["W"], r.params["H"]
    np.testing.assert_allclose(np.sum(W ** 2, axis=1), th.w_norm_sq, rtol=1e-5)
    cos = (W @ W.T)[~np.eye(K, dtype=bool)] / th.w_norm_sq
    np.testing.assert_allclose(cos, -1 / (K - 1), atol=1e-5)  # ETF cosines
    np.testing.assert_allclose(H, np.repeat(th.feature_scale * W.T, n, axis=1), atol=1e-5)
    if model == "ce-bias":
        np.testing.assert_allclose(r.params["b"], 0.0, atol=1e-6)
    assert r.final["nc2_etf_W"] < 1e-5 and r.final["nc1_H"] < 1e-9 and r.final["nc4_mismatch"] == 0


def test_cross_entropy_zero_solution_past_threshold():
    kw = dict(K=4, n=10, d=8, lam_W=0.1, lam_H=0.1)
    r = ufm.train("ce", steps=20000, log_every=20000, lr=0.5, **kw)
    assert r.theory.c > 1 and r.theory.structure == "zero"
    assert r.theory.objective == pytest.approx(math.log(4))
    assert r.final["objective"] == pytest.approx(math.log(4), rel=1e-8)
    assert r.final["norm_W"] < 1e-6
