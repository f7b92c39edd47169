"""Behaviours a planted mistake got past the suite with (issue 35's survivors), each pinned by a
test that compares with an independent value: the global tolerance at its boundary and in its
relative form, the d-versus-rank note at d = K, the convex solver's own stopping test with a
regularized bias, the program cache's key following ufm's source, and the fixed classifiers'
certificates away from E_H = E_W = 1."""
import math

import numpy as np
import pytest

import ufm
from ufm import cache
from ufm import certificate as cert_mod
from ufm.models import Sizes, get_model


def _stub(bound):
    """A model record whose lower bound is `bound`, for the certificate's arithmetic alone."""
    return get_model("bias-free")._replace(lower_bound=lambda inputs, hyper, sizes: bound)


@pytest.mark.parametrize("objective", [1e-9, 0.37, 4e6])
def test_global_tolerance_boundary_and_relative_form(objective):
    """global ⇔ f − bound ≤ tol·max(|f|, 1e-6): at the boundary (a hair inside) true, a hair
    outside false; relative to f for large f, to the floor 1e-6 for tiny f."""
    tol = cert_mod.GLOBAL_TOL["float64"]
    scale = max(abs(objective), 1e-6)
    inputs, sizes = {"M": np.zeros((2, 2))}, Sizes(2, 1, 2)
    for factor, expected in ((0.999, True), (1.001, False)):
        bound = objective - factor * tol * scale
        out = cert_mod.global_certificate(_stub(bound), inputs, {}, sizes, objective,
                                          dtype="float64")
        assert out["global"] is expected, (objective, factor, out)
        assert out["global_gap"] == pytest.approx(factor * tol * scale, rel=1e-6)


def test_rank_note_appears_below_k_and_not_at_k():
    """CE, K = 3: at d = K no note (and the optimum certified); at d = 1, below the optimum's
    rank 2, the gap stays open and the note says why."""
    for d, noted in ((3, False), (1, True)):
        r = ufm.train("ce", K=3, n=2, d=d, optimizer="lbfgs", allow_small_d=True, steps=500,
                      log_every=500)
        note = r.certificate["global_note"] or ""
        assert (f"d = {d} < 3" in note) is noted, note


def test_convex_solver_stopping_test_with_a_regularized_bias():
    """The solver stops at its own relative duality gap (not at the cap), and a tighter gap
    takes more iterations; the certified value is the same."""
    kw = dict(K=4, n=(10, 5, 2, 1), d=5, lam_b=0.3, optimizer="convex", steps=100000,
              log_every=100000)
    loose = ufm.train("regularized-bias", tol=1e-6, **kw)
    tight = ufm.train("regularized-bias", tol=1e-12, **kw)
    for r in (loose, tight):
        assert r.certificate["converged_at"] is not None
        assert r.certificate["converged_at"] == r.certificate["steps_taken"] < 100000
    assert loose.certificate["steps_taken"] < tight.certificate["steps_taken"]
    assert tight.certificate["global"]
    assert loose.final["objective"] == pytest.approx(tight.final["objective"], rel=1e-5)


def test_program_key_follows_ufms_own_source(monkeypatch):
    args = (np.zeros(3),)
    monkeypatch.setattr(cache, "_SOURCE", "a" * 64)
    first = cache.program_key(args, ("simulate", "bias-free"))
    monkeypatch.setattr(cache, "_SOURCE", "b" * 64)
    assert cache.program_key(args, ("simulate", "bias-free")) != first
    monkeypatch.setattr(cache, "_SOURCE", None)  # computed from the files: stable
    assert cache.program_key(args, ("x",)) == cache.program_key(args, ("x",))


@pytest.mark.parametrize("E_H, E_W", [(2.0, 2.0), (0.5, 3.0)])
def test_layer_peeled_certificate_away_from_unit_norms(E_H, E_W):
    """The layer-peeled model's SDP bound at E_H ≠ 1 and E_W ≠ E_H: the certified optimum is
    global and scales as the balanced closed form's product √(E_H·E_W) of the norms predicts at
    balanced counts (an ETF of feature norm √E_H and classifier norm √E_W)."""
    r = ufm.train("lpm", K=3, n=4, d=6, E_H=E_H, E_W=E_W, optimizer="convex", steps=20000,
                  log_every=20000)
    assert r.certificate["global"]
    K = 3
    margin = math.sqrt(E_H * E_W) * K / (K - 1)  # ⟨w_k − w_j, h_k⟩ at an ETF
    expected = math.log1p((K - 1) * math.exp(-margin))
    assert r.final["objective"] == pytest.approx(expected, rel=1e-8)
