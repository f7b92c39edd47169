"""The streaming collector (ufm.measure.Collector): batch by batch, in two passes, the report
`ufm measure` gives for the concatenated rows, to 1e-10; shards merged and saved; classes with no
sample left out; bad batches refused whole."""
import numpy as np
import pytest

from ufm import measure


def _data(K=6, d=8, N=600, offset=100.0, seed=0, zipf=False):
    rng = np.random.default_rng(seed)
    if zipf:  # heavy-tailed: most classes rare, some empty
        p = 1.0 / np.arange(1, K + 1) ** 1.5
        y = rng.choice(K, size=N, p=p / p.sum())
    else:
        y = rng.integers(0, K, N)
    M = rng.normal(size=(K, d)) * 3 + offset
    X = M[y] + rng.normal(size=(N, d))
    return X, y, rng.normal(size=(K, d)), rng.normal(size=K)


def _batches(X, y, seed=1):
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, len(y)), 9, replace=False))
    return [(X[a:b], y[a:b]) for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(y)])]


def _collect(collector, batches):
    for Xb, yb in batches:
        collector.update(Xb, yb)
    collector.second_pass()
    for Xb, yb in reversed(batches):  # any order in the second pass
        collector.update(Xb, yb)
    return collector.result()


def _same_report(got, ref, tol=1e-10):
    for layer, values in ref["layers"].items():
        mine = got["layers"][layer]
        assert set(mine) == set(values)
        for key, v in values.items():
            g = mine[key]
            if isinstance(v, float) and np.isfinite(v):
                assert g == pytest.approx(v, rel=tol, abs=tol * 1e-6), (layer, key)
            elif key != "undefined":
                assert g == v or (isinstance(v, float) and np.isnan(v) and np.isnan(g)), key


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_two_passes_equal_ufm_measure_on_the_concatenated_rows(offset):
    X, y, W, b = _data(offset=offset)
    H = np.tanh(X[:, :5] / (1 + offset))  # a second layer
    ref = measure.measure_layers({"hidden": H, "features": X}, y, W, b)
    got = _collect(measure.Collector(6, W, b),
                   [({"hidden": H[a:a + len(yb)], "features": Xb}, yb) for (Xb, yb), a in
                    zip(_batches(X, y), np.cumsum([0] + [len(t) for _, t in _batches(X, y)]))])
    assert got["N"] == ref["N"] and got["counts"] == ref["counts"]
    _same_report(got, ref)


def test_zipf_labels_with_empty_and_single_sample_classes():
    X, y, _, _ = _data(K=40, N=300, zipf=True, seed=3)
    present = np.unique(y)
    assert len(present) < 40 and np.min(np.bincount(y)[present]) == 1  # empty and lone classes
    got = _collect(measure.Collector(40), _batches(X, y))
    assert got["empty_classes"] == sorted(set(range(40)) - set(present.tolist()))
    assert got["classes"] == present.tolist()
    _same_report(got, measure.measure_arrays(X, y))


def test_empty_classes_under_the_sample_mean_convention():
    """The global mean as the mean of the samples reads the class sums' total; the Collector
    hands the suite its sums with the empty classes' zero rows (no K × d copy): the report
    equals `ufm measure`'s on the same rows, K > d (the means' factorisations through QR)."""
    X, y, _, _ = _data(K=40, N=300, zipf=True, seed=4, offset=50.0)
    assert len(np.unique(y)) < 40
    got = _collect(measure.Collector(40, global_mean="samples"), _batches(X, y))
    _same_report(got, measure.measure_arrays(X, y, global_mean="samples"))


def test_shards_merged_and_saved_equal_one_pass(tmp_path):
    X, y, W, b = _data(seed=5)
    whole = _collect(measure.Collector(6, W, b), _batches(X, y))
    shards = np.array_split(np.arange(len(y)), 4)
    paths = []
    for i, rows in enumerate(shards):  # four processes, each its own offset
        part = measure.Collector(6, W, b)
        part.update(X[rows] + 0.0, y[rows])
        part.save(tmp_path / f"state_{i}.npz")
        paths.append(tmp_path / f"state_{i}.npz")
    merged = measure.Collector.load(paths[0])
    for p in paths[1:]:
        merged.merge(measure.Collector.load(p))
    merged.second_pass()
    for rows in shards:
        merged.update(X[rows], y[rows])
    _same_report(merged.result(), whole)


