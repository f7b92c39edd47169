"""`ufm measure` at scale: chunks sized by a memory budget (peak memory set by the budget, not by
N), class sums by sorted segments, several files (one CSV row per file and layer), and pooled
shards equal to measuring their concatenation."""
import csv
import json
import tracemalloc

import numpy as np
import pytest

from ufm import measure
from ufm.cli import main


def _problem(seed, counts, d=5, K=None):
    rng = np.random.default_rng(seed)
    K = K or len(counts)
    centres = rng.normal(size=(K, d)) * 2
    labels = np.repeat(np.arange(K), counts)
    X = centres[labels] + rng.normal(size=(len(labels), d))
    perm = rng.permutation(len(labels))
    return X[perm], labels[perm]


def _close(a, b, rel=1e-12):
    for key, value in a.items():
        if isinstance(value, float) and not np.isnan(value):
            assert b[key] == pytest.approx(value, rel=rel, abs=1e-13), key
        elif key != "undefined":
            assert b[key] == value, key


def test_segment_class_sums_equal_add_at():
    rng = np.random.default_rng(0)
    block, y = rng.normal(size=(500, 7)), rng.integers(0, 6, 500)
    y[y == 4] = 5  # a class absent from the chunk
    want = np.zeros((6, 7))
    np.add.at(want, y, block)
    np.testing.assert_allclose(measure._class_sums(block, y, 6), want, rtol=1e-13, atol=1e-13)


