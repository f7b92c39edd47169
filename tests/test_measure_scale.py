"""`ufm measure` at scale: chunks sized by a memory budget (peak memory set by the budget, not by
N), class sums by sorted segments, several files (one CSV row per file and layer), and pooled
shards equal to measuring their concatenation."""
import csv
import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize("K", [6, 300])  # long class segments (a sum each), short (reduceat)
@pytest.mark.parametrize("piece", [None, 1, 7, 64])  # rows converted at a time
def test_segment_class_sums_equal_add_at(K, piece):
    rng = np.random.default_rng(0)
    block, y = rng.normal(size=(500, 7)).astype(np.float32), rng.integers(0, K, 500)
    y[y == 4] = 5  # a class absent from the chunk
    offset = rng.normal(size=7)
    want = np.zeros((K, 7))
    np.add.at(want, y, block.astype(np.float64) - offset)
    got = measure._class_sums(block, y, K, offset, piece)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    assert not got[4].any()


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
    # at a vocabulary's K the numpy engine scores a block of classes at a time, the JAX engine
    # every class at once: only the numpy engine's chunks stay long
    from ufm.measure.screens import CLASS_BLOCK
    assert measure.rows_per_chunk(d, 50_000, budget) == budget // (8 * (4 * d + 3 * CLASS_BLOCK))
    assert measure.rows_per_chunk(d, 50_000, budget, "jax") == budget // (8 * (4 * d + 150_000))
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


# --- any K: the pair measures and frame distances from tiles -----------------------------------

def _dense(X, y, W):
    """The pair measures and frame distances written out densely in float64 (every pair, every
    entry of every K×K Gram), for K small enough to hold them."""
    K = W.shape[0]
    means = np.stack([X[y == k].mean(axis=0) for k in range(K)])
    within = np.array([np.mean(np.sum((X[y == k] - means[k]) ** 2, axis=1)) for k in range(K)])
    M = means - means.mean(axis=0)
    i, j = np.triu_indices(K, 1)
    U = M / np.linalg.norm(M, axis=1, keepdims=True)
    cos = np.sum(U[i] * U[j], axis=1)
    dist = np.linalg.norm(U[i] - U[j], axis=1)
    Wu = W / np.linalg.norm(W, axis=1, keepdims=True)
    etf = (np.eye(K) - 1.0 / K) / np.sqrt(K - 1)

    def frame(G, ideal):
        return np.linalg.norm(G / np.linalg.norm(G) - ideal)

    return {"nc1_cdnv": np.mean((within[i] + within[j]) / 2 / np.sum((M[i] - M[j]) ** 2, 1)),
            "equiangularity_H": np.std(cos), "max_angle_H": np.mean(np.abs(cos + 1 / (K - 1))),
            "hyperspherical_distance": np.var(dist), "hyperspherical_log": np.var(np.log(dist)),
            "nc2_etf_H": frame(M @ M.T, etf), "nc2_of_H": frame(means @ means.T, np.eye(K) / np.sqrt(K)),
            "nc2_etf_W": frame(W @ W.T, etf), "nc2_of_W": frame(W @ W.T, np.eye(K) / np.sqrt(K)),
            "nc3_etf": frame(W @ M.T, etf), "nc3_of": frame(W @ means.T, np.eye(K) / np.sqrt(K)),
            "equiangularity_W": np.std(np.sum(Wu[i] * Wu[j], axis=1)),
            "max_angle_W": np.mean(np.abs(np.sum(Wu[i] * Wu[j], axis=1) + 1 / (K - 1)))}


def test_tiles_equal_the_dense_definitions_at_many_classes():
    """K = 1,500 classes in d = 6 (many nearly parallel pairs: the Gram expansion's close pairs
    are recomputed by subtraction) with a 1 MB budget: tiles of 8 rows per MB shared by the tiles
    in flight (one per core), hundreds of them, merged in order. Every pair measure and frame
    distance equals the dense float64 definition to 1e-11 (sums of 10⁶ terms in another order: a
    few hundred eps), and equals the one-tile run."""
    K, d = 1500, 6
    X, labels = _problem(3, [2] * K, d=d)
    W = np.random.default_rng(4).normal(size=(K, d))
    assert measure.tile_rows(K, 2 ** 20) == 8
    tiled = measure.measure_arrays(X, labels, W, budget_bytes=2 ** 20)["layers"]["features"]
    whole = measure.measure_arrays(X, labels, W, budget_bytes=2 ** 30)["layers"]["features"]
    for key, want in _dense(X, labels, W).items():
        assert tiled[key] == pytest.approx(want, rel=1e-11), key
        assert whole[key] == pytest.approx(want, rel=1e-11), key


