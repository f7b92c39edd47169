"""`ufm measure` (ufm.measure): parity with plain-numpy reimplementations of the peers'
definitions (rhubarbwu/neural-collapse, tding1/Neural-Collapse's validate_NC.py), the conventions
as options, streaming = in memory, the JAX metrics on the same arrays, and bad input."""
import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ufm import measure, metrics

COUNTS = (2, 5, 9, 3)
EPS = np.finfo(np.float64).eps


def _problem(seed=0, counts=COUNTS, d=7, offset=0.0):
    """Shuffled features [N, d] with labels 10·k + 3 (any values, any order), W, b."""
    rng = np.random.default_rng(seed)
    K = len(counts)
    centres = rng.normal(size=(K, d)) * 2.0
    labels = np.repeat(np.arange(K), counts)
    X = centres[labels] + rng.normal(size=(len(labels), d)) + offset
    perm = rng.permutation(len(labels))
    return X[perm], labels[perm], 10 * labels[perm] + 3, rng.normal(size=(K, d)), rng.normal(size=K)


# --- the peers' definitions, written out in numpy ---------------------------------------------

def _stats(X, y, K, weighted_mean):
    means = np.stack([X[y == k].mean(axis=0) for k in range(K)])
    mG = X.mean(axis=0) if weighted_mean else means.mean(axis=0)
    D = X - means[y]
    return means, mG, D.T @ D / len(y)


def rhubarbwu(X, y, W):
    """neural_collapse.measure, with its MeanAccumulator's default (unweighted) global mean."""
    K, d = W.shape
    M, mG, V_intra = _stats(X, y, K, weighted_mean=False)
    Mc = M - mG
    V_inter = Mc.T @ Mc / K
    pinv = np.linalg.pinv(V_inter, rcond=d * EPS)  # torch.linalg.pinv's default cut-off
    vals, vecs = np.linalg.eigh(V_inter)  # svds(V_inter, k=K−1): the top K−1 directions
    top = vecs[:, -(K - 1):] / vals[-(K - 1):]
    var_norms = np.array([np.mean(np.sum((X[y == k] - M[k]) ** 2, axis=1)) for k in range(K)])
    iu = np.triu_indices(K, 1)
    cdnv = (var_norms[iu[0]] + var_norms[iu[1]]) / 2 / np.sum((M[iu[0]] - M[iu[1]]) ** 2, axis=1)
    U = Mc / np.linalg.norm(Mc, axis=1, keepdims=True)
    dist = np.linalg.norm(U[iu[0]] - U[iu[1]], axis=1)

    def structure_error(A, B):
        s = B @ A.T
        s = s / np.linalg.norm(s)
        return np.linalg.norm(s + 1 / K / math.sqrt(K - 1) - np.eye(K) / math.sqrt(K - 1))

    ncc = np.argmin(((X[:, None, :] - M[None]) ** 2).sum(-1), axis=1)
    return {"nc1": np.trace(pinv @ V_intra) / K,
            "nc1_svd": np.trace(V_intra @ top @ vecs[:, -(K - 1):].T) / K,
            "nc1_quotient": np.trace(V_intra) / np.trace(V_inter),
            "nc1_cdnv": np.mean(cdnv),
            "nc2_etf_H": structure_error(Mc, Mc),
            "hyperspherical_distance": np.var(dist),
            "hyperspherical_log": np.var(np.log(dist ** -1.0)),
            "nc3_etf": structure_error(Mc, W),
            "uniform_duality": np.var(np.sum(W * Mc, axis=1), ddof=1),
            "nc4_agree": np.mean(np.argmax(X @ W.T, axis=1) == ncc)}


def validate_nc(X, y, W, b):
    """tding1/Neural-Collapse validate_NC.py: sample-weighted μ_G, scipy pinv, /K."""
    import scipy.linalg

    K = W.shape[0]
    M, mG, Sigma_W = _stats(X, y, K, weighted_mean=True)
    Sigma_B = sum(np.outer(M[k] - mG, M[k] - mG) for k in range(K)) / K
    sub = (np.eye(K) - np.ones((K, K)) / K) / math.sqrt(K - 1)
    WWT = W @ W.T
    WH = W @ (M - mG).T
    return {"nc1": np.trace(Sigma_W @ scipy.linalg.pinv(Sigma_B)) / K,
            "nc2_etf_W": np.linalg.norm(WWT / np.linalg.norm(WWT) - sub),
            "nc3_etf": np.linalg.norm(WH / np.linalg.norm(WH) - sub),
            "bias_global_mean": np.linalg.norm(W @ mG + b)}


