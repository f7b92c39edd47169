"""Out-of-distribution detection from neural collapse (docs/theory.md §4, "Out-of-distribution
scores"), in float64 numpy: the ID/OOD orthogonality NC5, and per-sample scores (higher: more
in-distribution) with AUROC and FPR at 95% TPR.

Fitted on the in-distribution training features H [N, d] with labels (and the classifier W, b):
  nc5             Avg_c |cos(μ_c − μ_G, μ_OOD − μ_G)|: the ID class means and the OOD mean, both
                  centred by the ID global mean (0: the OOD mean is orthogonal to every centred
                  class mean; Ben Ammar et al. 2024 state it for features whose global mean is 0)
  nc5_uncentred   Avg_c |cos(μ_c, μ_OOD)|: the same with the raw means
  neco            ‖P(h − μ_G)‖/‖h − μ_G‖, P the projector onto the top `neco_dim` principal
                  directions of the centred ID training features (default K − 1, the simplex ETF's
                  span; Ben Ammar et al. 2024, eq. 6)
  neco_std        the same on standardised features ((h − μ_G)/σ coordinate-wise, σ the ID
                  training features' per-coordinate standard deviation; the PCA of the standardised
                  training features), the variant whose features are first scaled per coordinate
  nci             ⟨w_ĉ, h − μ_G⟩/‖h − μ_G‖ + α·‖h‖₁, ĉ = argmax(Wh + b) (Liu & Qin 2025: proximity
                  to the predicted class's weight vector, plus a feature-norm filter, α = 1e-4 by
                  default as in their released configuration); needs W
  max_logit       max_k (Wh + b)_k, the baseline they are compared with; needs W

Everything is held in memory (the training features once, for the means and the PCA).
"""
import math
import os
import zipfile

import numpy as np

from ufm.measure.inputs import _as_numpy

TPR = 0.95
NCI_ALPHA = 1e-4
SCORES = ("neco", "neco_std", "nci", "max_logit")


def auroc(inside, outside):
    """P(s_in > s_out) + ½P(s_in = s_out) over all pairs (the Mann–Whitney statistic), by ranks:
    1 when every in-distribution score is above every out-of-distribution one."""
    inside, outside = np.asarray(inside, np.float64), np.asarray(outside, np.float64)
    both = np.concatenate([inside, outside])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both))
    sorted_values = both[order]
    # average ranks over ties (1-based)
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(both)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2
    n_in, n_out = len(inside), len(outside)
    return float((ranks[:n_in].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out))


def fpr_at_tpr(inside, outside, tpr=TPR):
    """The fraction of out-of-distribution scores at or above the threshold τ that keeps a
    fraction ≥ tpr of the in-distribution scores (τ the ⌈tpr·n⌉-th largest of them)."""
    inside = np.sort(np.asarray(inside, np.float64))[::-1]
    tau = inside[max(math.ceil(tpr * len(inside)) - 1, 0)]
    return float(np.mean(np.asarray(outside, np.float64) >= tau))


def _cosines(A, v):
    """|cos| of each row of A with v; NaN for a zero vector."""
    na, nv = np.linalg.norm(A, axis=1), np.linalg.norm(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(A @ v) / (na * nv)


def _check(name, X, d=None):
    X = _as_numpy(X, name)  # numpy, JAX, or a DLPack producer (a PyTorch tensor), as measure takes
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got {X.dtype} entries")
    X = X.astype(np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"{name} must be a 2-D array [rows, d] with rows, got shape {X.shape}")
    if d is not None and X.shape[1] != d:
        raise ValueError(f"{name} has d = {X.shape[1]}, the in-distribution features d = {d}")
    if not np.all(np.isfinite(X)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(X), axis=1))[0])
        raise ValueError(f"{name} has NaN or inf entries (first in row {bad})")
    return X