def test_frame_distances_near_the_ideal_keep_their_digits():
    """Class means a simplex ETF moved by 1e-10 per entry: nc2_etf_H ≈ 2e-9. Expanding
    ‖G/‖G‖ − E‖² as 2 − 2⟨G, E⟩/‖G‖ leaves ~1e-8 of rounding here (no digits: it gives 2e-8);
    the tiles sum the differences and agree with the dense differences to 1e-6 relative
    (measured: 5e-10)."""
    K = 200
    etf = np.sqrt(K / (K - 1)) * (np.eye(K) - 1.0 / K)  # rows: a simplex ETF in R^K
    rng = np.random.default_rng(5)
    means = etf + 1e-10 * rng.normal(size=(K, K))
    labels = np.repeat(np.arange(K), 2)
    X = means[labels] + 1e-3 * rng.normal(size=(2 * K, K)) * np.array([1, -1] * K)[:, None]
    X[1::2] = 2 * means - X[0::2]  # the two samples of a class straddle its mean exactly
    W = etf + 1e-10 * rng.normal(size=(K, K))
    ours = measure.measure_arrays(X, labels, W, budget_bytes=2 ** 20)["layers"]["features"]
    dense = _dense(X, labels, W)
    for key in ("nc2_etf_H", "nc2_etf_W", "nc3_etf"):
        assert 1e-10 < dense[key] < 1e-8, (key, dense[key])
        assert ours[key] == pytest.approx(dense[key], rel=1e-6), key


@pytest.mark.long
def test_twenty_thousand_classes_within_the_budget():
    """K = 20,000 classes (a vocabulary's), d = 16, N = 30,000 float32 rows: the K×K Grams
    would be 3.2 GB each; measured with a 64 MB budget, the peak of what measuring allocates
    stays under 3 budgets. Checked against a direct float64 computation on a random subsample
    of 4,000 class pairs (class means and variances from the rows themselves): each pair
    measure is a mean over pairs, and the subsample's mean is within 5 standard errors of it.
    (No classifier here, to keep the suite short: W's tiles — W Wᵀ, W Mᵀ, its cosines — go
    through the same tiling and are checked exactly against the dense definitions at K = 1,500
    with hundreds of tiles.)"""
    K, d, budget = 20_000, 16, 64 * 2 ** 20
    rng = np.random.default_rng(6)
    labels = np.concatenate([np.arange(K), rng.integers(0, K, 10_000)])
    centres = rng.normal(size=(K, d))
    X = (centres[labels] + 0.3 * rng.normal(size=(len(labels), d))).astype(np.float32)
    tracemalloc.start()
    ours = measure.measure_arrays(X, labels, budget_bytes=budget)["layers"]["features"]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 3 * budget, peak

    X64 = X.astype(np.float64)
    counts = np.bincount(labels, minlength=K)
    means = np.zeros((K, d))
    np.add.at(means, labels, X64)
    means /= counts[:, None]
    M = means - means.mean(axis=0)
    i = rng.integers(0, K, 4000)
    j = (i + rng.integers(1, K, 4000)) % K  # j ≠ i
    within = np.bincount(labels, weights=np.sum((X64 - means[labels]) ** 2, axis=1)) / counts
    var_i, var_j = within[i], within[j]
    ui = M[i] / np.linalg.norm(M[i], axis=1, keepdims=True)
    uj = M[j] / np.linalg.norm(M[j], axis=1, keepdims=True)
    cos = np.sum(ui * uj, axis=1)
    dist = np.linalg.norm(ui - uj, axis=1)
    samples = {"nc1_cdnv": (var_i + var_j) / 2 / np.sum((M[i] - M[j]) ** 2, axis=1),
               "max_angle_H": np.abs(cos + 1 / (K - 1)),
               "hyperspherical_distance": (dist - dist.mean()) ** 2 * 4000 / 3999,
               "equiangularity_H": (cos - cos.mean()) ** 2 * 4000 / 3999}
    for key, values in samples.items():
        full = ours[key] ** 2 if key == "equiangularity_H" else ours[key]
        error = values.std() / np.sqrt(len(values))
        assert abs(values.mean() - full) < 5 * error, (key, values.mean(), full, error)


