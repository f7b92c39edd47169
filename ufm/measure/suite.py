"""The neural-collapse suite from the passes' statistics, one layer or several, against a
reference, from arrays or files."""

import math
import os

import numpy as np

from ufm.conventions import RANK_TOL
from ufm.measure.inputs import (_as_numpy, _check_classifier, _check_layer, _check_options,
                                encode_labels, load_file)
from ufm.measure.passes import (BUDGET_BYTES, ENGINES, Shards, against, check_memory, plan,
                                rows_per_chunk, two_passes)
from ufm.measure.pairs import _svd, pair_measures


def accumulate(X, codes, K, W=None, b=None, chunk_rows=None, name="features", progress=None,
               budget_bytes=None, engine="numpy"):
    """The sufficient statistics of one layer (`passes.two_passes`), by the numpy passes or,
    with engine="jax", the same passes with JAX on its default device (ufm/measure/jax_engine.py):
    the choice is made here, so neither implementation imports the other."""
    chunks, counts, offset, share = plan(X, codes, K, chunk_rows, name, budget_bytes, engine)
    if engine == "jax":
        from ufm.measure import jax_engine

        return jax_engine.accumulate(X, codes, K, W, b, chunks, name, progress, offset)
    return two_passes(X, codes, K, W, b, chunks, counts, offset, share, chunk_rows, name,
                      progress)


def reference_suite(ref, acc, global_mean="classes", pinv_rtol=None):
    """The measurements of features against a reference (docs/theory.md §4, "Train and test"):
    `nc1_reference` = tr(Σ_W^ref Σ_B^†)/K with Σ_W^ref the scatter around the reference class
    means and Σ_B the reference's; `mean_shift` = mean over the classes present of
    ‖μ_k − μ_k^ref‖/‖μ_k^ref − μ_G^ref‖; `ncc_accuracy_reference` (nearest reference centre is the
    label), and with a classifier `nc4_mismatch_reference` and `accuracy_reference`."""
    N = acc["N"]
    mu_ref = ref["means_o"]
    g_ref = mu_ref.mean(axis=0) if global_mean == "classes" else ref["sums_o"].sum(0) / ref["N"]
    M = mu_ref - g_ref
    out, undefined = {}, {}
    out["nc1_reference"] = _nc1(M, acc["sigma_w"], ref["basis"], pinv_rtol)[0]
    if math.isnan(out["nc1_reference"]):
        undefined["nc1_reference"] = "all reference class means coincide (Σ_B = 0)"
    present = acc["counts"] > 0
    shift = np.linalg.norm(acc["sums_o"][present] / acc["counts"][present, None]
                           - mu_ref[present], axis=1)
    spread = np.linalg.norm(M[present], axis=1)
    out["mean_shift"] = float(np.mean(shift / spread)) if np.all(spread > 0) else math.nan
    if math.isnan(out["mean_shift"]):
        undefined["mean_shift"] = "a reference class mean equals the global mean"
    dec = acc["decisions"]
    out["ncc_accuracy_reference"] = dec["ncc_correct"] / N
    if dec["ncc_ties"]:
        out["ncc_accuracy_reference"] = math.nan
        undefined["ncc_accuracy_reference"] = (f"{dec['ncc_ties']} rows are equally near two "
                                               f"reference class means")
    if "mismatch" in dec and acc.get("has_W"):
        out["nc4_mismatch_reference"] = dec["mismatch"] / N
        out["accuracy_reference"] = dec["correct"] / N
        rows = max(dec["ties"], dec["ncc_ties"])
        for key in ("nc4_mismatch_reference", "accuracy_reference"):
            if rows and (key == "nc4_mismatch_reference" or dec["ties"]):
                out[key] = math.nan
                undefined[key] = f"argmax ties in {rows} rows: the decision is arbitrary"
    return out, undefined


