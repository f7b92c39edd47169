"""Diagnostics that hold at small N (docs/theory.md §4, "Small-sample diagnostics"), in float64
numpy on features held in memory: effective ranks of the features, the class means and each class,
and linear CKA between layers.

effective rank (Roy & Vetterli 2007): exp(−Σ p_i log p_i), p_i = σ_i/Σ_j σ_j over the singular
values σ of the centred rows (those above RANK_RTOL·σ_max; a matrix with none has effective rank
0). It is computed from the rows themselves (an SVD of the [rows, d] matrix), so it is exact
whether rows ≤ d or not: N isotropic samples have effective rank close to N − 1 (centring removes
one direction), never a floor set by 1/N.

linear CKA (Kornblith et al. 2019) of two layers' features X [N, d₁], Y [N, d₂] over the same rows:
‖YᵀX‖²_F / (‖XᵀX‖_F·‖YᵀY‖_F) on column-centred X, Y, through N×N Gram matrices when N is the
smaller side (the same number either way).
"""
import numpy as np

RANK_RTOL = 1e-12  # singular values below this fraction of the largest are round-off


def effective_rank(A):
    """exp(entropy of the normalised singular values) of the rows of A [rows, d], centred; 0 for
    fewer than two rows or rows that coincide."""
    A = np.asarray(A, np.float64)
    if A.shape[0] < 2:
        return 0.0
    C = A - A.mean(axis=0)
    s = np.linalg.svd(C, compute_uv=False)
    if s.size == 0 or s[0] == 0:
        return 0.0
    s = s[s > RANK_RTOL * s[0]]
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def linear_cka(X, Y):
    """Linear CKA of two feature matrices over the same rows (module docstring); NaN when one of
    them is constant."""
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"CKA needs the same rows in both layers, got {X.shape[0]} and "
                         f"{Y.shape[0]}")
    X = X - X.mean(axis=0)
    Y = Y - Y.mean(axis=0)
    if X.shape[0] <= min(X.shape[1], Y.shape[1]):
        Kx, Ky = X @ X.T, Y @ Y.T  # ⟨Kx, Ky⟩ = ‖YᵀX‖², ‖Kx‖ = ‖XᵀX‖
        cross, nx, ny = np.sum(Kx * Ky), np.linalg.norm(Kx), np.linalg.norm(Ky)
    else:
        cross = np.linalg.norm(Y.T @ X) ** 2
        nx, ny = np.linalg.norm(X.T @ X), np.linalg.norm(Y.T @ Y)
    if nx == 0 or ny == 0:
        return float("nan")
    return float(cross / (nx * ny))


def diagnostics(layers, labels):
    """{"layers": {name: {effective_rank, effective_rank_means, effective_rank_classes,
    effective_rank_per_class}}, "cka": {"a|b": value}} for {name: features [N, d]} and labels [N].

    effective_rank_classes is the mean over *every* class present (a class of one sample counts
    with effective rank 0); effective_rank_per_class lists them in the order of the sorted labels.
    """
    labels = np.asarray(labels)
    classes, codes = np.unique(labels, return_inverse=True)
    out = {}
    arrays = {k: np.asarray(v, np.float64) for k, v in layers.items()}
    for name, X in arrays.items():
        if X.ndim != 2 or X.shape[0] != len(labels):
            raise ValueError(f"layer {name!r} must be [N, d] with N = {len(labels)} rows, got "
                             f"shape {X.shape}")
        per_class = [effective_rank(X[codes == k]) for k in range(len(classes))]
        means = np.stack([X[codes == k].mean(axis=0) for k in range(len(classes))])
        out[name] = {"effective_rank": effective_rank(X),
                     "effective_rank_means": effective_rank(means),
                     "effective_rank_classes": float(np.mean(per_class)),
                     "effective_rank_per_class": per_class}
    names = list(arrays)
    cka = {f"{a}|{b}": linear_cka(arrays[a], arrays[b])
           for i, a in enumerate(names) for b in names[i + 1:]}
    return {"layers": out, "cka": cka}


def add_diagnostics(doc, path, layers=None, labels=None):
    """Add `diagnostics` of the file's layers to its measure report `doc` (in place): the
    effective ranks into each layer's values, the per-class list under
    `effective_rank_per_class`, CKA under `cka`."""
    from ufm.measure.inputs import load_file

    arrays, y, _, _ = load_file(path, layers, labels)
    found = diagnostics(arrays, y)
    for name, values in found["layers"].items():
        per_class = values.pop("effective_rank_per_class")
        doc["layers"][name].update(values)
        doc.setdefault("effective_rank_per_class", {})[name] = per_class
    doc["cka"] = found["cka"]
    return doc


__all__ = ["effective_rank", "linear_cka", "diagnostics", "add_diagnostics", "RANK_RTOL"]