def _screened_and_exact(means, basis, W, bias, offset, raw, y):
    """The counts of `Decisions` on rows `raw` (as given) and of its plain float64 rules."""
    decide = measure.Decisions(means, basis, W, bias, offset)
    screened, exact = measure._no_decisions(), measure._no_decisions()
    D = decide.relative(raw) - means[y]
    decide(screened, raw, y, np.linalg.norm(D, axis=1), None if basis is None else D @ basis.T)
    decide.exact(exact, raw, y)
    return screened, exact


def test_float32_screened_decisions_equal_float64_decisions_at_near_ties():
    """Logits are screened in float32 with an error bound (the rows it cannot vouch for decided
    again in float64) and the nearest centre is taken in the span of the means. Rows placed
    within 1e-12..1e-6 of the bisector of two class means (and of two classifier rows), at an
    offset of 1e4 (in float64, and as float32 rows, which are screened without conversion), and
    rows with exact ties: the counts equal the plain float64 rules on every row in all d
    coordinates."""
    rng = np.random.default_rng(7)
    K, d = 6, 40
    means = rng.normal(size=(K, d))
    basis = measure.span_basis(means)
    assert basis.shape == (K, d)
    offset = 1e4 * rng.normal(size=d)
    # the classifier of the nearest-centre rule: logits 2μ_k·x − ‖μ_k‖² (x relative to the
    # offset), so rows near a bisector are near-ties of the logits too
    W, b = 2 * means, -np.sum(means ** 2, axis=1) - 2 * means @ offset
    i, j = rng.integers(0, K, 3000), rng.integers(0, K, 3000)
    t = 0.5 + rng.choice([0.0, 1e-12, 1e-9, 1e-6, 0.1], 3000) * rng.choice([-1, 1], 3000)
    block = means[i] * t[:, None] + means[j] * (1 - t)[:, None] + 1e-9 * rng.normal(size=(3000, d))
    other = block[:, ::-1] @ np.diag(rng.normal(size=d))
    for raw, bias in ((block + offset, b), (other + offset, None),
                      ((block + offset).astype(np.float32), b)):  # float32 rows, screened as given
        screened, exact = _screened_and_exact(means, basis, W, bias, offset, raw,
                                              rng.integers(0, K, 3000))
        assert screened == exact
    # float32 rows at the offset, near ties of a classifier blind to the offset: rounding the
    # rows to float32 moves every logit by ~eps₃₂·‖x‖‖w‖, set by the offset, not by x − offset
    W3 = rng.normal(size=(K, d))
    W3 -= np.outer(W3 @ offset, offset) / (offset @ offset)  # rows orthogonal to the offset
    i = rng.integers(0, K, 2000)
    j = (i + rng.integers(1, K, 2000)) % K  # i ≠ j: the two leaders
    lead = rng.choice([0.0, 1e-6, 1e-4, 1e-2, 1.0], 2000) * rng.choice([-1, 1], 2000)
    s = 10 * (W3[i] + W3[j]) + rng.normal(size=(2000, d))
    gap = W3[i] - W3[j]
    s -= (np.einsum("ij,ij->i", s, gap) - lead)[:, None] * gap / np.sum(gap ** 2, 1)[:, None]
    screened, exact = _screened_and_exact(means, basis, W3, None, offset,
                                          (s + offset).astype(np.float32), rng.integers(0, K, 2000))
    assert screened == exact
    tied = np.tile(means[0], (50, 1))  # equally scored by two equal classifier rows
    W2 = W.copy()
    W2[0] = W2[1] = 10 * means[0]  # the two largest logits, equal
    means2 = means.copy()
    means2[3] = means2[2]  # and two coincident class means
    tied[:25] = means2[2] + 1e-3
    screened, exact = _screened_and_exact(means2, measure.span_basis(means2), W2, None,
                                          np.zeros(d), tied, rng.integers(0, K, 50))
    assert screened == exact and exact["ties_nobias"] > 0 and exact["ncc_ties"] > 0


