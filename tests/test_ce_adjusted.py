"""The logit-adjusted CE UFM (ufm/models/ce_adjusted.py): one file with a per-class vector
hyperparameter (`class_weight`), a choices option (`reduction`) and a global certificate (issue
34's worked example; the LA/CDT/VS losses of issue 32). Float64 (conftest)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ufm import runner, sweep, theory
from ufm.models import Sizes, get_model

COUNTS = (8, 4, 2)
SIZES = Sizes(3, COUNTS, 4)


def _direct(params, hyper, counts, reduction):
    """The objective from its definition, sample by sample, with jax.nn.log_softmax."""
    W, H = np.asarray(params["W"]), np.asarray(params["H"])
    n = np.asarray(counts, np.float64)
    N, K = n.sum(), len(n)
    pi = n / N
    total, col = 0.0, 0
    for k, n_k in enumerate(counts):
        c = 1.0 if reduction == "mean" else N / (K * n_k)
        w = hyper["class_weight"][k] * c
        for _ in range(n_k):
            z = W @ H[:, col]
            u = (n / n.max()) ** hyper["cdt_gamma"] * z + hyper["tau"] * np.log(pi)
            total += -w * float(jax.nn.log_softmax(jnp.asarray(u))[k])
            col += 1
    return (total / N + hyper["lam_W"] / 2 * np.sum(W * W)
            + hyper["lam_H"] / 2 * np.sum(H * H))


@pytest.mark.parametrize("reduction", ["mean", "class-mean"])
def test_the_objective_is_its_definition(reduction):
    model = get_model("ce-adjusted", reduction=reduction)
    hyper = dict(lam_W=0.03, lam_H=0.02, tau=0.7, cdt_gamma=0.4,
                 class_weight=np.array([1.0, 2.5, 0.5]), init_scale=1.0)
    params = model.init(jax.random.PRNGKey(3), hyper, SIZES)
    assert float(model.objective(params, hyper, SIZES)) == pytest.approx(
        _direct(params, hyper, COUNTS, reduction), rel=1e-13)


SETTINGS = [  # (counts, λ_W, λ_H, τ, γ, weights, reduction): LA, CDT, VS, weighted, balanced
    ("8,4,2", 0.01, 0.02, 1.0, 0.0, "1", "mean"),
    ("8,4,2", 0.01, 0.02, 0.0, 0.5, "1", "mean"),
    ("8,4,2", 0.005, 0.05, 0.5, 0.5, "1,2,3", "mean"),
    ("8,4,2", 0.02, 0.01, 0.0, 1.0, "2", "class-mean"),
    ("5", 0.02, 0.01, 1.5, 0.7, "1,3,2", "mean"),
]


@pytest.mark.parametrize("counts,lam_W,lam_H,tau,gamma,weights,reduction", SETTINGS)
def test_the_global_certificate_closes_at_the_optimum(counts, lam_W, lam_H, tau, gamma, weights,
                                                      reduction):
    r = runner.train("ce-adjusted", K=3, n=counts, d=4, steps=400, optimizer="lbfgs",
                     lam_W=lam_W, lam_H=lam_H, tau=tau, cdt_gamma=gamma, class_weight=weights,
                     options=dict(reduction=reduction))
    c = r.certificate
    assert c["converged"] and c["global"], c
    # a valid bound: below the objective, and tight (the gap is round-off of the two numbers)
    assert 0 <= c["global_gap"] <= 1e-9 * abs(r.final["objective"])


def test_the_bound_is_below_the_minimum_from_any_point():
    kw = dict(K=3, n="8,4,2", d=4, lam_W=0.01, lam_H=0.02, tau=0.5, cdt_gamma=0.5,
              class_weight="1,2,3")
    best = runner.train("ce-adjusted", steps=400, optimizer="lbfgs", **kw)
    minimum = best.final["objective"]
    model = get_model("ce-adjusted")
    hyper = {k: v for k, v in best.config.items() if k in model.hyper_names}
    rng = np.random.default_rng(0)
    bounds = [model.lower_bound({"M": rng.normal(scale=s, size=(3, 3))}, hyper, SIZES)
              for s in (0.1, 1.0, 3.0, 10.0)]
    assert all(b <= minimum + 1e-12 for b in bounds)
    assert max(bounds) < minimum - 1e-6  # far points give looser bounds: the test can fail


def test_at_balanced_counts_the_adjustments_vanish_and_the_closed_form_applies():
    kw = dict(K=4, n=6, d=5, steps=400, optimizer="lbfgs", lam_W=0.01, lam_H=0.03)
    plain = runner.train("ce", **kw)
    adjusted = runner.train("ce-adjusted", tau=1.3, cdt_gamma=0.8, **kw)
    assert adjusted.final["objective"] == pytest.approx(plain.final["objective"], rel=1e-10)
    assert adjusted.theory is not None
    assert adjusted.final["objective"] == pytest.approx(adjusted.theory.objective, rel=1e-10)


@pytest.mark.parametrize("c", [0.5, 3.0])
def test_a_uniform_class_weight_scales_the_problem(c):
    """min c·L + λ_W/2‖W‖² + λ_H/2‖H‖² = c·(the CE UFM's minimum at λ/c): Zhu et al.'s closed
    form, computed independently."""
    lam_W, lam_H = 0.01, 0.03
    r = runner.train("ce-adjusted", K=4, n=6, d=5, steps=400, optimizer="lbfgs", lam_W=lam_W,
                     lam_H=lam_H, class_weight=c)
    assert r.theory is None  # the closed form is for weight 1 only
    scaled = theory.cross_entropy(dict(lam_W=lam_W / c, lam_H=lam_H / c), Sizes(4, 6, 5), False)
    assert r.final["objective"] == pytest.approx(c * scaled.objective, rel=1e-10)


def test_a_sweep_along_the_per_class_axis_equals_single_runs():
    vectors = [[1.0, 1.0, 1.0], [1.0, 2.0, 3.0], [0.5, 0.5, 2.0]]
    arrays, config = sweep.run_grid(
        "ce-adjusted", {"K": [3], "d": [4], "n": [COUNTS]}, {"tau": 0.5},
        {"class_weight": vectors}, order=["class_weight"], steps=60, lr=0.5)
    assert arrays["class_weight"].shape == (3, 3) and config["axes"]["class_weight"] == vectors
    for i, v in enumerate(vectors):
        r = runner.train("ce-adjusted", K=3, n=COUNTS, d=4, steps=60, lr=0.5, log_every=60,
                         tau=0.5, class_weight=v)
        assert arrays["objective"][i] == pytest.approx(r.final["objective"], rel=1e-12)
        assert arrays["global_gap"][i] == pytest.approx(r.certificate["global_gap"], rel=1e-6,
                                                        abs=1e-12)


def test_restarts_carry_the_vector():
    r = runner.train("ce-adjusted", K=3, n=COUNTS, d=4, steps=30, restarts=3,
                     class_weight=[1.0, 2.0, 3.0])
    assert len(r.restart_objectives) == 3 and r.config["class_weight"].tolist() == [1, 2, 3]


@pytest.mark.parametrize("kw,message", [
    (dict(class_weight="1,2"), "class_weight (--class-weight) is per class: it takes one number "
                               "or exactly K=3, got 2 values"),
    (dict(class_weight="1,-2,3"), "class_weight (--class-weight)[1] must be finite and > 0"),
    (dict(class_weight="a,b"), "class_weight (--class-weight) must be one number or K=3"),
    (dict(lam_W="1,2"), "lam_W (--lam-W) must be one number"),
    (dict(options=dict(reduction="sum")), "reduction (--reduction) must be one of mean, "
                                          "class-mean"),
])
def test_bad_values_are_named(kw, message):
    with pytest.raises(ValueError) as err:
        runner.train("ce-adjusted", K=3, n=4, d=4, steps=5, **kw)
    assert message in str(err.value)


def test_a_grid_of_vectors_of_another_length_is_refused():
    with pytest.raises(ValueError, match="each vector of its grid needs one value or K=3"):
        sweep.run_grid("ce-adjusted", {"K": [3], "d": [4], "n": [4]}, {},
                       {"class_weight": [[1.0, 2.0], [1.0, 1.0]]}, order=["class_weight"],
                       steps=5)


def test_the_cli_trains_sweeps_and_reads_back_a_vector(tmp_path, capsys, monkeypatch):
    from ufm.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "ce-adjusted", "--K", "3", "--n", "8,4,2", "--d", "4", "--steps", "200",
                 "--optimizer", "lbfgs", "--class-weight", "1,2,3", "--reduction", "class-mean",
                 "--tau", "1", "--x64", "--hessian", "dense", "--out", "t", "--quiet"]) == 0
    doc = json.loads((tmp_path / "t" / "result.json").read_text())
    assert doc["config"]["class_weight"] == [1, 2, 3] and doc["config"]["reduction"] == "class-mean"
    assert doc["certificate"]["global"] and doc["second_order"]["kind"] == "strict local minimum"
    capsys.readouterr()
    assert main(["hessian", "t"]) == 0  # read back: the vector rebuilt from result.json
    assert "strict local minimum" in capsys.readouterr().out
    assert main(["sweep", "ce-adjusted", "--K", "3", "--d", "4", "--steps", "20",
                 "--class-weight", "1;1,2,3", "--out", "s", "--quiet"]) == 0
    with np.load(tmp_path / "s" / "sweep.npz") as f:
        assert f["class_weight"].tolist() == [[1, 1, 1], [1, 2, 3]]
    assert main(["plot", "s", "--out", "s.png"]) == 0
    assert (tmp_path / "s.png").stat().st_size > 5000
