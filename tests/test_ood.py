"""Out-of-distribution scores from neural collapse (ufm/measure/ood.py): NC5, NECO, NCI against
their definitions and where the answer is known; AUROC and FPR@95 against brute force."""
import json

import numpy as np
import pytest

from ufm.cli import main
from ufm.measure.ood import Detector, auroc, fpr_at_tpr

RNG = np.random.default_rng(0)


def collapsed(K=4, d=8, n=30, noise=0.0, ood_rows=50):
    """ID rows at a simplex ETF's vertices (in the first K coordinates, global mean 0) with
    optional within-class noise in that span; OOD rows in the orthogonal coordinates K…d."""
    M = np.zeros((K, d))
    M[:, :K] = 3.0 * (np.eye(K) - 1.0 / K)  # rows: class means, a simplex ETF (sum 0)
    labels = np.repeat(np.arange(K), n)
    H = M[labels] + noise * np.concatenate(
        [RNG.normal(size=(K * n, K)), np.zeros((K * n, d - K))], axis=1)
    ood = np.concatenate([np.zeros((ood_rows, K)), RNG.normal(size=(ood_rows, d - K)) + 1.0],
                         axis=1)
    return H, labels, M, ood


def test_exact_collapse_with_orthogonal_ood_is_perfectly_separated():
    H, labels, M, ood = collapsed(noise=0.0)
    det = Detector(H, labels, W=M)
    nc5, raw = det.nc5(ood)
    assert nc5 == pytest.approx(0.0, abs=1e-14) and raw == pytest.approx(0.0, abs=1e-14)
    doc, per_sample = det.report(H, ood)
    for name in ("neco", "neco_std", "nci"):
        assert doc["scores"][name]["auroc"] == 1.0 and doc["scores"][name]["fpr95"] == 0.0
    np.testing.assert_allclose(per_sample["id_neco"], 1.0, atol=1e-12)  # in the ETF's span
    np.testing.assert_allclose(per_sample["ood_neco"], 0.0, atol=1e-12)  # orthogonal to it


def test_the_scores_are_their_definitions():
    K, d = 3, 6
    labels = RNG.integers(0, K, 90)
    H = RNG.normal(size=(90, d)) + np.eye(K, d)[labels] * 2
    W, b = RNG.normal(size=(K, d)), RNG.normal(size=K)
    X = RNG.normal(size=(7, d))
    det = Detector(H, labels, W, b, neco_dim=2, alpha=0.01)
    s = det.scores(X)
    mu = np.mean([H[labels == k].mean(0) for k in range(K)], axis=0)  # mean of class means
    C = H - mu
    V = np.linalg.eigh(C.T @ C)[1][:, ::-1][:, :2]  # top-2 principal directions
    for i, x in enumerate(X):
        c = x - mu
        assert s["neco"][i] == pytest.approx(np.linalg.norm(V.T @ c) / np.linalg.norm(c), rel=1e-10)
        k = np.argmax(W @ x + b)
        assert s["nci"][i] == pytest.approx(W[k] @ c / np.linalg.norm(c) + 0.01 * np.abs(x).sum(),
                                            rel=1e-10)
        assert s["max_logit"][i] == pytest.approx(np.max(W @ x + b), rel=1e-12)
    sd = C.std(axis=0)
    Vs = np.linalg.eigh((C / sd).T @ (C / sd))[1][:, ::-1][:, :2]
    z = (X[0] - mu) / sd
    assert s["neco_std"][0] == pytest.approx(np.linalg.norm(Vs.T @ z) / np.linalg.norm(z),
                                             rel=1e-10)
    ood = RNG.normal(size=(20, d)) + 0.5
    mo = ood.mean(0)
    expect = np.mean([abs(np.dot(H[labels == k].mean(0) - mu, mo - mu))
                      / np.linalg.norm(H[labels == k].mean(0) - mu) / np.linalg.norm(mo - mu)
                      for k in range(K)])
    assert det.nc5(ood)[0] == pytest.approx(expect, rel=1e-12)


def test_auroc_and_fpr_against_brute_force():
    for trial in range(5):
        a = RNG.integers(0, 6, 40).astype(float)  # ties on purpose
        b = RNG.integers(0, 5, 33).astype(float)
        pairs = np.mean([(x > y) + 0.5 * (x == y) for x in a for y in b])
        assert auroc(a, b) == pytest.approx(pairs, abs=1e-15)
        tau = max(t for t in np.unique(a) if np.mean(a >= t) >= 0.95)  # the highest keeping 95%
        assert fpr_at_tpr(a, b) == pytest.approx(np.mean(b >= tau), abs=1e-15)
    assert auroc([1, 2, 3], [0.5]) == 1.0 and auroc([0.0], [1.0, 2.0]) == 0.0


def test_noise_out_of_the_span_lowers_separation():
    H, labels, M, ood = collapsed(noise=0.3)
    mixed = 0.5 * ood + 0.5 * H[:50]  # OOD rows half inside the span
    doc, _ = Detector(H, labels, W=M).report(H, mixed)
    assert 0.5 < doc["scores"]["neco"]["auroc"] < 1.0 and doc["nc5"] > 0.0


def test_the_cli_writes_the_report_and_the_scores(tmp_path, capsys):
    H, labels, M, ood = collapsed(noise=0.1)
    np.savez(tmp_path / "train.npz", features=H, labels=labels, W=M)
    np.savez(tmp_path / "ood.npz", ood=ood, id=H[::2])
    assert main(["measure", str(tmp_path / "train.npz"), "--ood", str(tmp_path / "ood.npz"),
                 "--quiet", "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "nc5" in out and "AUROC" in out
    doc = json.loads((tmp_path / "m" / "measure.json").read_text())
    assert doc["ood"]["scores"]["neco"]["auroc"] == 1.0 and doc["ood"]["in_rows"] == len(H[::2])
    with np.load(tmp_path / "m" / "ood_scores.npz") as f:
        assert f["id_nci"].shape == (len(H[::2]),) and f["ood_neco"].shape == (len(ood),)


@pytest.mark.parametrize("ood,extra,needle", [
    (np.ones((5, 3)), [], "has d = 3, the in-distribution features d = 8"),
    (np.full((5, 8), np.nan), [], "NaN or inf entries (first in row 0)"),
    (None, [], "must be an existing .npy or .npz file"),
    (np.ones((5, 8)), ["--neco-dim", "9"], "neco_dim (--neco-dim) must be between 1 and d = 8"),
    (np.ones((5, 8)), ["--nci-alpha", "-1"], "alpha (--nci-alpha) must be finite and >= 0"),
])
def test_bad_ood_input_is_one_line(ood, extra, needle, tmp_path, capsys):
    H, labels, M, _ = collapsed()
    np.savez(tmp_path / "train.npz", features=H, labels=labels, W=M)
    path = tmp_path / "ood.npy"
    if ood is not None:
        np.save(path, ood)
    rc = main(["measure", str(tmp_path / "train.npz"), "--ood", str(path), *extra, "--quiet",
               "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m").exists()
