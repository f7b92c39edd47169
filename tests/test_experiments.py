"""Every experiment script's --smoke into a temporary folder (never into figures/)."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import SCRIPTS
from experiments.common import FIGURES


# Every script's --smoke, all in one process: the scripts are independent, but each in a process
# of its own would pay JAX's and matplotlib's start-up 22 times, and compile again the programs
# that scripts share (a quarter of the suite's time went to these start-ups).
RUNNER = """
import importlib, json, sys, time, traceback
out, names = sys.argv[1], sys.argv[2:]
status = {}
for name in names:
    t0 = time.perf_counter()
    try:
        importlib.import_module(f"experiments.{name}").main(
            ["--smoke", "--quiet", "--out", f"{out}/{name}"])
        status[name] = None
    except BaseException:  # noqa: BLE001 - reported per figure by the test
        status[name] = traceback.format_exc()[-3000:]
    print(f"{name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
with open(f"{out}/status.json", "w") as fh:
    json.dump(status, fh)
"""


def _check_smoke(name, folder):
    png = folder / f"{name}.png"
    assert png.exists() and png.stat().st_size > 5000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = list((folder / "data").glob("*.npz"))
    assert data and all(np.load(f).files for f in data)
    for js in (folder / "data").glob("*.json"):
        json.loads(js.read_text())
    assert not list(folder.rglob(".tmp-*"))  # atomic writes leave nothing behind
    arrays = dict(np.load(folder / "data" / f"{name}.npz")) if (
        folder / "data" / f"{name}.npz").exists() else {}
    cfg_path = folder / "data" / f"{name}.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    assert check_saved_numbers(name, arrays, cfg, folder / "data") >= 1


@pytest.mark.long
def test_every_figure_smoke_runs_and_saves_checked_numbers(tmp_path):
    names = [n for n in SCRIPTS if n != "depthwise_network"
             or importlib.util.find_spec("sklearn") is not None]  # needs the digits extra
    before = {f: os.path.getmtime(os.path.join(FIGURES, f)) for f in os.listdir(FIGURES)
              if f.endswith(".png")} if os.path.isdir(FIGURES) else {}
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(tmp_path), *names],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads((tmp_path / "status.json").read_text())
    failures = {name: trace for name, trace in status.items() if trace}
    for name in names:
        if name in failures:
            continue
        try:
            _check_smoke(name, tmp_path / name)
        except AssertionError as err:  # every figure is checked; all failures reported
            failures[name] = f"{type(err).__name__}: {err}"
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    after = {f: os.path.getmtime(os.path.join(FIGURES, f)) for f in before}
    assert after == before  # figures/ untouched


def test_runner_rejects_unknown_figure():
    proc = subprocess.run([sys.executable, "-m", "experiments", "--only", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown figure" in proc.stderr


# --- at least one saved number per figure, checked against a closed form or an identity -------

TOL = 1e-9


def _not_below(values, floor, diverged=None):
    """A minimisation cannot end below the global minimum: values ≥ floor (where not diverged)."""
    values, floor = np.asarray(values, float), np.broadcast_to(np.asarray(floor, float),
                                                              np.shape(values))
    ok = np.isfinite(values) if diverged is None else ~np.asarray(diverged, bool)
    assert ok.any()
    assert np.all(values[ok] >= floor[ok] - TOL * np.maximum(1.0, np.abs(floor[ok]))), (
        values, floor)
    return int(ok.sum())


def _trajectories(arrays, cfg, prefix=""):
    """h_objective goes down from its start, and never below the closed form when there is one."""
    f = arrays[prefix + "h_objective"]
    assert np.isfinite(f).all() and f[-1] <= f[0]
    theory = (cfg.get("theory") or {}).get("objective")
    if theory is not None:
        _not_below(f[-1:], theory)
    return 1


def check_saved_numbers(name, a, cfg, data):
    """How many numbers of figure `name`'s saved data were checked (each check can fail)."""
    from ufm import geometry, theory
    from ufm.models import Sizes

    checked = 0
    if name in ("bias_free", "unregularized_bias", "linear_extended", "relu_extended",
                "han_decomposition", "orthogonal_classifier"):
        checked += _trajectories(a, cfg)
    if name == "bias_free":  # the recorded ‖W‖ is that of the saved W
        assert a["h_norm_W"][-1] == pytest.approx(np.linalg.norm(a["p_W"]), rel=1e-12)
        checked += 1
    if name == "han_decomposition":  # L = L_NC1 + L_NC2/3 + L_LS⊥ (+ λ_H/2‖H‖²)
        parts = a["h_han_nc1"] + a["h_han_nc23"] + a["h_han_ls_perp"]
        assert np.all(parts <= a["h_objective"] + TOL)
        checked += 1
    if name == "appendix_g":
        for f in sorted(data.glob("appendix_g_*.npz")):  # one file per model, each with its theory
            checked += _trajectories(dict(np.load(f)),
                                     json.loads(f.with_suffix(".json").read_text()))
    if name == "orthogonal_classifier":  # projected GD keeps every ‖h‖² ≤ E_H
        assert cfg["final"]["feature_norm_excess"] <= 1e-9
        checked += 1
    if name == "regularized_bias":
        for i, lam_b in enumerate(cfg["lam_b"]):
            ref = theory.plain(dict(lam_W=cfg["lam_W"], lam_H=cfg["lam_H"], lam_b=lam_b),
                               Sizes(cfg["K"], cfg["n"], cfg["d"]), bias="regularized")
            assert a["theory_objective"][i] == pytest.approx(ref.objective, rel=1e-12)
        checked += _not_below(a["objective"], a["theory_objective"], a["diverged"])
    if name == "perturbed_features":
        rho, lam, K = cfg["rho"], cfg["lam_W"], cfg["K"]
        kappa = [(rho + K * lam) / (rho + K * (lam + s ** 2)) for s in cfg["sigmas"]]
        np.testing.assert_allclose(a["kappa"], kappa, rtol=1e-12)
        checked += 1
    if name == "thresholds":
        c = np.asarray(cfg["c"])
        checked += _not_below(a["plain_objective"], np.where(c < 1, c - c ** 2 / 2, 0.5),
                              a["plain_diverged"])
    if name == "phase_diagram":
        for part in ("plain", "ext"):
            checked += _not_below(a[f"{part}_objective"], a[f"{part}_theory_objective"],
                                  a[f"{part}_diverged"])
    if name == "relu_assumption":
        for key in [k for k in a if k.endswith("/objective")]:  # ReLU: same optimum as linear
            checked += _not_below(a[key], a[key[: -len("objective")] + "closed_form"])
    if name == "proof_gaps":  # each inequality of a proof holds at every point of the run
        for key in [k for k in a if not k.endswith("/step")]:
            assert np.all(a[key] >= -1e-8 * np.maximum(1.0, np.abs(a[key]).max())), key
            checked += 1
    if name == "mse_vs_ce":
        for part in ("bias_free", "ce"):
            gram = a[f"{part}_gram"]
            assert float(geometry.of_distance(gram)) == pytest.approx(
                float(a[f"{part}_nc2_of_H"]), rel=1e-9, abs=1e-12)
            checked += 1
    if name in ("minority_collapse", "incremental_sessions"):
        for key in [k for k in a if "cos" in k]:
            assert np.all(np.abs(a[key]) <= 1 + 1e-9), key
            checked += 1
    if name == "depthwise_network":
        assert np.isfinite(a["loss"]).all() and a["loss"][-1] < a["loss"][0]
        checked += 1
    if name == "deep_linear_thresholds":
        K, n, d = cfg["K"], cfg["n"], cfg["d"]
        for L in cfg["depths"]:
            M = L + 1
            refs = []
            for beta in cfg["beta"]:
                lam = beta / (K * n ** (1 / M))  # all λ equal: β = K·n^(1/M)·λ
                hyper = {"lam_H1": lam, **{f"lam_W{l}": lam for l in range(1, L + 1)}}
                refs.append(theory.layered(hyper, Sizes(K, n, d), L, "linear").objective)
            for init in cfg["inits"]:
                key = f"L{L}_init{init[0]:g}"
                checked += _not_below(a[key], refs, a[key + "_diverged"])
    if name == "deep_ce_low_rank":
        for i, L in enumerate(cfg["depths"]):
            for j, K in enumerate(cfg["Ks"]):
                lam = cfg["lam"]
                hyper = {"lam_H1": lam, **{f"lam_W{l}": lam for l in range(1, L + 1)}}
                ref = theory.deep_cross_entropy(hyper, Sizes(K, cfg["n"], cfg["d"]), L)
                assert a["f_dnc"][i, j] == pytest.approx(ref.dnc, rel=1e-12)
                checked += 1
    if name == "deep_relu_below_dnc":  # DNC value = the deep linear optimum; gap = (f − DNC)/DNC
        for key in [k for k in a if k.endswith("/objective")]:
            K = key.split("/")[0]
            dnc = a[f"{K}/dnc"][..., None]
            np.testing.assert_allclose(a[f"{K}/dnc_gap"], (a[key] - dnc) / dnc, rtol=1e-9,
                                       atol=1e-12)
            for i, L in enumerate(cfg["depths"]):
                hyper = {"lam_H1": cfg["lam"], **{f"lam_W{l}": cfg["lam"] for l in range(1, L + 1)}}
                k = int(K[1:])
                ref = theory.layered(hyper, Sizes(k, cfg["n"], k), L, "linear").objective
                assert dnc[i, 0, 0] == pytest.approx(ref, rel=1e-12)
            checked += 1
    if name == "imbalanced_ce":  # every seed ≥ the certified optimum; R = 1 is a simplex ETF
        assert np.all(np.abs(a["gap"]) <= 1e-10 * a["optimum"])
        for opt in ("lbfgs", "gd"):
            checked += _not_below(a[f"{opt}_objective"], a["optimum"][..., None])
            assert np.all(a[f"{opt}_rated"].sum(-1) == cfg["seeds"])
        at_one = list(cfg["ratios"]).index(1)
        np.testing.assert_allclose(a["angle"][:, at_one],
                                   np.degrees(np.arccos(-1 / (cfg["K"] - 1))), atol=1e-6)
        assert np.all(a["rank"][:, at_one] == cfg["K"] - 1)
        for i, lam in enumerate(cfg["lams"]):  # collapsed exactly from the derived R* on
            star = theory.minority_collapse_ratio(cfg["K"] - cfg["minority"], cfg["minority"],
                                                  cfg["n_min"], lam)
            R = np.asarray(cfg["ratios"])
            assert np.all(a["angle"][i][R >= star] < 1e-3) and np.all(a["angle"][i][R < star] > 1)
            checked += R.size
    if name == "certified_phase_diagram":  # bounds below every seed, the solver's gap closed
        assert a["solver_global"].all() and np.all(np.abs(a["gap"]) <= 1e-10 * a["optimum"])
        checked += _not_below(a["seed_objective"], a["optimum"][..., None])
        assert np.all(a["seed_lower_bound"] <= a["optimum"][..., None] * (1 + 1e-12))
        np.testing.assert_allclose(a["fraction_global"], a["seed_global"].mean(-1))
    if name == "bias_transition":  # certified points on the closed form; CE stays an ETF
        for p, (lam_W, lam_H) in enumerate(cfg["lam_pairs"]):
            key = f"regularized-bias/{p}"
            assert a[f"{key}/global"].all() and a[f"ce-bias/{p}/global"].all()
            for i, K in enumerate(cfg["Ks"]):
                np.testing.assert_allclose(a[f"{key}/cos_uncentred_H"][i],
                                           a[f"{key}/theory_cos/K={K}"], atol=1e-7)
                np.testing.assert_allclose(a[f"ce-bias/{p}/cos_uncentred_H"][i], -1 / (K - 1),
                                           atol=1e-7)
                assert np.all(np.abs(a[f"ce-bias/{p}/b_mean"][i]) < 1e-8)  # CE: the bias is 0
                checked += 2 * len(a["lam_b"])
        for row in cfg["rows"]:  # the simulation leaves the ETF after the predicted λ_b*
            assert row["departs_at"] is None or row["departs_at"] > row["transition"]
    if name == "regression_collapse":  # on the closed form; collapse exactly where Z ≠ 0
        checked += _not_below(a["objective"], a["theory"])
        done = a["converged"]
        np.testing.assert_allclose(a["objective"][done], a["theory"][done], rtol=1e-9)
        nonzero = done & np.isfinite(a["nrc3"])
        assert nonzero.any() and np.all(a["nrc1"][nonzero] < 1e-9)
        assert np.all(a["nrc2"][nonzero] < 1e-9) and np.all(a["nrc3"][nonzero] < 1e-6)
        assert np.all(a["zero_objective"] < 1e-8) and np.all(a["zero_nrc1"] > 0.01)
        checked += int(nonzero.sum())
    if name == "seli_path":  # certified points; the limit is SELI; alignment rises toward it
        for R in cfg["ratios"]:
            # every point certified (Newton's path, the convex solver where it leaves a point)
            assert a[f"R={R}/global"].all() and a[f"R={R}/seli_error"] < 1e-9
            assert np.all(a[f"R={R}/gap"] <= 1e-9)
            assert a[f"R={R}/limit_gap"] <= 1e-10
            cos = a[f"R={R}/cos"]
            ok = np.isfinite(cos)
            assert np.all(cos[ok] <= 1 + 1e-12) and np.all(np.diff(cos[ok]) >= -1e-9)
            if R == 1:  # balanced: the optimum is the limit's direction at every μ
                np.testing.assert_allclose(cos[ok], 1.0, atol=1e-9)
            checked += int(ok.sum())
    if name == "logit_adjusted_geometry":  # certified limits on the closed form, recomputed here
        from ufm import limit

        K1, K2 = cfg["K1"], cfg["K2"]
        for gamma in cfg["gammas"]:
            assert np.all(a[f"g={gamma}/gap"] <= 1e-10) and np.all(a[f"g={gamma}/multiplier"] <= 0)
            for j, R in enumerate(a["R"]):
                geo = limit.two_group_geometry(K1, K2, R, 1.0, 1.0, R ** -gamma)
                want = {"w_norm_ratio": np.sqrt(geo.w_norm2[1] / geo.w_norm2[0]),
                        "h_norm_ratio": np.sqrt(geo.h_norm2[1] / geo.h_norm2[0]),
                        "w_cos_min": geo.w_cos[1], "h_cos_min": geo.h_cos[1],
                        "w_cos_across": geo.w_cos[2], "h_cos_across": geo.h_cos[2]}
                for q, v in want.items():
                    assert a[f"g={gamma}/{q}"][j] == pytest.approx(v, rel=1e-8, abs=1e-10), q
                    checked += 1
                if R == 1:  # balanced: a simplex ETF whatever γ
                    assert a[f"g={gamma}/w_cos_min"][j] == pytest.approx(-1 / (K1 + K2 - 1))
        np.testing.assert_allclose(a["star/w_norm_ratio"], 1.0, atol=1e-8)
    if name == "ntp_collapse":  # certified path; the limit recomputed; Ẑ beaten, span kept
        from ufm import limit

        S = a["supports"].astype(bool)
        assert np.all(a["gap"] <= 1e-9) and np.all(a["lower_bound"] <= a["objective"] + 1e-12)
        # the certificate's gap uses its own evaluation of the objective: round-off apart
        np.testing.assert_allclose((a["objective"] - a["lower_bound"]) / a["objective"],
                                   a["gap"], atol=1e-13)
        svm = limit.solve_support_svm(S)
        assert float(a["svm_value"]) == pytest.approx(float(svm.value), rel=1e-9)
        V = S.shape[0]
        zhat = np.linalg.svd((np.eye(V) - 1 / V) @ S, compute_uv=False).sum()
        assert float(a["centred_support_value"]) == pytest.approx(zhat, rel=1e-12)
        assert float(a["svm_value"]) < zhat and float(a["centred_support_multiplier"]) > 0
        small = a["lams"] <= 1e-2
        assert np.all(np.diff(a["cos_svm"][small]) > 0) and np.all(a["outside_span"] <= 1e-10)
        assert np.all(np.diff(a["log_ratio_error"][small]) < 0)
        checked += int(a["lams"].size)
    if name == "training_loop":  # D_l = K·NC1 per layer; the law's fit recomputed from D
        np.testing.assert_allclose(a["fuzziness"], cfg["K"] * a["nc1"], rtol=1e-12)
        layers = np.arange(1, a["fuzziness"].shape[1] + 1)
        for i, D in enumerate(a["fuzziness"]):
            slope, intercept = np.polyfit(layers, np.log(D), 1)
            assert a["log_ratio"][i] == pytest.approx(slope, rel=1e-10, abs=1e-12)
            assert a["intercept"][i] == pytest.approx(intercept, rel=1e-10, abs=1e-12)
            assert a["r2"][i] <= 1.0 + 1e-12
            checked += 1
        assert np.all((a["accuracy"] >= 0) & (a["accuracy"] <= 1))
    if name == "hessian_spectra":  # λ_min is the spectrum's, the kind follows from it
        for row in cfg["rows"]:
            ev = a[f"{row['key']}/eigenvalues"]
            assert row["min_eigenvalue"] == ev.min() and np.all(np.diff(ev) >= 0)
            assert row["kind"] == ("strict local minimum" if ev.min() > row["tol"] else
                                   "saddle" if ev.min() < -row["tol"] else "degenerate")
            K, L = row["K"], row["L"]
            if f"{row['key']}/predicted" in a:  # every eigenvalue against the closed form
                np.testing.assert_allclose(ev, np.sort(a[f"{row['key']}/predicted"]), rtol=1e-10,
                                           atol=1e-12)
            if row["key"] in ("bias_free", "deep_linear"):
                checked += 1
                continue
            hyper = {"lam_H1": cfg["lam"], **{f"lam_W{l}": cfg["lam"] for l in range(1, L + 1)}}
            ref = theory.deep_cross_entropy(hyper, Sizes(K, cfg["n"], cfg["d"]), L)
            if row["name"] == "dnc":  # the construction's objective is the 1-D closed form
                assert row["objective"] == pytest.approx(ref.dnc, abs=1e-10)
            checked += 1
    if name == "constructions":  # the shape objective reproduces the closed-form references
        for i, L in enumerate(cfg["depths"]):
            hyper = {"lam_H1": cfg["lam"], **{f"lam_W{l}": cfg["lam"] for l in range(1, L + 1)}}
            for j, r in enumerate(cfg["rs"]):
                K = r * (r - 1) // 2
                ref = theory.deep_cross_entropy(hyper, Sizes(K, cfg["n"], K), L)
                assert a["f_dnc"][i, j] == pytest.approx(ref.dnc, abs=1e-10)
                assert a["f_tri"][i, j] == pytest.approx(ref.triangular, abs=1e-12)
                if K % 2 == 0:
                    assert a["f_lr"][i, j] == pytest.approx(ref.low_rank, abs=1e-10)
                checked += 1
    if name == "srg_construction":  # the construction and DNC recomputed; polishing only lowers
        for i, L in enumerate(cfg["depths"]):
            hyper = {"lam_H1": cfg["lam"], **{f"lam_W{l}": cfg["lam"] for l in range(1, L + 1)}}
            for j, r in enumerate(cfg["rs"]):
                sizes = Sizes(r * (r - 1) // 2, cfg["n"], r * (r - 1) // 2)
                assert a["f_dnc"][i, j] == pytest.approx(
                    theory.layered(hyper, sizes, L, "relu").objective, rel=1e-12)
                assert a["f_srg"][i, j] == pytest.approx(
                    theory.deep_relu_srg(hyper, sizes, L).objective, rel=1e-9)
        dnc, srg, polished = a["seed_refs"]
        assert polished <= srg * (1 + 1e-12)
        checked += 1
    if name == "landscape_basins":  # every seed rated once; kinds agree with their eigenvalues
        from experiments.landscape_basins import fractions

        share = fractions(a["second_order_kind"], a["reached"])
        np.testing.assert_allclose(share.sum(-1), 1.0, atol=1e-12)
        kind, lo, tol = a["second_order_kind"], a["min_eigenvalue"], a["second_order_tol"]
        assert np.all(lo[kind == "strict local minimum"] > tol[kind == "strict local minimum"])
        assert np.all(lo[kind == "saddle"] < -tol[kind == "saddle"])
        checked += 1
    return checked


@pytest.mark.parametrize("name", SCRIPTS)
def test_committed_figure_data_pass_the_same_checks(name):
    """The full-size data in figures/data satisfy the checks the smoke runs do."""
    from pathlib import Path

    data = Path(FIGURES) / "data"
    path = data / f"{name}.npz"
    if path.exists():
        arrays, cfg = dict(np.load(path)), json.loads(path.with_suffix(".json").read_text())
    elif list(data.glob(f"{name}_*.npz")):  # saved per part (appendix_g: one file per model)
        arrays, cfg = {}, {}
    else:
        pytest.skip(f"{path} not built yet")
    assert check_saved_numbers(name, arrays, cfg, data) >= 1
