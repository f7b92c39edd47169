"""`ufm plot` (ufm.plot): every kind of output becomes a PNG whose plotted numbers are the file's,
sweeps are sliced/reduced by the stated rule, the closed form's threshold is drawn where the grid
crosses it, bad input is refused by name, and neither `ufm plot` nor `ufm measure` imports JAX."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ufm import plot
from ufm.cli import main
from ufm.files import write_json, write_npz

PNG = b"\x89PNG\r\n\x1a\n"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPTHWISE = os.path.join(ROOT, "figures", "data", "depthwise_network_features.npz")


def _is_png(path):
    with open(path, "rb") as fh:
        return fh.read(8) == PNG


def _sweep(tmp_path, seeds=3):
    """A sweep folder as `ufm sweep` writes it: axes lam_H (4), lam_W (3), seeds; a closed form
    whose c/threshold ratio crosses 1 inside the grid."""
    rng = np.random.default_rng(0)
    lam_H, lam_W = np.geomspace(1e-3, 1e-1, 4), np.geomspace(1e-3, 1e-1, 3)
    shape = (4, 3, seeds)
    ratio = np.broadcast_to((4 * np.sqrt(50 * lam_H[:, None] * lam_W[None]))[..., None], shape)
    theory = np.where(ratio < 1, 0.5 * ratio, 0.5)
    arrays = {"objective": theory * (1 + rng.uniform(1e-6, 1e-2, shape)),
              "theory_objective": np.array(theory), "theory_c_ratio": np.array(ratio),
              "nc1_H": rng.uniform(size=shape), "converged": rng.uniform(size=shape) > 0.5,
              "lam_H": lam_H, "lam_W": lam_W}
    config = {"model": "bias-free", "steps": 100, "seed": 5, "seeds": seeds, "optimizer": "gd",
              "axes": {"lam_H": lam_H.tolist(), "lam_W": lam_W.tolist()}, "dtype": "float64",
              "static": {"K": [4], "d": [20], "n": [50]}, "axes_order": ["lam_H", "lam_W"],
              "base": {"lam_W": 0.005, "lam_H": 0.005, "lr": 0.1}}
    write_npz(tmp_path / "sweep.npz", arrays)
    write_json(tmp_path / "sweep.json", config)
    return arrays


def test_sweep_heat_map_is_the_file_reduced_by_the_stated_rule(tmp_path):
    arrays = _sweep(tmp_path)
    p = plot.plot(str(tmp_path))
    assert _is_png(p.path) and p.path == str(tmp_path / "plot.png") and p.kind == "sweep"
    gap = np.abs(arrays["objective"] - arrays["theory_objective"]) / arrays["theory_objective"]
    # default: the gap, x = first traced axis (columns), y = second (rows), median over seeds
    np.testing.assert_array_equal(p.data["gap"], np.median(gap, axis=2).T)
    np.testing.assert_array_equal(p.data["lam_H"], arrays["lam_H"])
    # the threshold c = 1 crosses the grid: its ratio is drawn (rows lam_W, columns lam_H)
    np.testing.assert_array_equal(p.data["theory_c_ratio"], arrays["theory_c_ratio"][..., 0].T)
    # another array, axes swapped, a seed picked by value, another rule
    p = plot.plot(str(tmp_path / "sweep.npz"), str(tmp_path / "b.png"), array="nc1_H",
                  x="lam_W", y="lam_H", at=["seed=6"])
    np.testing.assert_array_equal(p.data["nc1_H"], arrays["nc1_H"][:, :, 1])
    p = plot.plot(str(tmp_path), str(tmp_path / "c.png"), array="nc1_H", y="none",
                  reduce="max", at=["lam_W=0.01"])
    np.testing.assert_array_equal(p.data["nc1_H"], arrays["nc1_H"][:, 1, :].max(axis=1))
    p = plot.plot(str(tmp_path), str(tmp_path / "d.png"), array="converged", reduce="mean")
    np.testing.assert_array_equal(p.data["converged"], arrays["converged"].mean(axis=2).T)


@pytest.mark.parametrize("options, needle", [
    (dict(array="nope"), "array (--array) must be one of gap"),
    (dict(x="lam_X"), "x (--x) must be one of lam_H, lam_W, seed"),
    (dict(x="lam_H", y="lam_H"), "two different axes"),
    (dict(at=["lam_H"]), "at (--at) must be AXIS=VALUE"),
    (dict(reduce="sum"), "reduce (--reduce) must be one of min, max, mean, median"),
])
def test_sweep_bad_options_are_named(tmp_path, options, needle):
    _sweep(tmp_path)
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        plot.plot(str(tmp_path), **options)


def test_path_must_be_an_output(tmp_path):
    with pytest.raises(ValueError, match=r"path \(PATH\) must be a folder"):
        plot.plot(str(tmp_path))
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match=r"path \(PATH\) must be a train, sweep"):
        plot.plot(str(tmp_path / "x.txt"))
    (tmp_path / "result.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        plot.plot(str(tmp_path))


def test_train_plot_has_the_history_and_the_gap_to_the_closed_form(tmp_path, capsys):
    """A real run through the CLI with --plot (in process): the objective, its gap to the closed
    form and every measurement are the result.json's numbers."""
    out = tmp_path / "run"
    assert main(["train", "bias-free", "--steps", "300", "--log-every", "50", "--quiet",
                 "--x64", "--out", str(out), "--plot"]) == 0
    assert f"wrote {out}/plot.png" in capsys.readouterr().out
    doc = json.loads((out / "result.json").read_text())
    p = plot.plot(str(out))
    h = doc["history"]
    np.testing.assert_array_equal(p.data["step"], h["step"])
    np.testing.assert_array_equal(p.data["objective"], h["objective"])
    f_star = doc["theory"]["objective"]
    np.testing.assert_allclose(p.data["gap"], (np.array(h["objective"]) - f_star) / f_star,
                               rtol=1e-15)
    for name in ("nc1_H", "nc2_of_W", "nc3_of"):
        np.testing.assert_array_equal(p.data[name], h[name])
    assert "bias-free" in p.title and "K=4" in p.title and "lam_H=0.005" in p.title