@pytest.mark.parametrize("outside", [0.0, 1e-9, 1e-3])
def test_the_logits_in_the_means_span_are_within_their_bound(outside):
    """The classifier is screened first in the span of the class means (Aq + W·offset in
    float32 from the rows' projection, the part of W outside the span bounded by
    R·‖(x − offset)⊥‖). Rows 1e-4 of their means' size from them (near collapse, where rounding
    q to float32 is the largest error), W in the span plus a part `outside` of its size, offsets
    0 and 1e3: every logit (with and without b), less the term common to all classes, is within
    its bound of the float64 logit, and the bound is within 1e3 of the largest error (the float32
    terms carry it when W is in the span: drop them and this fails)."""
    rng = np.random.default_rng(11)
    K, d, n = 6, 40, 2000
    means = 10 * rng.normal(size=(K, d))
    means -= means.mean(axis=0)
    basis = measure.span_basis(means)
    W = rng.normal(size=(K, K)) @ means / 10 + outside * 10 * rng.normal(size=(K, d))
    b = rng.normal(size=K)
    y = rng.integers(0, K, n)
    for offset in (np.zeros(d), 1e3 * rng.normal(size=d)):
        raw = means[y] + offset + 1e-3 * rng.normal(size=(n, d))
        decide = measure.Decisions(means, basis, W, b, offset)
        D = decide.relative(raw) - means[y]
        spread = np.linalg.norm(D, axis=1)
        _, q32 = decide._nearest(measure._no_decisions(), raw, y, spread, D @ basis.T)
        logits, bound = decide.span_logits(q32, y, spread)
        exact = (raw - offset) @ W.T + W @ offset
        common = (raw - offset) @ (W.mean(axis=0) - W.mean(axis=0) @ basis.T @ basis)
        for got, want in ((logits, exact), (logits + b.astype(np.float32), exact + b)):
            error = np.abs(got - (want - common[:, None])).max(axis=1)
            assert np.all(error <= bound), np.max(error / bound)
            assert np.max(error / bound) > 1e-3


@pytest.mark.parametrize("scale", [1e-19, 1e-22, 1e-23, 1e-30, 1e-40])
def test_decisions_where_float32_products_underflow_equal_float64(scale):
    """Float64 features and classifier of size `scale`: from 1e-22 on, float32 products fall
    into the subnormal range, where roundings err by an absolute 2⁻¹⁵⁰, not relative to the
    size; every screen's bound carries that term (without it the counts at 1e-22 and 1e-23 were
    off by 1 and 18 rows in 4000) and every count equals the plain float64 rules — with a
    classifier far from the means' span (the full screen) and one in it (the span's screen)."""
    rng = np.random.default_rng(3)
    K, d, n = 5, 16, 4000
    means, b = rng.normal(size=(K, d)) * scale, rng.normal(size=K) * scale ** 2
    y = rng.integers(0, K, n)
    raw = means[y] + rng.normal(size=(n, d)) * scale
    for W in (rng.normal(size=(K, d)) * scale,
              rng.normal(size=(K, K)) @ (means - means.mean(axis=0))):
        for bias in (None, b):
            screened, exact = _screened_and_exact(means, measure.span_basis(means), W, bias,
                                                  np.zeros(d), raw, y)
            assert screened == exact


