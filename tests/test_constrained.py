"""Fixed classifiers with norm-constrained features (docs/theory.md §3.9), the layer-peeled model, per-class
counts and class-incremental sessions, in float64."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm import metrics, theory
from ufm.cli import main
from ufm.models import Sizes, get_model

EPS = np.finfo(np.float64).eps


def targets(result, E_H):
    """√E_H·(class vector of each column's class)  [d, N]."""
    counts = result.config["n"] if isinstance(result.config["n"], tuple) else (
        (result.config["n"],) * result.config["K"])
    labels = metrics.class_labels(tuple(counts), sum(counts))
    return math.sqrt(E_H) * result.params["E"][:, labels]


def check_constraints(result, E_H, halfspace=False):
    """Feasible at every recorded step: ‖h‖² ≤ E_H (and Σ_{j≠k} hᵀq_j ≥ 0) up to round-off."""
    assert np.all(result.history["feature_norm_excess"] <= 4 * EPS)
    if halfspace:
        assert np.all(result.history["halfspace_min"] >= -4 * EPS * math.sqrt(E_H))


# --- fixed simplex-ETF classifier (Neural Collapse Terminus) ---------------------------------------

@pytest.mark.parametrize("K, d, n, E_H", [
    (4, 8, 10, 1.0),
    (4, 8, (40, 10, 4, 2), 2.0),  # strongly imbalanced
    (5, 4, (3, 30, 3, 30, 3), 0.5),  # d = K − 1, the smallest an ETF fits in
])
@pytest.mark.parametrize("alpha", ["none", "inverse-count"])
def test_fixed_etf_ce_features_reach_prototypes(K, d, n, E_H, alpha):
    # Each feature is its own problem, its loss weighted by 1/N (or 1/n_k): the step is scaled so
    # that every feature moves with an effective step of 0.5 at most.
    counts = Sizes(K, n, d).counts
    lr = 0.5 * (sum(counts) if alpha == "none" else min(counts))
    r = ufm.train("fixed-etf", K=K, n=n, d=d, steps=4000, log_every=500, lr=lr, E_H=E_H,
                  alpha=alpha)
    H = r.params["H"]
    assert np.max(np.abs(H - targets(r, E_H))) < 1e-8
    check_constraints(r, E_H)
    # the objective meets the closed form Σ α_k Σ_i ℓ*, ℓ* = log(1 + (K−1)e^{−√E_H·K/(K−1)})
    ell = math.log1p((K - 1) * math.exp(-math.sqrt(E_H) * K / (K - 1)))
    assert r.theory.loss_per_sample == pytest.approx(ell, rel=1e-14)
    assert r.final["objective"] == pytest.approx((K if alpha == "inverse-count" else 1) * ell,
                                                 rel=1e-12)
    # the classifier was never touched: still a simplex ETF with unit columns
    G = r.params["E"].T @ r.params["E"]
    np.testing.assert_allclose(G, (K * np.eye(K) - 1) / (K - 1), atol=1e-12)


@pytest.mark.parametrize("n", [10, (40, 10, 4, 2)])
def test_fixed_etf_dot_regression_converges_sublinearly_to_prototypes(n):
    """The dot-regression loss is flat along the sphere at its minimiser, so projected GD only
    reaches the prototypes at rate O(1/t) (measured: 1 − min cos ≈ 27/t at step 0.5, E_H = 1);
    the test judges it by the cosine, and checks the rate is neither stalled nor linear."""
    r = ufm.train("fixed-etf", K=4, n=n, d=8, steps=64000, log_every=1000, lr=0.5, E_H=1.0,
                  loss="dot-regression")
    gap = 1 - r.history["cos_prototype_min"]
    at = {t: gap[list(r.steps).index(t)] for t in (4000, 16000, 64000)}
    assert at[64000] < 1e-3
    for a, b in ((4000, 16000), (16000, 64000)):
        assert 2.5 < at[a] / at[b] < 6  # ≈ 4 per 4× steps: O(1/t), not exponential
    check_constraints(r, 1.0)
    assert r.theory.objective == 0.0 and r.final["objective"] < 1e-6


@pytest.mark.parametrize("groups", [
    ((0, 1), (2,), (3,)),
    ((2, 0), (3,), (1,)),  # any order
    ((3,), (1, 0, 2)),
])
@pytest.mark.parametrize("loss", ["ce", "dot-regression"])
def test_incremental_sessions_reach_prototypes_in_any_order(groups, loss):
    E_H, steps = 1.5, (3000 if loss == "ce" else 40000)
    r = ufm.train("fixed-etf", K=4, n=(12, 3, 6, 9), d=6, steps=steps, log_every=steps // 4,
                  lr=0.5, E_H=E_H, loss=loss, sessions=groups)
    tol = 1e-8 if loss == "ce" else 2e-3
    assert [s["classes"] for s in r.sessions] == [list(g) for g in groups]
    for t, s in enumerate(r.sessions):
        done = [c for g in groups[: t + 1] for c in g]
        cos = np.array(s["cos_prototype"])
        assert np.all(1 - cos[done] < tol), (t, cos)
        if t + 1 < len(groups):  # classes of later sessions not trained yet
            assert np.all(1 - cos[list(groups[t + 1])] > 1e-3)
    assert np.max(np.abs(r.params["H"] - targets(r, E_H))) < (1e-8 if loss == "ce" else 0.1)
    check_constraints(r, E_H)
    assert len(r.steps) == 1 + len(groups) * 4 and r.steps[-1] == len(groups) * steps


def test_sessions_freeze_earlier_features_and_distillation_ties_them():
    kw = dict(K=4, n=5, d=6, steps=2000, log_every=500, lr=0.5, E_H=1.0, sessions="2,2")
    first = ufm.train("fixed-etf", **dict(kw, sessions="2"))  # both sessions = first 2 classes …
    plain = ufm.train("fixed-etf", **kw)
    # session 0 is the same computation whatever follows; session 1 leaves classes 0, 1 alone
    H0 = first.params["H"][:, :10]
    np.testing.assert_array_equal(plain.params["H"][:, :10], H0)
    tied = ufm.train("fixed-etf", **kw, distill=2.0)
    cos = np.array(tied.sessions[-1]["cos_prototype"])
    assert np.all(cos < 1 - 1e-3) and np.all(cos > 0)  # pulled back toward the start
    assert tied.config["distill"] == 2.0


# --- fixed non-negative orthogonal classifier ------------------------------------------------------

@pytest.mark.parametrize("K, d, n", [(4, 4, 10), (4, 10, (20, 5, 5, 2)), (3, 9, 6)])
def test_fixed_orthogonal_zero_mean_collapse_with_disjoint_supports(K, d, n):
    E_H = 2.0
    lr = 0.5 * Sizes(K, n, d).N  # an effective step of 0.5 per feature (its loss weighs 1/N)
    r = ufm.train("fixed-orthogonal", K=K, n=n, d=d, steps=4000, log_every=250, lr=lr, E_H=E_H)
    Q = r.params["E"]
    assert np.all(Q >= 0)
    np.testing.assert_allclose(Q.T @ Q, np.eye(K), atol=1e-12)
    assert np.max(np.abs(r.params["H"] - targets(r, E_H))) < 1e-8
    Hbar = np.asarray(metrics.class_means(jnp.asarray(r.params["H"]), Sizes(K, n, d).classes))
    # zero-mean collapse: the uncentred Gram is E_H·I (orthogonal, equal norms, about the origin)
    np.testing.assert_allclose(Hbar.T @ Hbar, E_H * np.eye(K), atol=1e-8)
    # feature dimension separation: each class uses only its own coordinates
    used = np.abs(Hbar) > 1e-6
    assert np.all(used.sum(axis=1) <= 1) and np.all(used == (Q > 0))
    assert np.all(Hbar > -1e-9)
    check_constraints(r, E_H, halfspace=True)
    th = theory.prototypes({"E_H": E_H}, Sizes(K, n, d), "orthogonal")
    assert r.final["objective"] == pytest.approx(math.log1p((K - 1) * math.exp(-math.sqrt(E_H))),
                                                 rel=1e-12)
    assert th.objective == pytest.approx(r.final["objective"], rel=1e-12)


def test_fixed_orthogonal_masked_sessions():
    E_H = 1.0
    r = ufm.train("fixed-orthogonal", K=4, n=6, d=8, steps=4000, log_every=1000, lr=0.5,
                  E_H=E_H, sessions=2, mask_softmax=True)
    assert np.max(np.abs(r.params["H"] - targets(r, E_H))) < 1e-8
    check_constraints(r, E_H, halfspace=True)


# --- layer-peeled model: minority collapse ------------------------------------------------------------

@pytest.mark.long
def test_layer_peeled_minority_collapse_grows_with_imbalance():
    K = 4
    cos = []
    for R in (1, 3, 10, 100):
        r = ufm.train("lpm", K=K, n=(2 * R, 2 * R, 2, 2), d=8, steps=20000, log_every=5000,
                      lr=0.5, E_H=1.0, E_W=1.0)
        assert np.all(r.history["classifier_norm_excess"] <= 4 * EPS)
        check_constraints(r, 1.0)
        cos.append(r.final["minority_cos"])
        if R == 1:  # balanced: the LPM's optimum is a simplex ETF, its closed form holds
            assert cos[-1] == pytest.approx(-1 / (K - 1), abs=1e-9)
            assert r.final["objective"] == pytest.approx(r.theory.objective, rel=1e-9)
        else:
            assert r.theory is None
    assert all(a < b for a, b in zip(cos, cos[1:]))  # the minority angle shrinks …
    assert cos[-1] > 0.999  # … to collapse
    # while the fixed ETF keeps the balanced angle arccos(−1/(K−1)) at any imbalance
    fixed = ufm.train("fixed-etf", K=K, n=(200, 200, 2, 2), d=8, steps=100, log_every=100)
    E = fixed.params["E"].T
    assert float(ufm.models.constrained.minority_cosine(jnp.asarray(E), (200, 200, 2, 2))) == pytest.approx(
        -1 / (K - 1), abs=1e-12)


# --- per-class counts everywhere ---------------------------------------------------------------

def test_class_means_and_measurements_with_counts():
    rng = np.random.default_rng(0)
    counts = (3, 1, 5)
    H = rng.standard_normal((4, 9))
    means = np.asarray(metrics.class_means(jnp.asarray(H), counts))
    np.testing.assert_allclose(means[:, 0], H[:, :3].mean(axis=1))
    np.testing.assert_allclose(means[:, 1], H[:, 3])
    np.testing.assert_allclose(means[:, 2], H[:, 4:].mean(axis=1))
    dev = np.asarray(metrics.within_class_deviations(jnp.asarray(H), counts))
    np.testing.assert_allclose(dev[:, 3], 0, atol=1e-15)
    # equal counts given as a tuple agree with the balanced code path
    H2 = jnp.asarray(rng.standard_normal((5, 12)))
    assert float(metrics.nc1(H2, (4, 4, 4))) == pytest.approx(float(metrics.nc1(H2, 3)), rel=1e-12)
    with pytest.raises(ValueError, match="sum to 8"):
        metrics.class_means(H2, (4, 4))


def test_plain_models_accept_counts_without_a_theorem():
    r = ufm.train("bias-free", K=3, n=(10, 2, 5), d=4, steps=200, log_every=100)
    assert r.theory is None and np.isfinite(r.final["objective"])
    assert r.params["H"].shape == (4, 17)
    r = ufm.train("bias-free", K=3, n=[4, 4, 4], d=4, steps=10, log_every=10)
    assert r.config["n"] == 4 and r.theory is not None  # equal counts are the balanced case


def test_sweep_runs_a_constrained_model(tmp_path, capsys):
    rc = main(["sweep", "fixed-etf", "--x64", "--K", "3", "--d", "4", "--n", "5/2/1",
               "--E-H", "0.5,2", "--lr", "0.5", "--steps", "2000", "--out", str(tmp_path),
               "--quiet"])
    assert rc == 0
    arrays = np.load(tmp_path / "sweep.npz")
    assert arrays["objective"].shape == (2,)
    assert np.all(1 - arrays["cos_prototype_min"] < 1e-8)
    np.testing.assert_allclose(arrays["objective"], arrays["theory_objective"], rtol=1e-10)


def test_train_writes_E_and_sessions(tmp_path):
    import json

    rc = main(["train", "fixed-etf", "--x64", "--K", "4", "--d", "5", "--n", "3,3,2,2",
               "--sessions", "2,2", "--E-H", "1.5", "--lr", "0.5", "--steps", "500",
               "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    doc = json.loads((tmp_path / "result.json").read_text())
    assert [s["classes"] for s in doc["sessions"]] == [[0, 1], [2, 3]]
    assert len(doc["sessions"][0]["cos_prototype"]) == 4
    assert doc["config"]["n"] == [3, 3, 2, 2] and doc["config"]["loss"] == "ce"
    params = np.load(tmp_path / "params.npz")
    assert params["E"].shape == (5, 4) and params["H"].shape == (5, 10)


@pytest.mark.parametrize("argv, message", [
    (["train", "fixed-etf", "--E-H", "0"], "E_H (--E-H) must be > 0"),
    (["train", "lpm", "--E-W", "-1"], "E_W (--E-W) must be finite and > 0"),
    (["train", "fixed-etf", "--K", "4", "--n", "1,2,3"], "1,2,3 has 3 per-class counts but K (--K) is 4"),
    (["train", "fixed-etf", "--K", "4", "--sessions", "2,1"], "every class must be in one session"),
    (["train", "fixed-etf", "--K", "4", "--sessions", "5"], "between 1 and K=4"),
    (["train", "fixed-orthogonal", "--K", "4", "--d", "3"], "d (--d)=3 is below"),
    (["train", "lpm", "--sessions", "2"], "need a fixed classifier"),
    (["train", "bias-free", "--loss", "ce"], "applies only to the constrained models"),
    (["train", "fixed-orthogonal", "--loss", "dot-regression"], "defined only for fixed-etf"),
    (["train", "fixed-etf", "--distill", "1"], "it needs --sessions"),
    (["train", "fixed-etf", "--n", "3,0,3,3"], "n (--n) must be >= 1"),
    (["train", "fixed-etf", "--lam-W", "1"], "(--lam-W) does not apply"),
])
def test_bad_input(argv, message, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_model_variants_are_cached():
    assert get_model("fixed-etf", loss="dot-regression") is get_model("fixed-etf", loss="dot-regression")
    assert get_model("fixed-etf") is ufm.MODELS["fixed-etf"]


def test_sweep_with_sessions_matches_train(tmp_path):
    kw = dict(K=4, d=5, n=(3, 3, 2, 2), steps=800, lr=5.0, sessions=((2, 0), (3, 1)), distill=0.3)
    rc = main(["sweep", "fixed-etf", "--x64", "--K", "4", "--d", "5", "--n", "3/3/2/2",
               "--sessions", "2,2", "--distill", "0.3", "--E-H", "0.5,2", "--lr", "5",
               "--steps", "800", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    arrays = np.load(tmp_path / "sweep.npz")
    for i, E_H in enumerate((0.5, 2.0)):
        r = ufm.train("fixed-etf", log_every=800, E_H=E_H, **dict(kw, sessions="2,2"))
        assert arrays["objective"][i] == pytest.approx(r.final["objective"], rel=1e-12)
        assert arrays["cos_prototype_mean"][i] == pytest.approx(r.final["cos_prototype_mean"],
                                                                rel=1e-12)
    with pytest.raises(ValueError, match="restarts"):
        ufm.train("fixed-etf", restarts=2, log_every=800, E_H=1.0, **kw)
