"""The regression UFM with per-sample targets (ufm/models/regression.py; docs/theory.md §3.13):
its closed form at any d, on both sides of every threshold, the NRC1–3 collapse at λ > 0 and its
absence at λ = 0. Float64 (conftest)."""
import math

import numpy as np
import pytest

from ufm import runner, sweep
from ufm.cli import main

RNG = np.random.default_rng(0)
Y = RNG.normal(size=(3, 40)) + np.array([[2.0], [0.0], [-1.0]])  # m = 3 outputs, N = 40
COUNTS = (14, 13, 13)  # N = 40 as K = 3 "counts"


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    path = tmp_path_factory.mktemp("targets") / "Y.npy"
    np.save(path, Y)
    return str(path)


def closed_form(Y, lam_W, lam_H, d, bias):
    """f* by the eigenvalues of the target covariance (not the model's SVD path)."""
    Yc = Y - Y.mean(axis=1, keepdims=True) if bias else Y
    N = Y.shape[1]
    sigma = np.sqrt(np.clip(np.linalg.eigvalsh(Yc @ Yc.T), 0, None))[::-1]  # σ_i of Ỹ
    mu = math.sqrt(lam_W * lam_H)
    total = 0.0
    for i, s in enumerate(sigma):
        if i < d and s > N * mu:
            total += mu * s - N * mu * mu / 2
        else:
            total += s * s / (2 * N)
    return total


def train(targets, lam, d, bias, **kw):
    return runner.train("regression", K=3, n=COUNTS, d=d, steps=3000, optimizer="lbfgs",
                        lam_W=lam, lam_H=2 * lam, allow_small_d=True,
                        options=dict(targets=targets, bias=bias), **kw)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("lam,d", [(1e-3, 6), (1e-3, 2), (3e-2, 6), (3e-2, 1), (0.5, 6)])
def test_the_closed_form_at_any_d_on_both_sides_of_the_threshold(targets, lam, d, bias):
    r = train(targets, lam, d, bias)
    expect = closed_form(Y, lam, 2 * lam, d, bias)
    assert r.certificate["converged"]
    # L-BFGS stops at a relative gradient norm ≤ 1e-10: the objective's error is its square
    assert r.final["objective"] == pytest.approx(expect, rel=1e-10)
    assert r.theory.objective == pytest.approx(expect, rel=1e-12)
    zero = all(k == 0 for k in r.theory.kept)
    assert (r.theory.structure == "zero") == zero
    if not zero:  # collapse: features in the top-m PCA span and in W's row span; W Wᵀ predicted
        assert r.final["nrc1"] < 1e-10 and r.final["nrc2"] < 1e-10 and r.final["nrc3"] < 1e-6


def test_the_classifier_gram_is_the_covariance_formula(targets):
    """W Wᵀ = √(λ_H/λ_W)·(√N·Σ^½ − Nμ·I)₊ with Σ the target covariance (d ≥ m)."""
    lam_W, lam_H = 2e-3, 4e-3
    r = runner.train("regression", K=3, n=COUNTS, d=6, steps=3000, optimizer="lbfgs",
                     lam_W=lam_W, lam_H=lam_H, options=dict(targets=targets))
    N = Y.shape[1]
    vals, vecs = np.linalg.eigh(Y @ Y.T / N)
    root = np.sqrt(np.clip(vals, 0, None))
    mu = math.sqrt(lam_W * lam_H)
    expect = math.sqrt(lam_H / lam_W) * (vecs * np.maximum(math.sqrt(N) * root - N * mu, 0)) @ vecs.T
    W = np.asarray(r.params["W"])
    np.testing.assert_allclose(W @ W.T, expect, atol=1e-7 * np.abs(expect).max())


def test_without_regularisation_there_is_no_collapse(targets):
    r = train(targets, 0.0, 6, False, init_scale=1.0)
    assert r.final["objective"] < 1e-20  # interpolation
    assert r.final["nrc1"] > 0.05  # features keep their start's directions beyond m
    assert math.isnan(r.final["nrc3"]) and "nrc3" in r.undefined
    assert r.theory is None  # no theorem at λ = 0