def reference_statistics(path, layers=None, stream=False, chunk_rows=None, budget_bytes=None):
    """The reference (training) features' statistics per layer, their classes, W and b, from a
    file as `load_file` reads it: what `measure_layers(reference=…)` measures against."""
    arrays, labels, W, b = load_file(path, layers, None, None, None, stream)
    classes, codes = encode_labels(labels)
    K = len(classes)
    stats = {}
    for name, X in arrays.items():
        try:  # its faults are the reference's, and say so
            _check_layer(X, name, len(codes))
            stats[name] = accumulate(X, codes, K, chunk_rows=chunk_rows, name=name,
                                     budget_bytes=budget_bytes)
        except ValueError as err:
            raise ValueError(f"reference (--reference) {path}: {err}") from None
    if W is not None:
        W, b = _check_classifier(W, b, K, arrays[list(arrays)[-1]].shape[1], list(arrays)[-1],
                                 classes)
    return {"file": os.path.abspath(path), "classes": classes, "layers": stats, "W": W, "b": b}


# --- the suite from the accumulators ----------------------------------------------------------

def _std(x, convention):
    return float(np.std(x, ddof=1 if convention == "unbiased" else 0))


def _ratio(num, den):
    return num / den if den > 0 and math.isfinite(num) else math.nan


def numerical_rank(s, rtol=RANK_TOL):
    """The number of singular values `s` (descending) above rtol × the largest."""
    return int(np.sum(s > rtol * s[0])) if s.size and s[0] > 0 else 0


def _nc1(M, Sw, basis, pinv_rtol=None, svd=None):
    """(tr(Σ_W Σ_B^†)/K, the eigenvalues of Σ_B, which of them the pseudo-inverse keeps) with
    Σ_B = MᵀM/K = V diag(s²/K) Vᵀ from the SVD of the centred means M [K, d] and Σ_W given in
    the coordinates of `basis` (rows spanning M's rows; None: the standard basis); eigenvalues
    below pinv_rtol (default d·eps(float64)) × the largest are dropped; NaN when Σ_B = 0."""
    K, d = M.shape
    s, Vt = _svd(M) if svd is None else svd
    eig = s ** 2 / K
    rtol = d * np.finfo(np.float64).eps if pinv_rtol is None else pinv_rtol
    keep = eig > rtol * eig[0] if eig[0] > 0 else np.zeros_like(eig, bool)
    if not keep.any():
        return math.nan, eig, keep
    V = Vt[keep] if basis is None else Vt[keep] @ basis.T  # v_j in Σ_W's coordinates
    proj = np.einsum("jr,rs,js->j", V, Sw, V)  # v_jᵀ Σ_W v_j
    return float(np.sum(proj / eig[keep]) / K), eig, keep


SMALL_FACTOR = 1e8  # K·d·min(K, d) below which the suite's SVDs run on one BLAS thread


def suite(stats, W=None, b=None, global_mean="classes", std="population", pinv_rtol=None,
          budget_bytes=None):
    """Every measurement of docs/theory.md §4 from `accumulate`'s statistics: a dict of floats
    (NaN where undefined) plus `undefined` {name: reason}. The measures over class pairs come
    from tiles of rows (`pair_measures`) that fit in `budget_bytes`. For small [K, d] the
    factorisations run on one BLAS thread, where threads cost more than they share (an SVD of
    [100, 512]: 12 ms on two, 5 ms on one; at [20,000, 512] two threads save 20%)."""
    K, d = len(stats["counts"]), stats["d"]
    if K * d * min(K, d) >= SMALL_FACTOR:
        return _suite(stats, W, b, global_mean, std, pinv_rtol, budget_bytes)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return _suite(stats, W, b, global_mean, std, pinv_rtol, budget_bytes)