def _layer(result, name="features"):
    return result["layers"][name]


@pytest.mark.parametrize("counts", [(4, 4, 4, 4), COUNTS])
def test_parity_with_rhubarbwu(counts):
    X, y, labels, W, b = _problem(counts=counts)
    ours = _layer(measure.measure_arrays(X, labels, W, b))
    peer = rhubarbwu(X, y, W)
    for key in ("nc1", "nc1_quotient", "nc1_cdnv", "nc2_etf_H", "hyperspherical_distance",
                "hyperspherical_log", "nc3_etf", "uniform_duality"):
        np.testing.assert_allclose(ours[key], peer[key], rtol=1e-12, err_msg=key)
    np.testing.assert_allclose(ours["nc1"], peer["nc1_svd"], rtol=1e-12)  # full-rank Σ_B
    assert ours["nc4_mismatch_nobias"] == pytest.approx(1.0 - peer["nc4_agree"], abs=1e-15)


@pytest.mark.parametrize("counts", [(4, 4, 4, 4), COUNTS])
def test_parity_with_validate_nc(counts):
    X, y, labels, W, b = _problem(seed=1, counts=counts)
    ours = _layer(measure.measure_arrays(X, labels, W, b, global_mean="samples"))
    peer = validate_nc(X, y, W, b)
    for key, value in peer.items():
        np.testing.assert_allclose(ours[key], value, rtol=1e-12, err_msg=key)


def test_the_global_mean_convention_matters_only_under_imbalance():
    X, _, labels, W, b = _problem(seed=2, counts=(4, 4, 4, 4))
    a = _layer(measure.measure_arrays(X, labels, W, b, global_mean="classes"))
    s = _layer(measure.measure_arrays(X, labels, W, b, global_mean="samples"))
    assert a["nc1"] == pytest.approx(s["nc1"], rel=1e-12)
    X, _, labels, W, b = _problem(seed=2, counts=COUNTS)
    a = _layer(measure.measure_arrays(X, labels, W, b, global_mean="classes"))
    s = _layer(measure.measure_arrays(X, labels, W, b, global_mean="samples"))
    assert abs(a["nc1"] - s["nc1"]) > 1e-3 * a["nc1"]


def test_std_convention_is_the_ddof():
    X, _, labels, W, b = _problem(seed=3)
    pop = _layer(measure.measure_arrays(X, labels, W, b, std="population"))
    unb = _layer(measure.measure_arrays(X, labels, W, b, std="unbiased"))
    K = len(COUNTS)
    assert unb["equinorm_H"] == pytest.approx(pop["equinorm_H"] * math.sqrt(K / (K - 1)),
                                              rel=1e-12)
    pairs = K * (K - 1)
    assert unb["equiangularity_W"] == pytest.approx(
        pop["equiangularity_W"] * math.sqrt(pairs / (pairs - 1)), rel=1e-12)


def test_agrees_with_the_simulator_metrics_on_class_major_arrays():
    """ufm.metrics (JAX, float64) and ufm.measure compute the same definitions."""
    with jax.enable_x64(True):
        X, y, labels, W, b = _problem(seed=4)
        order = np.argsort(y, kind="stable")
        H = jnp.asarray(X[order].T)
        ours = _layer(measure.measure_arrays(X, labels, W, b))
        jW, jb = jnp.asarray(W), jnp.asarray(b)
        ref = {"nc1": metrics.nc1(H, COUNTS), "nc2_etf_H": metrics.nc2_etf_features(H, COUNTS),
               "nc2_of_H": metrics.nc2_of_features(H, COUNTS),
               "nc3_etf": metrics.nc3_etf(jW, H, COUNTS), "nc3_of": metrics.nc3_of(jW, H, COUNTS),
               "self_duality": metrics.self_duality(jW, H, COUNTS),
               "equinorm_H": metrics.equinorm_features(H, COUNTS),
               "equinorm_W": metrics.equinorm_weights(jW),
               "equiangularity_H": metrics.equiangularity_features(H, COUNTS),
               "max_angle_W": metrics.max_angle_weights(jW),
               "nc4_mismatch": metrics.nc4_mismatch(jW, H, jb, COUNTS)}
        for key, value in ref.items():
            np.testing.assert_allclose(ours[key], float(value), rtol=1e-10, err_msg=key)