def test_chunks_follow_the_budget_and_bound_the_peak(tmp_path):
    """A memory-mapped float32 file of 12.8 MB measured with a 2 MB budget: the chunks are the
    budget's size, the peak of what measuring allocates stays within a few budgets (not the
    file's 25.6 MB as float64), and the numbers equal a one-chunk run."""
    N, d, K = 100_000, 32, 10
    X, labels = _problem(1, [N // K] * K, d=d)
    np.save(tmp_path / "x.npy", X.astype(np.float32))
    np.save(tmp_path / "y.npy", labels)
    budget = 2 * 2 ** 20
    rows = measure.rows_per_chunk(d, K, budget)
    assert rows == budget // (8 * (4 * d + 3 * K))
    tracemalloc.start()
    small = measure.measure_file(str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"),
                                 stream=True, budget_bytes=budget)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * budget, peak
    assert small["conventions"]["budget_bytes"] == budget
    whole = measure.measure_file(str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"),
                                 chunk_rows=N)
    _close(whole["layers"]["features"], small["layers"]["features"], rel=1e-10)


def test_pooled_shards_equal_the_concatenation(tmp_path):
    """Three files of different sizes and class counts (one lacks a class) pooled: every
    statistic equals measuring the rows together, to 1e-12."""
    rng = np.random.default_rng(2)
    X, labels = _problem(3, [30, 50, 20, 40], d=6)
    W, b = rng.normal(size=(4, 6)), rng.normal(size=4)
    cuts = [0, 37, 80, len(labels)]
    labels[cuts[0]:cuts[1]][labels[cuts[0]:cuts[1]] == 2] = 1  # shard 0 has no class 2
    paths = []
    for i in range(3):
        part = slice(cuts[i], cuts[i + 1])
        path = tmp_path / f"s{i}.npz"
        extra = dict(W=W, b=b) if i == 1 else {}
        np.savez(path, h1=X[part], h2=np.tanh(X[part]), labels=labels[part], **extra)
        paths.append(str(path))
    pooled = measure.measure_pooled(paths, chunk_rows=16)
    together = measure.measure_layers({"h1": X, "h2": np.tanh(X)}, labels, W, b)
    assert pooled["counts"] == together["counts"] and pooled["source"]["rows"] == [37, 43, 60]
    for layer in ("h1", "h2"):
        _close(together["layers"][layer], pooled["layers"][layer])


def test_several_files_give_one_csv_row_per_file_and_layer(tmp_path, capsys):
    paths = []
    for i in range(2):
        X, labels = _problem(10 + i, [20, 20, 20])
        np.savez(tmp_path / f"ckpt{i}.npz", h1=X, h2=2 * X, labels=labels)
        paths.append(str(tmp_path / f"ckpt{i}.npz"))
    out = tmp_path / "m"
    assert main(["measure", *paths, "--out", str(out), "--quiet", "--plot"]) == 0
    doc = json.loads((out / "measure.json").read_text())
    assert [f["source"]["file"] for f in doc["files"]] == paths
    with open(out / "measure.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["file"], r["layer"]) for r in rows] == [(p, l) for p in paths for l in ("h1", "h2")]
    for r in rows:
        want = doc["files"][paths.index(r["file"])]["layers"][r["layer"]]
        assert float(r["nc1"]) == want["nc1"] and float(r["nc2_etf_H"]) == want["nc2_etf_H"]
        assert r["nc3_etf"] == ""  # no classifier: empty, not a number
    assert (out / "plot.png").exists()
    assert main(["measure", paths[0], "--pool", "--out", str(out), "--quiet"]) == 2
    assert "pool (--pool) needs two files" in capsys.readouterr().err


def test_measuring_against_a_reference(tmp_path):
    """Train and test features: the test file measured against the training file's class means
    and classifier. Against itself the reference measures are the plain ones (and no shift);
    a test set shifted by δ_k per class has mean_shift = mean ‖δ_k‖/‖μ_k − μ_G‖ and a Σ_W
    around the training means, checked by a direct computation."""
    rng = np.random.default_rng(5)
    K, d = 4, 5
    X, labels = _problem(6, [25, 30, 20, 25], d=d)
    W, b = rng.normal(size=(K, d)), rng.normal(size=K)
    np.savez(tmp_path / "train.npz", features=X, labels=labels, W=W, b=b)
    ref = measure.reference_statistics(str(tmp_path / "train.npz"))
    same = measure.measure_file(str(tmp_path / "train.npz"), reference=ref)["layers"]["features"]
    assert same["nc1_reference"] == pytest.approx(same["nc1"], rel=1e-12)
    assert same["ncc_accuracy_reference"] == same["ncc_accuracy"]
    assert same["nc4_mismatch_reference"] == same["nc4_mismatch"]
    assert same["accuracy_reference"] == same["accuracy"]
    assert same["mean_shift"] == pytest.approx(0.0, abs=1e-12)
    delta = rng.normal(size=(K, d)) * 0.3
    Xt = X[: 60] + delta[labels[: 60]]
    yt = labels[: 60]
    np.savez(tmp_path / "test.npz", features=Xt, labels=yt)
    got = measure.measure_file(str(tmp_path / "test.npz"), reference=ref)["layers"]["features"]
    mu = np.stack([X[labels == k].mean(0) for k in range(K)])
    g = mu.mean(0)
    mt = np.stack([Xt[yt == k].mean(0) for k in range(K)])
    want_shift = np.mean(np.linalg.norm(mt - mu, axis=1) / np.linalg.norm(mu - g, axis=1))
    assert got["mean_shift"] == pytest.approx(want_shift, rel=1e-12)
    D = Xt - mu[yt]
    Sw, Sb = D.T @ D / len(yt), (mu - g).T @ (mu - g) / K
    assert got["nc1_reference"] == pytest.approx(np.trace(Sw @ np.linalg.pinv(Sb)) / K, rel=1e-9)
    ncc = np.argmin(((Xt[:, None] - mu[None]) ** 2).sum(-1), axis=1)
    assert got["ncc_accuracy_reference"] == np.mean(ncc == yt)
    clf = np.argmax(Xt @ W.T + b, axis=1)
    assert got["nc4_mismatch_reference"] == np.mean(clf != ncc)
    assert got["accuracy_reference"] == np.mean(clf == yt)
    np.savez(tmp_path / "bad.npz", features=Xt, labels=yt + 10)
    with pytest.raises(ValueError, match="not classes of the reference"):
        measure.measure_file(str(tmp_path / "bad.npz"), reference=ref)