def _suite(stats, W, b, global_mean, std, pinv_rtol, budget_bytes):
    K, N = len(stats["counts"]), stats["N"]
    mu_o = stats["means_o"]  # relative to the offset: differences without cancellation
    g_o = (mu_o.mean(axis=0) if global_mean == "classes" else stats["sums_o"].sum(axis=0) / N)
    g = g_o + stats["offset"]
    M = mu_o - g_o  # centred means [K, d]; the raw means are M + g
    out, undefined = {}, {}

    # NC1 variants: Σ_B = MᵀM/K = V diag(s²/K) Vᵀ from the SVD of M
    svd_M, svd_mu = _svd(M), _svd(stats["means"])
    out["nc1"], eig, keep = _nc1(M, stats["sigma_w"], stats["basis"], pinv_rtol, svd_M)
    if math.isnan(out["nc1"]):
        undefined["nc1"] = "all class means coincide (Σ_B = 0)"
    out["nc1_unnormalised"] = K * out["nc1"]
    out["nc1_quotient"] = _ratio(stats["trace_w"], float(np.sum(eig)))
    if math.isnan(out["nc1_quotient"]):
        undefined["nc1_quotient"] = "tr Σ_B = 0"
    out["pinv_directions"] = int(np.sum(keep))

    # NC2 of the features, the pair measures and Papyan et al.'s shape measures
    pairs, why = pair_measures(M, g, W, std, budget_bytes, svd_M, svd_mu, stats["within"])
    out.update(pairs)
    undefined.update(why)
    norms = np.linalg.norm(M, axis=1)
    out["equinorm_H"] = _ratio(_std(norms, std), float(np.mean(norms)))
    if math.isnan(out["nc2_etf_H"]):
        undefined["nc2_etf_H"] = "every centred class mean is zero"
    if math.isnan(out["equinorm_H"]):
        undefined["equinorm_H"] = "every centred class mean is zero"
    out["rank_means"] = numerical_rank(svd_mu[0])
    out["rank_centred_means"] = numerical_rank(svd_M[0])
    dec = stats["decisions"]
    out["ncc_accuracy"] = dec["ncc_correct"] / N
    tied = {"ncc": dec["ncc_ties"], "W": dec["ties"], "W_nobias": dec["ties_nobias"]}
    off = "decisions were not taken (Collector(decisions=False))"
    if dec.get("off"):
        out["ncc_accuracy"], undefined["ncc_accuracy"] = math.nan, off
    if tied["ncc"]:
        out["ncc_accuracy"] = math.nan
        undefined["ncc_accuracy"] = (f"{tied['ncc']} rows are equally near two class means "
                                     f"(coincident means?): the decision is arbitrary")

    if W is not None:
        nW, nM = np.linalg.norm(W), np.linalg.norm(M)
        out["self_duality"] = (float(np.sum((W / nW - M / nM) ** 2)) if nW > 0 and nM > 0
                               else math.nan)
        out["uniform_duality"] = float(np.var(np.sum(W * M, axis=1), ddof=1))
        w_norms = np.linalg.norm(W, axis=1)
        out["equinorm_W"] = _ratio(_std(w_norms, std), float(np.mean(w_norms)))
        out["nc4_mismatch"] = dec["mismatch"] / N
        out["nc4_mismatch_nobias"] = dec["mismatch_nobias"] / N
        out["accuracy"] = dec["correct"] / N
        for key, sources in (("accuracy", ("W",)), ("nc4_mismatch", ("W", "ncc")),
                             ("nc4_mismatch_nobias", ("W_nobias", "ncc"))):
            rows = max(tied[k] for k in sources)
            if dec.get("off"):
                out[key], undefined[key] = math.nan, off
            elif rows:
                out[key] = math.nan
                undefined[key] = (f"argmax ties in {rows} rows (W = 0, equal classifier rows or "
                                  f"coincident class means): the decision is arbitrary")
        out["bias_global_mean"] = float(np.linalg.norm(W @ g + (0.0 if b is None else b)))
        for key in ("nc2_etf_W", "nc2_of_W", "equinorm_W"):
            if math.isnan(out[key]):
                undefined[key] = "W = 0"
        for key in ("nc3_etf", "nc3_of", "self_duality"):
            if math.isnan(out[key]):
                undefined[key] = "W or the class means give a zero product"
    for key, value in out.items():  # every NaN says why
        if isinstance(value, float) and math.isnan(value) and key not in undefined:
            undefined[key] = "a ratio or logarithm of vanishing quantities at these features"
    out["undefined"] = undefined
    return out