def test_float32_features_far_from_the_origin():
    """Features stored in float32 at a global offset 1e5× their spread (K=4, n=50, d=20, 20
    seeds). Reference: the float64 suite of the same float32 values. `ufm.measure` accumulates in
    float64 in two passes, so it reproduces the reference exactly (1e-12 allows summation order).
    The JAX metrics computed in float32: centring loses about eps32·offset/spread ≈ 6e-3 per entry
    at worst, averaging down over N = 200 samples; the bound 1e-2 on NC1's relative error sits above
    that worst case (measured: median 5e-4, max 2.5e-3). The peers' recipe in float32 (Σ_B⁺ by a
    pinv with cut-off d·eps) keeps a K-th eigenvalue of Σ_B made of rounding: its NC1 is off by a
    factor > 100 on every seed, which is why the pseudo-inverse keeps only the top K − 1 directions."""
    K, n, d = 4, 50, 20
    labels = np.repeat(np.arange(K), n)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        X = (2.0 * rng.normal(size=(K, d))[labels] + rng.normal(size=(K * n, d)) + 1e5)
        X = X.astype(np.float32)
        ref = measure.measure_arrays(X.astype(np.float64), labels)["layers"]["features"]["nc1"]
        got = measure.measure_arrays(X, labels)["layers"]["features"]["nc1"]
        assert got == pytest.approx(ref, rel=1e-12)
        ours = float(metrics.nc1(jnp.asarray(X.T, jnp.float32), K))
        assert abs(ours - ref) <= 1e-2 * ref
        means = np.stack([X[labels == k].mean(axis=0) for k in range(K)])
        Mc, D = means - means.mean(axis=0), X - means[labels]
        peer = np.trace((D.T @ D / len(labels)) @ np.linalg.pinv(Mc.T @ Mc / K,
                                                                    rcond=d * np.finfo(np.float32).eps)) / K
        assert abs(peer - ref) > 100 * ref


@pytest.mark.parametrize("shift, moved", [(0.0, False), (0.3, False), (30.0, True),
                                          (1e5, True)])
def test_rows_are_moved_only_by_an_offset_larger_than_their_spread(shift, moved):
    """Every row is moved by the first chunk's mean o only when ‖o‖ exceeds the rows' spread
    around it (then x − o takes a large common offset off before anything cancels); else by
    nothing, a pass fewer. Either way the class means, tr Σ_W and the classes' mean squared
    distances equal the direct float64 computation (1e-12: rounding, summation order)."""
    X, y, _, _, _ = _problem(4, counts=(40, 25, 35), d=9, offset=shift * np.sqrt(9) / 3)
    stats = measure.accumulate(X, y, 3, chunk_rows=30)
    assert bool(np.any(stats["offset"])) is moved
    means = np.stack([X[y == k].mean(axis=0) for k in range(3)])
    D = X - means[y]
    within = np.array([np.mean(np.sum(D[y == k] ** 2, axis=1)) for k in range(3)])
    assert np.allclose(stats["means"], means, rtol=0, atol=1e-12 * (1 + shift))
    assert stats["trace_w"] == pytest.approx(np.sum(D ** 2) / len(y), rel=1e-12)
    assert np.allclose(stats["within"], within, rtol=1e-12, atol=0)


def test_pinv_cut_off_is_an_option_and_recorded():
    """A third singular value of 1e-10 in the centred means: the default cut-off (d·eps on the
    eigenvalues of Σ_B) drops it, a cut-off of 1e-30 keeps it (and not the rounding-level fourth
    direction) and NC1 explodes."""
    rng = np.random.default_rng(5)
    K, d, n = 4, 6, 50
    Q, _ = np.linalg.qr(rng.normal(size=(d, 3)))
    B = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1e-10], [0, 0, 0]], float)
    centred = (B - B.mean(axis=0)) @ Q.T  # rank-3 centred means, third direction tiny
    labels = np.repeat(np.arange(K), n)
    noise = 1e-2 * rng.normal(size=(K, n, d))
    X = centred[labels] + (noise - noise.mean(axis=1, keepdims=True)).reshape(K * n, d)
    default = measure.measure_arrays(X, labels)
    kept = measure.measure_arrays(X, labels, pinv_rtol=1e-30)
    assert _layer(default)["pinv_directions"] == 2 and _layer(kept)["pinv_directions"] == 3
    assert _layer(default)["nc1"] < 1.0 < 1e10 < _layer(kept)["nc1"]
    assert default["conventions"]["pinv_rtol"] == "d*eps(float64)"
    assert kept["conventions"]["pinv_rtol"] == 1e-30