class _OnlyDLPack:
    """A producer with DLPack and nothing else (as a framework tensor would offer)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, **kw):
        return self.a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


def test_dlpack_and_array_like_batches():
    X, y, _, _ = _data(seed=7)
    ref = _collect(measure.Collector(6), _batches(X, y))
    got = _collect(measure.Collector(6), [(_OnlyDLPack(np.ascontiguousarray(Xb)), yb)
                                          for Xb, yb in _batches(X, y)])
    _same_report(got, ref, tol=1e-15)


def test_bad_batches_are_refused_whole():
    X, y, _, _ = _data()
    c = measure.Collector(6)
    c.update(X[:50], y[:50])
    with pytest.raises(ValueError, match="must keep d = 8, got d = 7"):
        c.update(X[50:60, :7], y[50:60])
    with pytest.raises(ValueError, match=r"labels must be in 0 … 5 \(K = 6\), got 9"):
        c.update(X[50:60], np.full(10, 9))
    bad = X[50:60].copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="not finite .*row 4 of this batch.*nothing"):
        c.update(bad, y[50:60])
    assert c.counts.sum() == 50  # nothing of a refused batch was added
    with pytest.raises(ValueError, match="needs the second pass"):
        c.result()
    c.second_pass()
    c.update(X[:40], y[:40])
    with pytest.raises(ValueError, match="replay exactly the same batches"):
        c.result()
    c.update(X[40:50], y[40:50])
    c.result()
    with pytest.raises(ValueError, match=r"update\(\) after result\(\): call reset\(\)"):
        c.update(X[:5], y[:5])
    with pytest.raises(ValueError, match="different K"):
        measure.Collector(6).merge(measure.Collector(7))


def test_a_multi_host_evaluation_merges_second_passes_and_reports_once(tmp_path, capsys):
    """Shards: first passes saved and merged; the merged state loaded on every shard; each
    replays its own rows; second-pass states saved; `ufm measure --merge` reports once — the
    same numbers as one collector over all rows."""
    from ufm.cli import main

    X, y, W, b = _data(seed=9)
    whole = _collect(measure.Collector(6, W, b), _batches(X, y))
    shards = np.array_split(np.arange(len(y)), 3)
    for i, rows in enumerate(shards):
        c = measure.Collector(6, W, b)
        c.update(X[rows], y[rows])
        c.save(tmp_path / f"first_{i}.npz")
    merged = measure.Collector.load(tmp_path / "first_0.npz")
    for i in (1, 2):
        merged.merge(measure.Collector.load(tmp_path / f"first_{i}.npz"))
    merged.save(tmp_path / "first.npz")
    for i, rows in enumerate(shards):
        c = measure.Collector.load(tmp_path / "first.npz")
        c.second_pass()
        c.update(X[rows], y[rows])
        c.save(tmp_path / f"second_{i}.npz")
    assert main(["measure", "--merge", *[str(tmp_path / f"second_{i}.npz") for i in range(3)],
                 "--out", str(tmp_path / "out")]) == 0
    assert "merged 3 states" in capsys.readouterr().out
    import json

    doc = json.loads((tmp_path / "out" / "measure.json").read_text())
    for key, v in whole["layers"]["features"].items():
        if isinstance(v, float) and np.isfinite(v):
            assert doc["layers"]["features"][key] == pytest.approx(v, rel=1e-10, abs=1e-16), key
    assert main(["measure", "--merge", str(tmp_path / "first_0.npz"), "--out",
                 str(tmp_path / "bad")]) == 2
    assert "takes second-pass states" in capsys.readouterr().err


def test_decisions_can_be_left_out_and_the_rest_is_unchanged(tmp_path):
    """decisions=False (a vocabulary's K: the decisions are most of pass 2): every other value
    equals the full collector's exactly; the decision measures are NaN with the reason; the flag
    survives save/load and collectors with different flags do not merge."""
    X, y, W, b = _data(K=7, d=5, N=500)
    batches = _batches(X, y)
    full = _collect(measure.Collector(7, W, b), batches)
    lean = _collect(measure.Collector(7, W, b, decisions=False), batches)
    decided = {"ncc_accuracy", "accuracy", "nc4_mismatch", "nc4_mismatch_nobias"}
    values, ref = lean["layers"]["features"], full["layers"]["features"]
    for key, v in ref.items():
        if key in decided:
            assert np.isnan(values[key]) and "decisions=False" in values["undefined"][key]
            assert np.isfinite(v)
        elif isinstance(v, float):
            assert values[key] == v or (np.isnan(v) and np.isnan(values[key])), key
    assert lean["conventions"]["decisions"] is False and full["conventions"]["decisions"]
    c = measure.Collector(7, decisions=False)
    c.update(X[:100], y[:100])
    c.save(tmp_path / "s.npz")
    assert measure.Collector.load(tmp_path / "s.npz").conventions["decisions"] is False
    other = measure.Collector(7)
    other.update(X[100:200], y[100:200])
    with pytest.raises(ValueError, match="conventions"):
        c.merge(other)
    with pytest.raises(ValueError, match="decisions must be True or False"):
        measure.Collector(7, decisions="no")