def test_train_without_closed_form_gaps_to_the_global_bound(tmp_path):
    doc = {"model": "ce", "config": {"model": "ce", "K": 3, "n": 2, "d": 2, "optimizer": "lbfgs"},
           "theory": None, "history": {"step": [0, 10, 20], "objective": [3.0, 2.0, 1.5],
                                       "nc1_H": [1.0, None, 0.1], "per_layer": [[1, 2], [3, 4],
                                                                               [5, 6]]},
           "certificate": {"lower_bound": 1.25}}
    write_json(tmp_path / "result.json", doc)
    p = plot.plot(str(tmp_path))
    np.testing.assert_allclose(p.data["gap"], (np.array([3.0, 2.0, 1.5]) - 1.25) / 1.25)
    np.testing.assert_array_equal(p.data["nc1_H"], [1.0, np.nan, 0.1])
    np.testing.assert_array_equal(p.data["per_layer[1]"], [2, 4, 6])
    write_json(tmp_path / "result.json", dict(doc, history={"step": []}))
    with pytest.raises(ValueError, match="history is empty"):
        plot.plot(str(tmp_path))


def test_measure_and_proof_plots_are_their_files(tmp_path):
    doc = {"N": 10, "K": 2, "conventions": {"global_mean": "classes"}, "source": {"file": "x"},
           "layers": {"h1": {"d": 3, "nc1": 0.5, "nc2_etf_H": None, "undefined": {}},
                      "h2": {"d": 3, "nc1": 0.1, "nc2_etf_H": 0.2, "nc3_etf": 0.3,
                             "undefined": {}}}}
    write_json(tmp_path / "measure.json", doc)
    p = plot.plot(str(tmp_path / "measure.json"))
    assert _is_png(p.path)
    np.testing.assert_array_equal(p.data["nc1"], [0.5, 0.1])
    np.testing.assert_array_equal(p.data["nc2_etf_H"], [np.nan, 0.2])
    np.testing.assert_array_equal(p.data["nc3_etf"], [np.nan, 0.3])
    assert list(p.data["layer"]) == ["h1", "h2"] and "d" not in p.data
    proof = {"theorem": "3.1", "title": "t", "config": {"K": 4},
             "steps": [{"name": "a", "at": "random", "gap": 1.0},
                       {"name": "a", "at": "random", "gap": 2.0},
                       {"name": "a", "at": "optimum", "gap": 1e-9},
                       {"name": "b", "at": "random", "gap": None}]}
    write_json(tmp_path / "p" / "proof.json", proof)
    p = plot.plot(str(tmp_path / "p"))
    np.testing.assert_array_equal(p.data["a/random"], [1.0, 2.0])
    np.testing.assert_array_equal(p.data["a/optimum"], [1e-9])
    np.testing.assert_array_equal(p.data["b/random"], [np.nan])
    with pytest.raises(ValueError, match="only apply to a sweep"):
        plot.plot(str(tmp_path / "p"), array="gap")


def test_measure_and_plot_never_import_jax(tmp_path):
    """`ufm measure FILE --plot` and `ufm plot` in a fresh interpreter: JAX is never imported, and
    the plot holds measure.json's numbers."""
    code = (f"import sys; from ufm.cli import main; "
            f"rc = main(['measure', {DEPTHWISE!r}, '--out', {str(tmp_path)!r}, '--quiet', "
            f"'--plot']); rc2 = main(['plot', {str(tmp_path)!r}, '--out', "
            f"{str(tmp_path / 'again.png')!r}]); "
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', "
            f"'optax')); print('IMPORTED', bad); sys.exit(rc or rc2)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "IMPORTED []" in run.stdout
    doc = json.loads((tmp_path / "measure.json").read_text())
    p = plot.plot(str(tmp_path))
    assert _is_png(tmp_path / "plot.png") and _is_png(tmp_path / "again.png")
    np.testing.assert_array_equal(p.data["nc1"], [doc["layers"][k]["nc1"] for k in ("h1", "h2")])