def _random_problem(seed, K, d, exponent, shift, kind, single, bias, coincide):
    """(screened counts, float64 counts) of a random problem: see the test below."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** exponent
    means = rng.normal(size=(K, d)) * scale
    if coincide:
        means[1] = means[0]
    offset = shift * scale * rng.normal(size=d)
    if kind == "random":
        W = rng.normal(size=(K, d)) * scale
    elif kind == "span":
        W = (rng.normal(size=(K, K)) @ (means - means.mean(axis=0))
             + 1e-6 * scale * rng.normal(size=(K, d)))
    else:  # logits 2μ_k·x − ‖μ_k‖² (x relative to the offset): the nearest-centre rule
        W = 2.0 * means
    b = None
    if bias:
        b = (-np.sum(means ** 2, axis=1) - 2.0 * means @ offset if kind == "nearest"
             else rng.normal(size=K) * scale ** 2)
    n = 400
    y = rng.integers(0, K, n)
    raw = means[y] + 0.3 * scale * rng.normal(size=(n, d))
    i, j = rng.integers(0, K, n // 2), rng.integers(0, K, n // 2)
    t = 0.5 + rng.choice([1e-9, 1e-6, 1e-3], n // 2) * rng.choice([-1, 1], n // 2)
    raw[:n // 2] = means[i] * t[:, None] + means[j] * (1 - t)[:, None]
    rows = raw + offset
    if single:
        rows = rows.astype(np.float32)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return _screened_and_exact(means, measure.span_basis(means), W, b, offset, rows, y)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2 ** 31 - 1), K=st.integers(2, 7), d=st.integers(2, 12),
       exponent=st.integers(-40, 30), shift=st.sampled_from([0.0, 1.0, 1e4]),
       kind=st.sampled_from(["random", "span", "nearest"]), single=st.booleans(),
       bias=st.booleans(), coincide=st.booleans())
def test_screened_decisions_equal_float64_on_random_problems(seed, K, d, exponent, shift, kind,
                                                             single, bias, coincide):
    """Any shape (K below and above d), size 1e-40 to 1e30, offset (none, the size, 1e4 × it),
    classifier (random; in the means' span plus 1e-6 of its size outside; the nearest-centre
    rule itself), float32 or float64 rows, half of them within 1e-9 to 1e-3 of the bisector of
    two means (near ties of both rules), and exact ties (two coincident class means): every
    count of the screened decisions equals the plain float64 rules'. (A row exactly on the
    bisector of two distinct means is a tie only in exact arithmetic: two float64 formulas
    round it either way, so it is not among them.)"""
    screened, exact = _random_problem(seed, K, d, exponent, shift, kind, single, bias, coincide)
    assert screened == exact


@pytest.mark.parametrize("case", [(2011352905, 6, 11, 23, 0.0, "nearest", False, False, False),
                                  (1323583728, 3, 7, 29, 1.0, "random", False, False, False),
                                  (1458889543, 6, 5, 19, 1e4, "span", False, True, False)])
def test_logits_that_overflow_float32_part_way_are_decided_in_float64(case):
    """Features and classifier of size 1e19–1e29 (float64): float32 partial sums of the logits
    overflow to ±inf whatever the true logit, and a row with one inf logit led by "infinity"
    past the bound — its decision was certified and wrong (9, 30 and 88 classifier decisions
    in 400 rows, found by the random problems above run at scale). A row with a score that is
    not finite is never certain now: the counts equal float64's."""
    screened, exact = _random_problem(*case)
    assert screened == exact


def test_features_beyond_float32_range_are_decided_in_float64_without_warnings():
    """Float64 features of size 1e39 (float32 overflows): the screen gives inf/NaN, every row is
    decided in float64, no numpy warning escapes, and the decisions are the direct ones."""
    import warnings

    rng = np.random.default_rng(8)
    K, d = 5, 8
    mu = rng.normal(size=(K, d)) * 1e39
    y = np.repeat(np.arange(K), 20)
    X = mu[y] + 1e38 * rng.normal(size=(len(y), d))
    W = rng.normal(size=(K, d)) * 1e-30
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = measure.measure_arrays(X, y, W, quiet=True)["layers"]["features"]
    means = np.stack([X[y == k].mean(0) for k in range(K)])
    ncc = np.argmin(((X[:, None] - means[None]) ** 2).sum(-1), 1)
    clf = np.argmax(X @ W.T, 1)
    assert got["ncc_accuracy"] == np.mean(ncc == y)
    assert got["accuracy"] == np.mean(clf == y) and got["nc4_mismatch"] == np.mean(clf != ncc)


