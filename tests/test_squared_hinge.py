"""The squared-hinge UFM, the worked example of a loss defined in its model's file: its conjugate
checked by the Fenchel–Young equality, its global certificate by the convex solver, L-BFGS from
random starts and the bound at random points."""
import numpy as np
import pytest

import ufm
from ufm import convex
from ufm.cli import main
from ufm.models.squared_hinge import SQUARED_HINGE


@pytest.mark.parametrize("seed", range(3))
def test_conjugate_meets_fenchel_young_with_equality_at_the_gradient(seed):
    """L(U) + L*(∇L(U)) = ⟨∇L(U), U⟩ exactly at the gradient (and ≥ elsewhere): with the
    record's conjugate returning −L*, L(U) − conjugate(Γ) = Σ_k n_k⟨Γ_k, u_k⟩."""
    rng = np.random.default_rng(seed)
    K = 4
    n = np.array([5.0, 3.0, 2.0, 1.0])
    T = np.eye(K)
    U = rng.normal(size=(K, K)) * 2
    value = float(SQUARED_HINGE.value(U, T, n, n.sum()))
    G = SQUARED_HINGE.gradient(U, T, n)
    pairing = float(np.sum(n * np.sum(G * U, axis=0)))
    assert value - SQUARED_HINGE.conjugate(G, T, n) == pytest.approx(pairing, rel=1e-12, abs=1e-12)
    other = SQUARED_HINGE.gradient(U + rng.normal(size=(K, K)), T, n)  # any dual point: ≥
    assert value - SQUARED_HINGE.conjugate(other, T, n) >= float(
        np.sum(n * np.sum(other * U, axis=0))) - 1e-12


def test_squared_hinge_is_certified_by_the_solver_and_by_lbfgs():
    kw = dict(K=4, n=(8, 4, 2, 1), d=5, lam_W=3e-3, lam_H=3e-3)
    solved = ufm.train("squared-hinge", optimizer="convex", steps=100000, **kw)
    assert solved.certificate["global"] and solved.certificate["global_gap"] >= -1e-12
    best = solved.final["objective"]
    for seed in range(3):
        run = ufm.train("squared-hinge", optimizer="lbfgs", seed=seed, init_scale=0.5, **kw)
        assert run.final["objective"] >= best * (1 - 1e-9)  # never below the certified minimum
        assert run.certificate["lower_bound"] <= best * (1 + 1e-12)
        assert run.certificate["global"] == (run.final["objective"] <= best * (1 + 1e-9))
    early = ufm.train("squared-hinge", steps=3, log_every=3, **kw)  # a bound from anywhere
    assert early.certificate["lower_bound"] <= best * (1 + 1e-12)
    assert not early.certificate["global"]


def test_the_two_factor_machinery_names_no_loss():
    """The penalised two-factor bound and solver take the loss as a record (the constrained
    models' bounds still name theirs: ce, dot-regression)."""
    import inspect

    for fn in (convex.penalised_bound, convex._reduced_loss, convex._dual_value, convex.solve):
        source = inspect.getsource(fn)
        assert '"mse"' not in source and '"ce"' not in source, fn.__name__


def test_cli_trains_it_with_the_convex_solver(tmp_path, capsys):
    assert main(["train", "squared-hinge", "--K", "3", "--n", "4", "--d", "3", "--optimizer",
                 "convex", "--x64", "--quiet", "--out", str(tmp_path / "r")]) == 0
    assert "GLOBAL minimum" in capsys.readouterr().out
