"""Run rhubarbwu/neural-collapse once on a generated array and save its numbers beside the inputs
(tests/data/rhubarbwu_parity.npz; recorded with commit c05a0b8 of the peer, torch 2.13.0 CPU, its
accumulators in float64, fed in batches of 32). Not part of the suite (the peer and torch are not
dependencies); in a separate environment with torch and numpy:

    python tests/data/rhubarbwu_parity_record.py PATH/TO/neural-collapse tests/data/rhubarbwu_parity.npz
"""
import sys

import numpy as np
import torch as pt

sys.path.insert(0, sys.argv[1])
from neural_collapse.accumulate import MeanAccumulator, CovarAccumulator, VarNormAccumulator, DecAccumulator
from neural_collapse.measure import (covariance_ratio, variability_cdnv, mean_norms, simplex_etf_error,
                                     self_duality_error, clf_ncc_agreement, orthogonality_deviation)
from neural_collapse.kernels import kernel_stats, log_kernel

rng = np.random.default_rng(20261207)
K, d, n = 6, 10, 25
centres = 3 * rng.normal(size=(K, d))
labels = np.repeat(np.arange(K), n)
rng.shuffle(labels)
H = centres[labels] + rng.normal(size=(K * n, d)) * rng.uniform(0.5, 2.0, size=(K, 1))[labels]
W = centres + 0.8 * rng.normal(size=(K, d))
ood = rng.normal(size=(40, d)) + 1.5
f64 = pt.float64
X, Y, Wt = pt.tensor(H, dtype=f64), pt.tensor(labels), pt.tensor(W, dtype=f64)
out = {"H": H, "labels": labels, "W": W, "ood": ood}
mean = MeanAccumulator(K, d, "cpu", dtype=f64)
for s in range(0, len(H), 32):  # batches, as a training loop feeds them
    mean.accumulate(X[s:s + 32], Y[s:s + 32])
M, mG = mean.compute()
cov = CovarAccumulator(K, d, "cpu", dtype=f64, M=M)
var = VarNormAccumulator(K, d, "cpu", dtype=f64, M=M)
dec = DecAccumulator(K, d, "cpu", dtype=f64, M=M, W=Wt)
for s in range(0, len(H), 32):
    cov.accumulate(X[s:s + 32], Y[s:s + 32], M)
    var.accumulate(X[s:s + 32], Y[s:s + 32], M)
    dec.accumulate(X[s:s + 32], Y[s:s + 32], Wt, M)
Sw = cov.compute()
V, _ = var.compute()
oodm = MeanAccumulator(1, d, "cpu", dtype=f64)
oodm.accumulate(pt.tensor(ood, dtype=f64), pt.zeros(len(ood), dtype=pt.long))
_, mG_ood = oodm.compute()
peer = {
    "nc1_pinv": covariance_ratio(Sw, M, mG), "nc1_svd": covariance_ratio(Sw, M, mG, "svd"),
    "nc1_quotient": covariance_ratio(Sw, M, mG, "quotient"), "nc1_cdnv": variability_cdnv(V, M),
    "mean_norms": mean_norms(M, mG).numpy(), "simplex_etf_error": simplex_etf_error(M, mG),
    "self_duality_error": self_duality_error(Wt, M, mG), "clf_ncc_agreement": clf_ncc_agreement(dec),
    "orthogonality_deviation": orthogonality_deviation(M, mG_ood),
    "log_kernel_mean": kernel_stats(M, mG, kernel=log_kernel)[0],
    "log_kernel_var": kernel_stats(M, mG, kernel=log_kernel)[1],
    "means": M.numpy(), "global_mean": mG.numpy()}
for k, v in peer.items():
    out[f"peer/{k}"] = np.asarray(v)
    print(k, v if np.ndim(v) == 0 else np.round(v, 6))
np.savez(sys.argv[2], **out)