def test_streaming_from_memory_maps_gives_the_in_memory_numbers(tmp_path):
    X, _, labels, W, b = _problem(seed=6, counts=(30, 50, 20, 41))
    np.save(tmp_path / "features.npy", X)
    np.save(tmp_path / "labels.npy", labels)
    np.savez(tmp_path / "run.npz", penultimate=X[:, :5], features=X, labels=labels, W=W, b=b)
    memory = _layer(measure.measure_arrays(X, labels))
    streamed = measure.measure_file(str(tmp_path / "features.npy"), labels=str(
        tmp_path / "labels.npy"), stream=True, chunk_rows=17)
    both = measure.measure_file(str(tmp_path / "run.npz"), layers=["penultimate", "features"],
                                stream=True, chunk_rows=9)
    assert isinstance(measure.load_file(str(tmp_path / "run.npz"), ["features"],
                                        stream=True)[0]["features"], np.memmap)
    for key, value in memory.items():
        if isinstance(value, float):
            np.testing.assert_allclose(_layer(streamed)[key], value, rtol=1e-12, err_msg=key)
    assert _layer(both, "penultimate")["d"] == 5 and "nc3_etf" not in _layer(both, "penultimate")
    assert _layer(both)["nc4_mismatch"] == _layer(measure.measure_arrays(X, labels, W, b))[
        "nc4_mismatch"]


def test_degenerate_values_are_nan_with_a_reason():
    labels = np.repeat(np.arange(3), 4)
    result = _layer(measure.measure_arrays(np.ones((12, 5)), labels, np.zeros((3, 5))))
    assert math.isnan(result["nc1"]) and "nc1" in result["undefined"]
    assert math.isnan(result["nc2_etf_W"]) and "nc2_etf_W" in result["undefined"]
    assert result["rank_centred_means"] == 0


@pytest.mark.parametrize("call, fragment", [
    (lambda X, y: measure.measure_arrays(X.T, y), "transposed"),
    (lambda X, y: measure.measure_arrays(X, y[:-1]), "rows"),
    (lambda X, y: measure.measure_arrays(X, np.zeros_like(y)), "at least 2 classes"),
    (lambda X, y: measure.measure_arrays(X, y + 0.5), "integers"),
    (lambda X, y: measure.measure_arrays(X, y, W=np.ones((X.shape[1], 4))), "transposed"),
    (lambda X, y: measure.measure_arrays(X, y, W=np.ones((4, X.shape[1])), b=np.ones(3)), "b"),
    (lambda X, y: measure.measure_arrays(X, y, global_mean="weighted"), "global_mean"),
    (lambda X, y: measure.measure_arrays(X, y, pinv_rtol=-1.0), "pinv_rtol"),
    (lambda X, y: measure.measure_arrays(np.where(X > 1, np.nan, X), y), "not finite"),
])
def test_bad_input_is_a_value_error_naming_it(call, fragment):
    X, _, labels, *_ = _problem()
    with pytest.raises(ValueError, match=fragment):
        call(X, labels)


def test_cli_measure_writes_json_and_rejects_bad_files(tmp_path):
    X, _, labels, W, b = _problem(seed=7)
    np.savez(tmp_path / "f.npz", features=X, labels=labels, W=W, b=b)
    run = lambda *a: subprocess.run([sys.executable, "-m", "ufm.cli", "measure", *a],
                                    capture_output=True, text=True)
    ok = run(str(tmp_path / "f.npz"), "--out", str(tmp_path / "m"), "--quiet")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads((tmp_path / "m" / "measure.json").read_text())
    assert doc["layers"]["features"]["nc1"] == pytest.approx(
        _layer(measure.measure_arrays(X, labels, W, b))["nc1"], rel=1e-12)
    assert doc["conventions"]["global_mean"] == "classes"
    bad = run(str(tmp_path / "missing.npz"), "--out", str(tmp_path / "n"))
    assert bad.returncode == 2 and "FILE" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "n").exists()