def test_the_one_hot_default_is_the_classification_model():
    for bias, other in ((False, "bias-free"), (True, "unregularized-bias")):
        kw = dict(K=3, n=5, d=4, steps=300, optimizer="lbfgs", lam_W=0.01, lam_H=0.02)
        r = runner.train("regression", options=dict(bias=bias), **kw)
        o = runner.train(other, **kw)
        assert r.final["objective"] == pytest.approx(o.final["objective"], rel=1e-12)


def test_a_sweep_carries_the_closed_form(targets):
    arrays, _ = sweep.run_grid("regression", {"K": [3], "d": [6], "n": [COUNTS]}, {},
                               {"lam_W": [1e-3, 0.3]}, order=["lam_W"], steps=3000,
                               optimizer="lbfgs", options=dict(targets=targets))
    for i, lam in enumerate([1e-3, 0.3]):
        expect = closed_form(Y, lam, 5e-3, 6, False)
        assert arrays["theory_objective"][i] == pytest.approx(expect, rel=1e-12)
        assert arrays["objective"][i] == pytest.approx(expect, rel=1e-9)


@pytest.mark.parametrize("content,needle", [
    (np.ones((2, 40)), "targets (--targets) is 2×40 (m×N) but K (--K) is 3"),
    (np.ones((3, 41)), "and N = 40 samples"),
    (np.array([[1.0, np.nan, 2.0]]), "must be a finite m×N matrix"),
    (np.ones(5), "must be a finite m×N matrix"),
    (np.array([["a", "b"]]), "must hold real numbers"),
])
def test_bad_targets_are_one_line(content, needle, tmp_path, capsys):
    path = tmp_path / "T.npy"
    np.save(path, content)
    rc = main(["train", "regression", "--K", "3", "--n", "14,13,13", "--targets", str(path),
               "--quiet", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_the_certificate_uses_the_exact_minimum_at_any_d(targets):
    for d, lam in ((6, 1e-3), (2, 3e-2)):
        r = train(targets, lam, d, True)
        c = r.certificate
        assert c["global"] and c["lower_bound"] == pytest.approx(r.theory.objective, rel=1e-15)
        assert abs(c["global_gap"]) <= 1e-10 * r.final["objective"]
    early = runner.train("regression", K=3, n=COUNTS, d=6, steps=2, lr=1e-3, lam_W=1e-3,
                         lam_H=2e-3, options=dict(targets=targets, bias=True))
    assert early.certificate["global"] is False and early.certificate["global_gap"] > 0


# --- multi-task against single-task training (Andriopoulos et al. 2025, docs/theory.md §3.13) ---

def training_mse(Y, lam_W, lam_H):
    """The fit term 1/(2N)‖Z* − Ỹ‖² at the optimum with a free bias and d ≥ m, from the
    covariance's eigenvalues e_i: ½Σ_i min(e_i, Nλ_Wλ_H) (the residual keeps min(σ_i, Nμ))."""
    C = np.cov(Y, bias=True).reshape(Y.shape[0], Y.shape[0])
    return 0.5 * float(np.sum(np.minimum(np.linalg.eigvalsh(C), Y.shape[1] * lam_W * lam_H)))


def fitted_mse(Y, lam_W, lam_H):
    m, N = Y.shape
    counts = (N,) if m == 1 else tuple([N // m] * (m - 1) + [N - N // m * (m - 1)])
    r = runner.train("regression", K=m, n=counts, d=m, steps=3000, optimizer="lbfgs",
                     lam_W=lam_W, lam_H=lam_H, options=dict(targets=Y, bias=True))
    assert r.certificate["global"]
    return r.final["mse"]


def test_univariate_regression_is_a_model_of_its_own():
    """m = 1 (one output per sample) runs, certified, at the closed form."""
    y = Y[:1]
    assert fitted_mse(y, 0.05, 0.05) == pytest.approx(training_mse(y, 0.05, 0.05), rel=1e-8)


@pytest.mark.parametrize("lam", [0.05, 0.2, 0.5])
def test_multi_task_training_mse_is_below_the_single_task_models(lam):
    """With correlated targets the multi-task optimum fits strictly better than m single-task
    models at the same λ, and still better than single-task models regularised twice as hard;
    with uncorrelated targets (orthogonal centred rows) the two are equal. Runs against the
    closed form, each certified global."""
    rng = np.random.default_rng(3)
    correlated = rng.normal(size=(3, 3)) @ rng.normal(size=(3, 40))
    joint = fitted_mse(correlated, lam, lam)
    assert joint == pytest.approx(training_mse(correlated, lam, lam), rel=1e-8)
    singles = sum(fitted_mse(correlated[j:j + 1], lam, lam) for j in range(3))
    assert singles == pytest.approx(sum(training_mse(correlated[j:j + 1], lam, lam)
                                        for j in range(3)), rel=1e-8)
    assert joint < singles * (1 - 1e-3)
    assert joint < sum(training_mse(correlated[j:j + 1], 2 * lam, lam) for j in range(3))
    Q = np.linalg.qr(rng.normal(size=(40, 4)))[0]  # orthonormal columns, one along 1
    Q -= Q.mean(axis=0)
    uncorrelated = (np.linalg.qr(Q)[0][:, :3] * np.array([3.0, 2.0, 1.0])).T + 5.0
    assert fitted_mse(uncorrelated, lam, lam) == pytest.approx(
        sum(fitted_mse(uncorrelated[j:j + 1], lam, lam) for j in range(3)), rel=1e-7)


# --- whitening the targets (Andriopoulos et al. 2025, docs/theory.md §3.13) ---

def targets_with_mean_variance(rng, v, m=3, N=40):
    Y = rng.normal(size=(m, m)) @ rng.normal(size=(m, N)) + rng.normal(size=(m, 1))
    Yc = Y - Y.mean(axis=1, keepdims=True)
    return Yc * math.sqrt(v * m / np.trace(np.cov(Yc, bias=True))) + Y.mean(axis=1, keepdims=True)


def original_units_error(Y, lam, whitened):
    """Train on Y (or on its whitening, then map the predictions back): 1/(2N)‖Ŷ − Y‖²."""
    from ufm.models.regression import whiten

    m, N = Y.shape
    target, back = whiten(Y) if whitened else (Y, lambda Z: Z)
    counts = tuple([N // m] * (m - 1) + [N - N // m * (m - 1)])
    r = runner.train("regression", K=m, n=counts, d=m, steps=3000, optimizer="lbfgs",
                     lam_W=lam, lam_H=lam, options=dict(targets=target, bias=True))
    assert r.certificate["global"]
    Z = np.asarray(r.params["W"]) @ np.asarray(r.params["H"]) + np.asarray(r.params["b"])[:, None]
    return float(np.sum((back(Z) - Y) ** 2) / (2 * N))


@pytest.mark.parametrize("variance, c, helps", [(0.5, 0.004, True), (2.0, 0.004, False),
                                                (0.5, 1.1, False), (0.9, 0.1, None)])
def test_whitening_helps_exactly_when_the_mean_variance_is_below_one(variance, c, helps):
    """Certified runs on the targets and on their whitening (mapped back) against the closed
    form, λ_W = λ_H = √(c/N): with c below every eigenvalue and 1, whitening helps iff the mean
    variance < 1 (0.5: yes, 2: no); with c ≥ 1 it never helps (0.5 at c = 1.1, below the largest
    eigenvalue so that something is fit); between, the closed form's comparison decides
    (computed, and the runs agree with it)."""
    from ufm.models.regression import whitening

    Y = targets_with_mean_variance(np.random.default_rng(5), variance)
    lam = math.sqrt(c / Y.shape[1])
    w = whitening(Y, lam, lam)
    assert np.mean(w.eigenvalues) == pytest.approx(variance, rel=1e-12)
    assert w.c == pytest.approx(c, rel=1e-12)
    if c < 1:  # the regime: weak (below every eigenvalue) or between
        assert (c <= min(w.eigenvalues)) == (helps is not None)
    else:
        assert c < max(w.eigenvalues)
    if helps is not None:
        assert w.helps == helps
    plain, whitened = original_units_error(Y, lam, False), original_units_error(Y, lam, True)
    assert plain == pytest.approx(w.plain, rel=1e-8)
    assert whitened == pytest.approx(w.whitened, rel=1e-8)
    assert (whitened < plain) == w.helps and abs(whitened - plain) > 1e-6 * plain