# --- entry points -----------------------------------------------------------------------------

def measure_layers(layers, labels, W=None, b=None, classifier_layer=None, global_mean="classes",
                   std="population", pinv_rtol=None, chunk_rows=None, quiet=True,
                   budget_bytes=None, reference=None, engine="numpy"):
    """Measure each layer of {name: features [N, d]} (numpy/JAX arrays or memory maps) against
    the same labels; W [K, d] and b [K] read `classifier_layer` (default: the last layer).
    `engine` "numpy" (default), or "jax" for the passes over rows on JAX's default device (a GPU
    or TPU when present; float64 there too).

    Returns {"conventions": {...}, "classes": [...], "counts": [...], "layers": {name: suite}}.
    """
    _check_options(global_mean, std, pinv_rtol, chunk_rows)
    if engine not in ENGINES:
        raise ValueError(f"engine (--engine) must be one of {ENGINES}, got {engine!r}")
    if budget_bytes is not None and not (isinstance(budget_bytes, (int, float)) and
                                         not isinstance(budget_bytes, bool) and
                                         math.isfinite(budget_bytes) and budget_bytes >= 2 ** 20):
        raise ValueError(f"budget (--budget) must be at least 1 MB, got {budget_bytes!r} bytes")
    if not isinstance(layers, dict) or not layers:
        raise ValueError("layers must be a non-empty dict {name: features [N, d]}")
    classes, codes = encode_labels(labels)
    K, N = len(classes), len(codes)
    layers = {name: X if isinstance(X, (np.memmap, Shards)) else _as_numpy(X, f"features {name!r}")
              for name, X in layers.items()}
    for name, X in layers.items():
        _check_layer(X, name, N)
    if classifier_layer is None:
        classifier_layer = list(layers)[-1]
    if classifier_layer not in layers:
        raise ValueError(f"classifier_layer must be one of {list(layers)}, got "
                         f"{classifier_layer!r}")
    W, b = _check_classifier(W, b, K, layers[classifier_layer].shape[1], classifier_layer,
                             classes)
    for name, X in layers.items():
        check_memory(N, X.shape[1], K, chunk_rows or rows_per_chunk(X.shape[1], K, budget_bytes),
                     name, budget_bytes)
    from ufm.progress import progress_bar

    result = {}
    for name, X in layers.items():
        uses_W = W is not None and name == classifier_layer
        update, close = progress_bar(2 * N, quiet=quiet, desc=f"measure {name}", unit="row")
        stats = accumulate(X, codes, K, W if uses_W else None, b if uses_W else None,
                           chunk_rows, name, update, budget_bytes, engine)
        close()
        result[name] = dict(d=stats["d"], **suite(stats, W if uses_W else None,
                                                  b if uses_W else None, global_mean, std,
                                                  pinv_rtol, budget_bytes))
        if reference is not None:
            _measure_against(result[name], reference, name, X, classes[codes], uses_W, W, b,
                             global_mean, pinv_rtol, chunk_rows, budget_bytes)
    rtol = pinv_rtol
    extra = {} if reference is None else {"reference": reference["file"]}
    return {**extra, "conventions": {"global_mean": global_mean, "std": std,
                            "pinv_rtol": rtol if rtol is not None else "d*eps(float64)",
                            "rank_rtol": RANK_TOL, "dtype": "float64",
                            "chunk_rows": chunk_rows or "budget", "engine": engine,
                            "budget_bytes": BUDGET_BYTES if budget_bytes is None
                            else budget_bytes},
            "N": N, "K": K, "classes": classes.tolist(),
            "counts": np.bincount(codes, minlength=K).tolist(),
            "classifier_layer": classifier_layer if W is not None else None,
            "classifier_rows": _pairing(classes, W),
            "has_bias": b is not None, "layers": result}


