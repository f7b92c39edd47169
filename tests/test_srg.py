"""The triangular (strongly-regular-graph) construction of the deep ReLU MSE UFM (docs/theory.md
§6.6): ReLU of a rank-r pre-activation is an orthogonal frame of K = C(r, 2) classes; the
construction's exact objective at its scalars is the model's objective at its parameters; it beats
deep neural collapse from four layers on (at the published setting's λ) and not at two or three."""
import itertools
import json

import jax.numpy as jnp
import numpy as np
import pytest

from ufm import theory
from ufm.cli import main
from ufm.models import Sizes, get_model


def lams(L, lam):
    return {"lam_H1": lam, **{f"lam_W{l}": lam for l in range(1, L + 1)}}


@pytest.mark.parametrize("r", [4, 5, 6, 8])
def test_relu_of_the_srg_preactivation_is_an_orthogonal_frame(r):
    """M_{ab,cd} = |{a,b} ∩ {c,d}| − 1 built from the pairs themselves; ReLU(M) = I; its spectrum
    r − 2 (r − 1 times), (4 − r)(r − 1)/2 (once), 0 (K − r times)."""
    pairs = list(itertools.combinations(range(r), 2))
    K = len(pairs)
    M = np.array([[len(set(p) & set(q)) - 1.0 for q in pairs] for p in pairs])
    np.testing.assert_array_equal(theory.srg_preactivation(r), M)
    np.testing.assert_array_equal(np.maximum(M, 0), np.eye(K))
    want = sorted([r - 2.0] * (r - 1) + [(4.0 - r) * (r - 1) / 2] + [0.0] * (K - r))
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(M)), want, atol=1e-12)
    assert np.linalg.matrix_rank(M) == (r - 1 if r == 4 else r) < K


@pytest.mark.parametrize("r, L, n, d, scale", [(4, 2, 2, 6, 1.0), (5, 3, 1, 12, 1.0),
                                               (4, 4, 3, 7, 2.0), (5, 5, 1, 10, 0.5)])
def test_the_constructions_objective_is_the_models_objective_at_its_parameters(r, L, n, d, scale):
    """The construction's formula (theory.srg_objective, minimised over its scalars) against the
    model's own objective at the parameters built from it, with a different λ at every layer:
    two independent computations of one number (float64: 1e-12)."""
    K = r * (r - 1) // 2
    hyper = {"lam_H1": 0.004 * scale, **{f"lam_W{l}": 0.002 * (l + 1) for l in range(1, L + 1)}}
    sizes = Sizes(K, n, d)
    found = theory.deep_relu_srg(hyper, sizes, L)
    params = theory.srg_params(found, hyper, sizes, L)
    model = get_model("relu-extended") if L == 2 else get_model("deep-relu", depth=L)
    value = float(model.objective({k: jnp.asarray(v) for k, v in params.items()}, hyper, sizes))
    assert value == pytest.approx(found.objective, rel=1e-12)
    # ReLU of the last pre-activation's class means is an orthogonal frame, exactly
    from ufm.models.layered import layered_features

    levels = layered_features({k: jnp.asarray(v) for k, v in params.items()}, "relu")
    last = np.asarray(levels[f"H{L}"])[:, ::n][:K]
    np.testing.assert_allclose(last, last[0, 0] * np.eye(K), atol=1e-12 * abs(last[0, 0]))


def test_the_construction_beats_dnc_from_four_layers_on():
    """K = 10 (r = 5), n = 1, every λ = 0.004 (docs/findings.md's setting): above the DNC value at
    L = 2, 3, below it at L = 4, 5 — where L-BFGS seeds had been seen to end below DNC."""
    sizes = Sizes(10, 1, 10)
    ratio = {L: theory.deep_relu_srg(lams(L, 0.004), sizes, L).objective
             / theory.layered(lams(L, 0.004), sizes, L, "relu").objective for L in (2, 3, 4, 5)}
    assert ratio[2] > 1 and ratio[3] > 1 and ratio[4] < 0.95 and ratio[5] < ratio[4]


def test_init_from_srg_starts_at_the_construction_on_its_kinks(tmp_path, capsys):
    """`--init-from srg` starts at the construction's objective; M's zero entries are ReLU kinks,
    so the second-order certificate makes no claim there and says why."""
    out = tmp_path / "run"
    assert main(["train", "deep-relu", "--depth", "3", "--K", "6", "--n", "1", "--d", "6",
                 "--x64", "--lam-H1", "0.004", "--lam-W", "0.004", "--init-from", "srg",
                 "--steps", "1", "--log-every", "1", "--hessian", "--quiet",
                 "--out", str(out)]) == 0
    doc = json.loads((out / "result.json").read_text())
    want = theory.deep_relu_srg(lams(3, 0.004), Sizes(6, 1, 6), 3).objective
    assert doc["history"]["objective"][0] == pytest.approx(want, rel=1e-12)
    assert doc["second_order"]["kind"] == "not twice differentiable" and doc["second_order"]["kinks"]


@pytest.mark.parametrize("argv, message", [
    (["--K", "5", "--d", "5"], "K = C(r, 2) classes with r >= 4"),
    (["--K", "6", "--d", "5"], "needs d >= K = 6"),
    (["--K", "6", "--d", "6", "--n", "1,2,1,1,1,1"], "balanced classes")])
def test_the_construction_refuses_what_it_cannot_build(argv, message, tmp_path, capsys):
    assert main(["train", "deep-relu", "--init-from", "srg", "--steps", "1", "--quiet",
                 "--allow-small-d", "--out", str(tmp_path / "r")] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