@pytest.mark.parametrize("K, d, with_W", [(7, 30, True), (40, 12, True), (5, 9, False)])
def test_the_jax_engine_gives_the_numpy_engines_numbers(K, d, with_W):
    """`--engine jax` (the passes on JAX's default device, float64 inside a scoped switch):
    every measurement equals the numpy engine's to 1e-12 (sums in another order), every count
    exactly, with K < d (Σ_W in the means' span) and K ≥ d, a padded last chunk, float32 rows
    offset by 100; the caller's x64 setting is left as it was."""
    import jax

    rng = np.random.default_rng(K)
    mu = rng.normal(size=(K, d)) * 3
    y = rng.integers(0, K, 2003)
    X = (mu[y] + rng.normal(size=(2003, d)) + 100).astype(np.float32)
    W, b = (rng.normal(size=(K, d)), rng.normal(size=K)) if with_W else (None, None)
    ours = measure.measure_arrays(X, y, W, b, chunk_rows=300)
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)  # a float32 caller (the tests run in float64)
    try:
        theirs = measure.measure_arrays(X, y, W, b, chunk_rows=300, engine="jax")
        assert jax.config.jax_enable_x64 is False
    finally:
        jax.config.update("jax_enable_x64", before)
    assert theirs["conventions"]["engine"] == "jax"
    _close(ours["layers"]["features"], theirs["layers"]["features"], rel=1e-12)


def test_the_jax_engine_names_a_row_that_is_not_finite_and_bad_engines_are_refused():
    X, labels = _problem(9, [30, 30, 30], d=4)
    X[47, 2] = np.inf
    with pytest.raises(ValueError, match=r"not finite \(row 47\)"):
        measure.measure_arrays(X, labels, chunk_rows=20, engine="jax")
    with pytest.raises(ValueError, match=r"engine \(--engine\) must be one of"):
        measure.measure_arrays(X, labels, engine="torch")


def test_the_screens_decide_well_separated_rows_in_float32(monkeypatch):
    """The screens' bounds are rigorous *and* tight enough to be useful: on well-separated
    classes no nearest-centre row and few classifier rows go on to float64 (a bound inflated by
    a wrong constant would send every row there, with the same decisions)."""
    from ufm.measure import measure_arrays
    from ufm.measure.screens import Decisions

    redone = {"nearest": 0, "logits": 0}
    nearest, logits = Decisions.nearest, Decisions.logits

    def count(name, fn):
        def wrapped(self, counts, rows, *rest):
            redone[name] += len(rows)
            return fn(self, counts, rows, *rest)
        return wrapped

    monkeypatch.setattr(Decisions, "nearest", count("nearest", nearest))
    monkeypatch.setattr(Decisions, "logits", count("logits", logits))
    rng = np.random.default_rng(3)
    K, d, n = 10, 64, 200
    means = 5.0 * rng.normal(size=(K, d))
    labels = np.repeat(np.arange(K), n)
    X = means[labels] + 0.3 * rng.normal(size=(K * n, d)) + 100.0  # an offset, as real features
    W = means  # logits w_k·x + b_k = −½‖x − offset − μ_k‖² + const: the nearest mean
    b = -W @ np.full(d, 100.0) - 0.5 * np.sum(means * means, axis=1)
    out = measure_arrays(X, labels, W, b)["layers"]["features"]
    assert out["ncc_accuracy"] == 1.0 and out["accuracy"] == 1.0
    # (a few classifier rows sit within float32's reach of a tie with these large biases)
    assert redone["nearest"] == 0 and redone["logits"] <= 0.05 * len(X), redone
    # wide classes and a classifier far from the means' span: the span's screen cannot vouch,
    # and the full product's screen decides the rows
    redone.update(nearest=0, logits=0)
    basis = np.linalg.qr((means - means.mean(axis=0)).T)[0]  # the centred means' span [d, K]
    W_off = rng.normal(size=(K, d))
    W_off -= (W_off @ basis) @ basis.T  # orthogonal to it: the span says nothing
    measure_arrays(means[labels] + 3.0 * rng.normal(size=(K * n, d)), labels, W_off, None)
    assert redone["logits"] <= 0.05 * len(X), redone


