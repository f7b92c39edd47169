"""Every step of every proof: holds at random (also degenerate) points, is tight at the
gradient-descent minimiser, and a deliberately wrong step is caught by the same machinery."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from ufm import proofs, theory
from ufm.cli import main
from ufm.models import Sizes

# (theorem, sizes and λ's, gradient-descent settings): both sides of every threshold.
SETTINGS = [
    ("3.1", dict(K=4, n=10, d=8, lam_W=5e-3, lam_H=5e-3), {}),  # c = 0.063
    ("3.1", dict(K=3, n=5, d=3, lam_W=2e-2, lam_H=5e-2), {}),  # d = K
    ("3.1", dict(K=4, n=10, d=6, lam_W=0.05, lam_H=0.1), {}),  # c = 1.26: zero solution
    ("3.2", dict(K=4, n=10, d=8, lam_W=5e-3, lam_H=5e-3), {}),
    ("3.2", dict(K=5, n=4, d=4, lam_W=1e-2, lam_H=2e-2), {}),  # d = K − 1
    ("3.2", dict(K=4, n=10, d=6, lam_W=0.05, lam_H=0.1), {}),  # c ≥ 1
    ("C.1", dict(K=4, n=10, d=8, lam_W=5e-3, lam_H=2e-2), {}),
    ("C.1", dict(K=3, n=6, d=5, lam_W=3e-2, lam_H=1e-2), {}),
    ("4.1", dict(K=4, n=10, d=8, lam_W1=1e-2, lam_W2=2e-2, lam_H1=1e-2),
     dict(init_scale=0.5, restarts=4)),
    ("4.1", dict(K=3, n=5, d=5, lam_W1=3e-2, lam_W2=1e-2, lam_H1=2e-2),
     dict(init_scale=0.5, restarts=4)),
    ("4.1", dict(K=4, n=10, d=8, lam_W1=0.2, lam_W2=0.2, lam_H1=0.2), dict(init_scale=0.5)),
    ("4.2", dict(K=4, n=10, d=8, lam_W1=1e-2, lam_W2=2e-2, lam_H1=1e-2),
     dict(lr=0.05, init_scale=0.5, optimizer="momentum", restarts=16)),
    ("5.1", dict(K=4, n=10, d=8, lam_W=5e-3, lam_H=5e-3), dict(sigma=0.1)),
    ("5.1", dict(K=3, n=8, d=6, lam_W=2e-2, lam_H=1e-2), dict(sigma=0.5)),
]


def _id(setting):
    theorem, kw, _ = setting
    return theorem + "-" + "-".join(f"{k}{v}" for k, v in kw.items())


@pytest.fixture(scope="module", params=SETTINGS, ids=_id)
def checked(request):
    theorem, kw, gd = request.param
    doc = proofs.run_proof(theorem, random=300, steps=50000, **kw, **gd)
    return theorem, kw, doc


def test_every_step_holds_at_random_points(checked):
    theorem, _, doc = checked
    rows = [r for r in doc["steps"] if r["at"] == "random"]
    bad = [r for r in rows if not r["holds"]]
    assert not bad, bad[:3]
    names = {r["name"] for r in rows}
    everywhere = {s.name for s in proofs.PROOFS[theorem].steps(doc["config"], Sizes(
        doc["config"]["K"], doc["config"]["n"], doc["config"]["d"])) if s.where == "everywhere"}
    assert names == everywhere
    assert len(rows) == 300 * len(names)
    # The degenerate kinds (rank-deficient features, zero classifier, the origin …) are among them.
    assert {r["kind"] for r in rows} == set(proofs.KINDS)


def test_every_step_is_tight_at_the_minimiser(checked):
    theorem, kw, doc = checked
    rows = [r for r in doc["steps"] if r["at"] == "optimum"]
    assert {r["name"] for r in rows} == {s.name for s in proofs.PROOFS[theorem].steps(
        doc["config"], Sizes(kw["K"], kw["n"], kw["d"]))}
    for r in rows:
        assert r["holds"], r
        if r["expected"] == "tight":
            assert abs(r["gap"]) <= 1e-8 * max(1.0, abs(r["lhs"]), abs(r["rhs"])), r
    assert any(r["expected"] == "tight" for r in rows)


def test_scalar_bound_is_the_independent_closed_form(checked):
    """The last link of each chain ends at the optimal value from ufm.theory (derived separately
    in docs/theory.md §3), and gradient descent reached it."""
    theorem, kw, doc = checked
    last = {"3.1": "scalar_problem", "3.2": "scalar_problem",
            "4.1": "flat_spectrum_scalar_problem", "4.2": "flat_spectrum_scalar_problem"}
    sizes = Sizes(kw["K"], kw["n"], kw["d"])
    lams = {k: v for k, v in kw.items() if k.startswith("lam")}
    if theorem == "C.1":  # the lemma is checked on the bias-free model's minimiser
        assert doc["config"]["objective"] == pytest.approx(theory.plain(lams, sizes).objective,
                                                           rel=1e-8)
        return
    if theorem == "5.1":  # fixed features: GD's W against the ridge closed form (numpy solve)
        assert abs(doc["config"]["certificate"]["closed_form_gap"]) < 1e-8
        return
    th = (theory.plain(lams, sizes, None if theorem == "3.1" else "free") if theorem.startswith("3")
          else theory.layered(lams, sizes))
    row = next(r for r in doc["steps"] if r["at"] == "optimum" and r["name"] == last[theorem])
    assert row["rhs"] == pytest.approx(th.objective, rel=1e-12)
    assert doc["config"]["objective"] == pytest.approx(th.objective, rel=1e-8)


def test_a_wrong_step_is_caught():
    """Two ways to get a proof wrong: a bound that is too strong fails at random points; a bound
    that is too weak (or has the wrong regime) is not tight at the minimiser."""
    sizes = Sizes(4, 10, 8)
    hyper = dict(lam_W=5e-3, lam_H=5e-3)
    steps = proofs.PROOFS["3.1"].steps(hyper, sizes)
    am_gm = next(s for s in steps if s.name == "am_gm_balance")
    too_strong = am_gm._replace(name="am_gm_doubled",
                                fn=lambda p: (am_gm.fn(p)[0], 1.2 * am_gm.fn(p)[1]))
    points, _ = proofs.random_points(proofs.PROOFS["3.1"], sizes, 100)
    rows = proofs.evaluate([am_gm, too_strong], points, "random")
    assert all(r["holds"] for r in rows if r["name"] == "am_gm_balance")
    assert sum(not r["holds"] for r in rows if r["name"] == "am_gm_doubled") > 50

    # A lower bound off by a factor 1/2 still holds everywhere but is not tight at the minimiser.
    scalar = next(s for s in steps if s.name == "scalar_problem")
    too_weak = scalar._replace(name="halved", fn=lambda p: (scalar.fn(p)[0], scalar.fn(p)[1] / 2))
    assert all(r["holds"] for r in proofs.evaluate([too_weak], points, "random"))
    optimum, _, _ = proofs.optimum_point(proofs.PROOFS["3.1"], sizes, hyper, steps=50000, lr=0.1)
    [good, weak] = proofs.evaluate([scalar, too_weak], [optimum], "optimum")
    assert good["holds"] and not weak["holds"]


def test_large_n_limit_of_theorem_51_with_iid_noise():
    """With i.i.d. noise (not the exact moments) W(H) → κW* at the rate n^{-1/2}."""
    K, d, sigma, lam_W = 3, 6, 0.5, 2e-2
    rng = np.random.default_rng(1)
    Hbar = 0.8 * np.linalg.qr(rng.standard_normal((d, K)))[0]
    errors = []
    for n in (100, 1600, 25600):
        step = next(s for s in proofs.PROOFS["5.1"].steps(dict(lam_W=lam_W), Sizes(K, n, d))
                    if s.name == "large_n_limit")
        trials = []
        for _ in range(4):
            E = sigma * rng.standard_normal((d, K * n))
            W, limit = step.fn({"Hbar": jnp.asarray(Hbar), "E": jnp.asarray(E)})
            trials.append(np.linalg.norm(W - limit) / np.linalg.norm(limit))
        errors.append(np.mean(trials))
    rates = np.diff(np.log(errors)) / np.log(16)
    assert errors[-1] < 0.01
    np.testing.assert_allclose(rates, -0.5, atol=0.15)
    # and the closed-form limit is theory.perturbed_limit's
    pred = theory.perturbed_limit(Hbar, sigma, lam_W)
    assert pred.kappa == pytest.approx((0.64 + K * lam_W) / (0.64 + K * (lam_W + sigma ** 2)))


def test_cli_writes_proof_json(tmp_path, capsys):
    out = tmp_path / "p"
    rc = main(["proof", "C.1", "--x64", "--K", "3", "--n", "4", "--d", "4", "--random", "20",
               "--steps", "30000", "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "proof.json").read_text())
    assert doc["theorem"] == "C.1" and doc["config"]["random"] == 20
    assert {"name", "at", "lhs", "rhs", "gap", "holds"} <= set(doc["steps"][0])
    assert {r["at"] for r in doc["steps"]} == {"random", "optimum"}
    assert all(r["holds"] for r in doc["steps"])
    text = capsys.readouterr().out
    assert "nuclear_norm_bound" in text and "every step holds" in text


@pytest.mark.parametrize("argv, message", [
    (["proof", "6.3"], "unknown theorem '6.3'"),
    (["proof", "3.1", "--lam-W", "0"], "lam_W (--lam-W) must be > 0"),
    (["proof", "3.1", "--lam-W1", "0.1"], "(--lam-W1) does not apply"),
    (["proof", "5.1", "--n", "2"], "n (--n)=2 is too small"),
    (["proof", "5.1", "--sigma", "-1"], "sigma (--sigma) must be finite and >= 0"),
    (["proof", "3.1", "--random", "-3"], "random (--random) must be an integer >= 0"),
    (["proof", "4.1", "--d", "2"], "d (--d)=2 is below"),
])
def test_cli_bad_input(argv, message, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