class Detector:
    """The scores' statistics, fitted on ID training features H [N, d] and integer labels [N]
    (and W [K, d], b [K] for nci and max_logit)."""

    def __init__(self, H, labels, W=None, b=None, neco_dim=None, alpha=NCI_ALPHA):
        H = _check("the in-distribution features", H)
        labels = np.asarray(labels)
        if labels.shape != (H.shape[0],):
            raise ValueError(f"labels must have one entry per row ({H.shape[0]}), got shape "
                             f"{labels.shape}")
        classes, codes = np.unique(labels, return_inverse=True)
        K, d = len(classes), H.shape[1]
        if K < 2:
            raise ValueError(f"the in-distribution features need two classes or more, got {K}")
        counts = np.bincount(codes, minlength=K)
        self.means = np.stack([H[codes == k].mean(axis=0) for k in range(K)])  # [K, d]
        self.global_mean = self.means.mean(axis=0)  # the mean of the class means
        self.neco_dim = K - 1 if neco_dim is None else int(neco_dim)
        if not 1 <= self.neco_dim <= d:
            raise ValueError(f"neco_dim (--neco-dim) must be between 1 and d = {d}, got "
                             f"{neco_dim}")
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha (--nci-alpha) must be finite and >= 0, got {alpha!r}")
        self.alpha = float(alpha)
        C = H - self.global_mean
        self.basis = np.linalg.svd(C, full_matrices=False)[2][:self.neco_dim]  # [d', d]
        self.scale = C.std(axis=0)
        self.scale = np.where(self.scale > 0, self.scale, 1.0)  # a constant coordinate: kept
        self.basis_std = np.linalg.svd(C / self.scale, full_matrices=False)[2][:self.neco_dim]
        self.W = None if W is None else _check("W", W, d)
        if self.W is not None and self.W.shape[0] != K:
            raise ValueError(f"W has {self.W.shape[0]} rows, the labels {K} classes")
        self.b = np.zeros(K) if b is None else np.asarray(b, np.float64).reshape(K)
        self.K, self.d, self.counts = K, d, counts

    def nc5(self, ood):
        """(nc5, nc5_uncentred) for out-of-distribution features [M, d]."""
        ood = _check("the out-of-distribution features", ood, self.d)
        mu = ood.mean(axis=0)
        centred = _cosines(self.means - self.global_mean, mu - self.global_mean)
        raw = _cosines(self.means, mu)
        return float(np.mean(centred)), float(np.mean(raw))

    def scores(self, X, name="features"):
        """{score: [rows]} for features X [rows, d] (module docstring; nci and max_logit only
        with W)."""
        X = _check(name, X, self.d)
        C = X - self.global_mean
        norm = np.linalg.norm(C, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {"neco": np.linalg.norm(C @ self.basis.T, axis=1) / norm}
            S = C / self.scale
            out["neco_std"] = np.linalg.norm(S @ self.basis_std.T, axis=1) / np.linalg.norm(
                S, axis=1)
            if self.W is not None:
                logits = X @ self.W.T + self.b
                top = np.argmax(logits, axis=1)
                out["nci"] = (np.sum(self.W[top] * C, axis=1) / norm
                              + self.alpha * np.abs(X).sum(axis=1))
                out["max_logit"] = logits.max(axis=1)
        return out

    def report(self, inside, outside):
        """nc5 and, per score, AUROC and FPR at 95% TPR of in-distribution test features
        `inside` against `outside`; with the per-sample scores (for a file)."""
        s_in, s_out = self.scores(inside, "the in-distribution test features"), self.scores(
            outside, "the out-of-distribution features")
        nc5, nc5_raw = self.nc5(outside)
        table = {}
        for k in s_in:
            ok_in, ok_out = np.isfinite(s_in[k]), np.isfinite(s_out[k])
            table[k] = {"auroc": auroc(s_in[k][ok_in], s_out[k][ok_out]),
                        "fpr95": fpr_at_tpr(s_in[k][ok_in], s_out[k][ok_out]),
                        "undefined_rows": int((~ok_in).sum() + (~ok_out).sum())}
        doc = {"nc5": nc5, "nc5_uncentred": nc5_raw, "neco_dim": self.neco_dim,
               "nci_alpha": self.alpha, "tpr": TPR, "in_rows": len(s_in["neco"]),
               "out_rows": len(s_out["neco"]), "scores": table}
        per_sample = {**{f"id_{k}": v for k, v in s_in.items()},
                      **{f"ood_{k}": v for k, v in s_out.items()}}
        return doc, per_sample


def read_ood(path):
    """(out-of-distribution features, in-distribution test features or None) from `--ood`: a
    .npy (the OOD features) or an .npz with `ood` [M, d] and optionally `id` [M', d]."""
    if not (isinstance(path, str) and os.path.isfile(path) and path.endswith((".npy", ".npz"))):
        raise ValueError(f"ood (--ood) must be an existing .npy or .npz file, got {path!r}")
    try:
        if path.endswith(".npy"):
            return np.load(path, allow_pickle=False), None
        with np.load(path, allow_pickle=False) as f:
            if "ood" not in f.files:
                raise ValueError(f"ood (--ood) {path} has no `ood` array (keys: {f.files})")
            return f["ood"], (f["id"] if "id" in f.files else None)
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"ood (--ood) {path} cannot be read: {err}") from None


def ood_file(path, ood_path, layers=None, labels=None, W=None, b=None, neco_dim=None,
             alpha=NCI_ALPHA):
    """(report, per-sample scores) of `ufm measure FILE --ood OOD`: the detector fitted on
    FILE's classifier layer (its last layer), scored on OOD's `id` rows (default: FILE's own
    rows) against its `ood` rows."""
    from ufm.measure.inputs import load_file

    arrays, y, W, b = load_file(path, layers, labels, W, b)
    layer = list(arrays)[-1]
    detector = Detector(arrays[layer], y, W, b, neco_dim, alpha)
    outside, inside = read_ood(ood_path)
    doc, per_sample = detector.report(arrays[layer] if inside is None else inside, outside)
    doc.update(layer=layer, file=os.path.abspath(ood_path),
               in_distribution="the measured rows" if inside is None else "the `id` array")
    return doc, per_sample


def format_ood(doc):
    """The OOD report as text."""
    lines = [f"out-of-distribution ({doc['in_rows']} in, {doc['out_rows']} out): nc5 "
             f"{doc['nc5']:.6g} (uncentred {doc['nc5_uncentred']:.6g})",
             f"{'score':<10} {'AUROC':>8} {'FPR@95':>8}"]
    for k, v in doc["scores"].items():
        lines.append(f"{k:<10} {v['auroc']:>8.4f} {v['fpr95']:>8.4f}")
    return "\n".join(lines)


__all__ = ["Detector", "auroc", "fpr_at_tpr", "format_ood", "SCORES", "TPR"]