def test_class_blocks_decide_as_whole_rows_of_scores(monkeypatch):
    """Scores are taken a block of classes at a time (at a vocabulary's K a chunk never holds
    [rows, K]). With blocks of 3 classes among 11: the running winner, best and runner-up of
    float32 scores (duplicates within and across blocks, a NaN, an inf) equal argmin/argmax
    over whole rows; and the counts of `Decisions` — near-ties and exact ties whose classes lie
    in different blocks — equal the plain float64 rules computed here over whole rows."""
    from ufm.measure import screens

    monkeypatch.setattr(screens, "CLASS_BLOCK", 3)
    rng = np.random.default_rng(13)
    n, K = 400, 11
    scores = rng.integers(0, 6, size=(n, K)).astype(np.float32)  # many equal scores
    scores[0, 5], scores[1, 9] = np.nan, np.inf
    for lowest in (True, False):
        leaders = screens._Leaders(n, lowest)
        for start, stop in screens._blocks(K):
            leaders.add(start, scores[:, start:stop].copy())
        whole = np.sort(scores, axis=1)
        ok = slice(2, None)  # the rows whose scores are all finite
        assert not leaders.finite[:2].any() and leaders.finite[ok].all()
        pick = np.argmin if lowest else np.argmax
        np.testing.assert_array_equal(leaders.win[ok], pick(scores[ok], axis=1))
        best, second = (whole[:, 0], whole[:, 1]) if lowest else (whole[:, -1], whole[:, -2])
        np.testing.assert_array_equal(leaders.best[ok], best[ok])
        np.testing.assert_array_equal(leaders.second[ok], second[ok])
    d = 30
    means = rng.normal(size=(K, d))
    means[8] = means[1]  # coincident means in the first and third blocks
    W, b = 2 * means, -np.sum(means ** 2, axis=1)
    W[10] = W[2]  # equal classifier rows in the first and last blocks
    b[10] = b[2]
    i, j = rng.integers(0, K, n), rng.integers(0, K, n)
    t = 0.5 + rng.choice([0.0, 1e-12, 1e-6, 0.1], n) * rng.choice([-1, 1], n)
    raw = means[i] * t[:, None] + means[j] * (1 - t)[:, None] + 1e-9 * rng.normal(size=(n, d))
    raw[:40] = means[1] + 1e-3 * rng.normal(size=(40, d))  # nearest: the tied classes 1 and 8
    raw[40:80] = means[2] + 1e-3 * rng.normal(size=(40, d))  # logits: the tied rows 2 and 10
    y = rng.integers(0, K, n)
    for basis in (None, measure.span_basis(means)):
        screened, _ = _screened_and_exact(means, basis, W, b, np.zeros(d), raw, y)
        distance = -2.0 * raw @ means.T + np.sum(means ** 2, axis=1)
        logits = raw @ W.T
        ncc, plain, full = (np.argmin(distance, 1), np.argmax(logits, 1),
                            np.argmax(logits + b, 1))

        def tied(s, c):
            return int(np.count_nonzero(np.count_nonzero(s == s[np.arange(n), c][:, None], 1) > 1))
        want = dict(ncc_correct=int(np.sum(ncc == y)), correct=int(np.sum(full == y)),
                    mismatch=int(np.sum(full != ncc)), mismatch_nobias=int(np.sum(plain != ncc)),
                    ncc_ties=tied(distance, ncc), ties_nobias=tied(logits, plain),
                    ties=tied(logits + b, full))
        assert screened == want
        assert want["ncc_ties"] >= 40 and want["ties"] >= 40


@pytest.mark.parametrize("rank", [3, 12])
def test_tall_factorisations_through_qr_equal_the_direct_svd(rank):
    """The suite's SVD of tall class means [K, d] (K > d) goes through the triangle of their QR
    (no U [K, d], no workspace of the means' size): its singular values equal LAPACK's SVD of the
    whole matrix to 1e-13 of the largest (a rank-3 matrix keeps its zeros there too), and its
    right singular vectors span the same rows (projectors equal to 1e-12)."""
    from ufm.measure.pairs import _svd

    rng = np.random.default_rng(rank)
    A = rng.normal(size=(500, rank)) @ rng.normal(size=(rank, 12)) * 1e3 + 7.0
    s, Vt = _svd(A)
    _, s_ref, Vt_ref = np.linalg.svd(A, full_matrices=False)
    assert s.shape == s_ref.shape and Vt.shape == Vt_ref.shape == (12, 12)
    np.testing.assert_allclose(s, s_ref, rtol=0, atol=1e-13 * s_ref[0])
    top = int(np.sum(s_ref > 1e-10 * s_ref[0]))
    P, P_ref = Vt[:top].T @ Vt[:top], Vt_ref[:top].T @ Vt_ref[:top]
    np.testing.assert_allclose(P, P_ref, rtol=0, atol=1e-12)