def _pairing(classes, W):
    """How W's rows are read: None without W; else row k ↔ the k-th smallest label, said in
    words when the labels are not 0 … K − 1 (the rows are then paired by rank, not by value)."""
    if W is None:
        return None
    if np.array_equal(classes, np.arange(len(classes))):
        return "row k is label k"
    shown = ", ".join(f"{k}↔{c}" for k, c in enumerate(classes[:6].tolist()))
    return (f"row k is the k-th smallest label, not label k ({shown}"
            f"{', …' if len(classes) > 6 else ''})")


def _measure_against(out, reference, name, X, labels, uses_W, W, b, global_mean, pinv_rtol,
                     chunk_rows, budget_bytes):
    """Add the reference measurements of layer `name` to its results `out` (in place). The
    classifier is the reference's when it has one, else the measured file's."""
    if name not in reference["layers"]:
        raise ValueError(f"the reference {reference['file']} has no layer {name!r} (it has "
                         f"{sorted(reference['layers'])})")
    ref = reference["layers"][name]
    if ref["d"] != X.shape[1]:
        raise ValueError(f"layer {name!r} has d = {X.shape[1]} here and {ref['d']} in the "
                         f"reference {reference['file']}")
    classes = reference["classes"]
    codes = np.searchsorted(classes, labels)
    codes = np.minimum(codes, len(classes) - 1)
    unknown = classes[codes] != labels
    if unknown.any():
        raise ValueError(f"labels {sorted(set(labels[unknown].tolist()))[:5]} are not classes of "
                         f"the reference {reference['file']}")
    ref_W = reference["W"] if reference["W"] is not None and name == list(reference["layers"])[-1] \
        else (W if uses_W else None)
    ref_b = reference["b"] if reference["W"] is not None else (b if uses_W else None)
    acc = against(X, codes, len(classes), ref, ref_W, ref_b, chunk_rows, name, budget_bytes)
    acc["has_W"] = ref_W is not None
    values, undefined = reference_suite(ref, acc, global_mean, pinv_rtol)
    out.update(values)
    out["undefined"].update(undefined)


def measure_arrays(features, labels, W=None, b=None, **options):
    """One layer: `measure_layers({"features": features}, labels, W, b, **options)`."""
    return measure_layers({"features": features}, labels, W, b, **options)


def measure_file(path, layers=None, labels=None, W=None, b=None, stream=False, **options):
    """`measure_layers` on what `load_file` reads (options as measure_layers', `reference` the
    result of `reference_statistics`); `source` records the file."""
    arrays, y, W_, b_ = load_file(path, layers, labels, W, b, stream)
    result = measure_layers(arrays, y, W_, b_, **options)
    result["source"] = {"file": os.path.abspath(path), "streamed": bool(stream)}
    return result


def measure_pooled(paths, layers=None, stream=False, **options):
    """Several .npz files as shards of one data set (a feature collection saved in stages): each
    layer is the files' rows one after another (read a chunk at a time, never concatenated),
    labelled by their labels; W and b from the first file that has them. The statistics equal
    those of the concatenation."""
    loaded = [load_file(p, layers, None, None, None, stream) for p in paths]
    names = list(loaded[0][0])
    for path, (arrays, *_rest) in zip(paths[1:], loaded[1:]):
        if list(arrays) != names:
            raise ValueError(f"pooled files must hold the same layers: {paths[0]} has {names}, "
                             f"{path} has {list(arrays)}")
    pooled = {n: Shards([arrays[n] for arrays, *_rest in loaded]) for n in names}
    labels = np.concatenate([np.asarray(y) for _, y, _, _ in loaded])
    W = next((w for _, _, w, _ in loaded if w is not None), None)
    b = next((bb for _, _, w, bb in loaded if w is not None), None)
    result = measure_layers(pooled, labels, W, b, **options)
    result["source"] = {"files": [os.path.abspath(p) for p in paths], "pooled": True,
                        "rows": [int(len(y)) for _, y, _, _ in loaded], "streamed": bool(stream)}
    return result
