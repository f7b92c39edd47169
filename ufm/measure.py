"""Neural-collapse measurements of features from real networks (`ufm measure`), in float64 numpy.

Input: features X [N, d] (rows are samples, any order), integer labels [N] (any values, any
counts; the K distinct values, sorted, are the classes), and optionally the last layer's W [K, d]
and b [K]. Several layers of one network are measured side by side (`measure_layers`).

Everything is computed from accumulators filled in two passes over chunks of rows, in float64:
pass 1 gathers class counts and sums; pass 2 (given the class means) gathers Σ_W, each class's
mean squared distance to its mean, and the classifier and nearest-centre decisions. A memory-mapped
`.npy` (or an uncompressed `.npz` member) therefore streams in bounded memory and gives the same
numbers as an array held in memory, up to the order of float64 additions.

Definitions and conventions are in docs/theory.md §4. The conventions are arguments, recorded in
the output: `global_mean` ('classes': the mean of class means; 'samples': ΣX/N), `std`
('population' or 'unbiased') for the equinorm/equiangularity ratios, and `pinv_rtol` (eigenvalues
of Σ_B below pinv_rtol × the largest are dropped in NC1's pseudo-inverse; default d·eps(float64),
the default of numpy/scipy/torch pinv).
Undefined values (a ratio of vanishing quantities) are NaN and named under `undefined`.
"""
import math
import os
import zipfile

import numpy as np

from ufm.files import write_json
from ufm.metrics import RANK_TOL

GLOBAL_MEANS = ("classes", "samples")
STDS = ("population", "unbiased")
CHUNK_ROWS = 65536
RESERVED = ("labels", "W", "b")  # npz keys that are not layers


# --- input ------------------------------------------------------------------------------------

def _as_numpy(a, name):
    """A numpy view of a numpy/JAX array (or anything np.asarray takes)."""
    try:
        return a if isinstance(a, np.ndarray) else np.asarray(a)
    except Exception as e:  # noqa: BLE001 - report what the argument was
        raise ValueError(f"{name} must be an array, got {type(a).__name__}: {e}") from None


def encode_labels(labels):
    """(classes [K] sorted distinct values, codes [N] in 0..K−1) of integer labels [N]."""
    labels = _as_numpy(labels, "labels")
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional [N], got shape {labels.shape}")
    if labels.size and not (np.issubdtype(labels.dtype, np.integer)
                            or np.issubdtype(labels.dtype, np.bool_)):
        as_int = labels.astype(np.int64) if np.issubdtype(labels.dtype, np.floating) else None
        if as_int is None or not np.array_equal(as_int, labels):
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        labels = as_int
    classes, codes = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"labels must name at least 2 classes, got {len(classes)} "
                         f"({classes.tolist()})")
    return classes, codes.reshape(-1)


def _check_layer(X, name, N):
    if X.ndim != 2:
        raise ValueError(f"features {name!r} must be two-dimensional [N, d], got shape {X.shape}")
    if X.shape[0] != N:
        hint = " (transposed? rows are samples)" if X.shape[1] == N else ""
        raise ValueError(f"features {name!r} have {X.shape[0]} rows but labels have {N} "
                         f"entries{hint}")
    if X.shape[1] < 1:
        raise ValueError(f"features {name!r} have no columns (shape {X.shape})")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise ValueError(f"features {name!r} must be numeric, got dtype {X.dtype}")


def _check_classifier(W, b, K, d, layer):
    if W is None:
        if b is not None:
            raise ValueError("b was given without W")
        return None, None
    W = np.asarray(_as_numpy(W, "W"), np.float64)
    if W.shape != (K, d):
        hint = " (transposed?)" if W.shape == (d, K) else ""
        raise ValueError(f"W must have shape [K, d] = [{K}, {d}] to read layer {layer!r}, got "
                         f"{W.shape}{hint}")
    if b is not None:
        b = np.asarray(_as_numpy(b, "b"), np.float64)
        if b.shape != (K,):
            raise ValueError(f"b must have shape [K] = [{K}], got {b.shape}")
    if not (np.all(np.isfinite(W)) and (b is None or np.all(np.isfinite(b)))):
        raise ValueError("W and b must be finite")
    return W, b


def _check_options(global_mean, std, pinv_rtol, chunk_rows):
    if global_mean not in GLOBAL_MEANS:
        raise ValueError(f"global_mean (--global-mean) must be one of {GLOBAL_MEANS}, got "
                         f"{global_mean!r}")
    if std not in STDS:
        raise ValueError(f"std (--std) must be one of {STDS}, got {std!r}")
    if pinv_rtol is not None and not (isinstance(pinv_rtol, (int, float))
                                      and math.isfinite(pinv_rtol) and 0 <= pinv_rtol < 1):
        raise ValueError(f"pinv_rtol (--pinv-rtol) must be a number in [0, 1), got {pinv_rtol!r}")
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(
            chunk_rows, (int, np.integer)) or chunk_rows < 1):
        raise ValueError(f"chunk_rows (--chunk-rows) must be an integer >= 1, got {chunk_rows!r}")


# --- the two passes ---------------------------------------------------------------------------

def _chunks(N, chunk_rows):
    step = chunk_rows or CHUNK_ROWS
    return [(start, min(start + step, N)) for start in range(0, N, step)]


def _rows(X, start, stop, name):
    block = np.asarray(X[start:stop], dtype=np.float64)
    if not np.all(np.isfinite(block)):
        bad = start + int(np.flatnonzero(~np.all(np.isfinite(block), axis=1))[0])
        raise ValueError(f"features {name!r} are not finite (row {bad})")
    return block


def accumulate(X, codes, K, W=None, b=None, chunk_rows=None, name="features", progress=None):
    """The sufficient statistics of one layer, in two passes over row chunks (float64).

    Returns a dict: counts [K], sums [K, d], means [K, d], sigma_w [d, d] (Σ_W, divided by N),
    within [K] (mean ‖x − μ_k‖² per class), and with W: mismatches with and without b against the
    nearest class centre, and correct classifier decisions.
    """
    N, d = X.shape
    chunks = _chunks(N, chunk_rows)
    counts = np.bincount(codes, minlength=K).astype(np.int64)
    sums = np.zeros((K, d))
    for start, stop in chunks:
        block = _rows(X, start, stop, name)
        np.add.at(sums, codes[start:stop], block)
        if progress:
            progress(stop)
    means = sums / counts[:, None]
    scatter = np.zeros((d, d))
    within = np.zeros(K)
    decisions = dict(mismatch=0, mismatch_nobias=0, correct=0, ncc_correct=0)
    sq_means = np.sum(means * means, axis=1)
    for start, stop in chunks:
        block, y = _rows(X, start, stop, name), codes[start:stop]
        D = block - means[y]
        scatter += D.T @ D
        np.add.at(within, y, np.sum(D * D, axis=1))
        ncc = np.argmin(sq_means[None, :] - 2.0 * block @ means.T, axis=1)
        decisions["ncc_correct"] += int(np.sum(ncc == y))
        if W is not None:
            logits = block @ W.T
            plain = np.argmax(logits, axis=1)
            full = plain if b is None else np.argmax(logits + b[None, :], axis=1)
            decisions["mismatch"] += int(np.sum(full != ncc))
            decisions["mismatch_nobias"] += int(np.sum(plain != ncc))
            decisions["correct"] += int(np.sum(full == y))
        if progress:
            progress(N + stop)
    return dict(N=N, d=d, counts=counts, sums=sums, means=means, sigma_w=scatter / N,
                within=within / counts, decisions=decisions)


# --- the suite from the accumulators ----------------------------------------------------------

def _unit_rows(A):
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    return np.divide(A, norms, out=np.full_like(A, np.nan), where=norms > 0)


def _frame_distance(G, ideal):
    """‖G/‖G‖ − ideal‖ (NaN for G = 0)."""
    norm = np.linalg.norm(G)
    return float(np.linalg.norm(G / norm - ideal)) if norm > 0 else math.nan


def _etf(K):
    return (np.eye(K) - np.ones((K, K)) / K) / math.sqrt(K - 1)


def _std(x, convention):
    return float(np.std(x, ddof=1 if convention == "unbiased" else 0))


def _ratio(num, den):
    return num / den if den > 0 and math.isfinite(num) else math.nan


def _off_diagonal_cosines(A):
    U = _unit_rows(A)
    C = U @ U.T
    return C[~np.eye(len(A), dtype=bool)]


def _pairs(K):
    return np.triu_indices(K, 1)


def numerical_rank(A, rtol=RANK_TOL):
    s = np.linalg.svd(A, compute_uv=False)
    return int(np.sum(s > rtol * s[0])) if s.size and s[0] > 0 else 0


def suite(stats, W=None, b=None, global_mean="classes", std="population", pinv_rtol=None):
    """Every measurement of docs/theory.md §4 from `accumulate`'s statistics: a dict of floats
    (NaN where undefined) plus `undefined` {name: reason}."""
    K, d, N = len(stats["counts"]), stats["d"], stats["N"]
    mu = stats["means"]  # [K, d]
    g = mu.mean(axis=0) if global_mean == "classes" else stats["sums"].sum(axis=0) / N
    M = mu - g  # centred means [K, d]
    Sw = stats["sigma_w"]
    out, undefined = {}, {}

    # NC1 variants: Σ_B = MᵀM/K = V diag(s²/K) Vᵀ from the SVD of M
    _, s, Vt = np.linalg.svd(M, full_matrices=False)
    eig = s ** 2 / K
    rtol = d * np.finfo(np.float64).eps if pinv_rtol is None else pinv_rtol
    keep = eig > rtol * eig[0] if eig[0] > 0 else np.zeros_like(eig, bool)
    if keep.any():
        proj = np.einsum("jd,de,je->j", Vt[keep], Sw, Vt[keep])  # v_jᵀ Σ_W v_j
        out["nc1"] = float(np.sum(proj / eig[keep]) / K)
    else:
        out["nc1"] = math.nan
        undefined["nc1"] = "all class means coincide (Σ_B = 0)"
    out["nc1_unnormalised"] = K * out["nc1"]
    out["nc1_quotient"] = _ratio(float(np.trace(Sw)), float(np.sum(eig)))
    if math.isnan(out["nc1_quotient"]):
        undefined["nc1_quotient"] = "tr Σ_B = 0"
    i, j = _pairs(K)
    dist2 = np.sum((mu[i] - mu[j]) ** 2, axis=1)
    var = stats["within"]
    if np.all(dist2 > 0):
        out["nc1_cdnv"] = float(np.mean((var[i] + var[j]) / (2 * dist2)))
    else:
        out["nc1_cdnv"] = math.nan
        undefined["nc1_cdnv"] = "two class means coincide"
    out["pinv_directions"] = int(np.sum(keep))

    # NC2 of the features, and the Papyan et al. shape measures
    G_centred, G_raw = M @ M.T, mu @ mu.T
    out["nc2_etf_H"] = _frame_distance(G_centred, _etf(K))
    out["nc2_of_H"] = _frame_distance(G_raw, np.eye(K) / math.sqrt(K))
    norms = np.linalg.norm(M, axis=1)
    zero_mean = norms == 0
    out["equinorm_H"] = _ratio(_std(norms, std), float(np.mean(norms)))
    if zero_mean.any():
        for key in ("equiangularity_H", "max_angle_H", "hyperspherical_distance",
                    "hyperspherical_log"):
            out[key] = math.nan
            undefined[key] = "a centred class mean is zero (no direction)"
    else:
        cos = _off_diagonal_cosines(M)
        out["equiangularity_H"] = _std(cos, std)
        out["max_angle_H"] = float(np.mean(np.abs(cos + 1.0 / (K - 1))))
        U = M / norms[:, None]
        pair_dist = np.linalg.norm(U[i] - U[j], axis=1)
        out["hyperspherical_distance"] = float(np.var(pair_dist))
        with np.errstate(divide="ignore"):
            out["hyperspherical_log"] = float(np.var(np.log(1.0 / pair_dist)))
    if math.isnan(out["nc2_etf_H"]):
        undefined["nc2_etf_H"] = "every centred class mean is zero"
    if math.isnan(out["equinorm_H"]):
        undefined["equinorm_H"] = "every centred class mean is zero"
    out["rank_means"] = numerical_rank(mu)
    out["rank_centred_means"] = numerical_rank(M)
    dec = stats["decisions"]
    out["ncc_accuracy"] = dec["ncc_correct"] / N

    if W is not None:
        WW = W @ W.T
        out["nc2_etf_W"] = _frame_distance(WW, _etf(K))
        out["nc2_of_W"] = _frame_distance(WW, np.eye(K) / math.sqrt(K))
        out["nc3_etf"] = _frame_distance(W @ M.T, _etf(K))
        out["nc3_of"] = _frame_distance(W @ mu.T, np.eye(K) / math.sqrt(K))
        nW, nM = np.linalg.norm(W), np.linalg.norm(M)
        out["self_duality"] = (float(np.sum((W / nW - M / nM) ** 2)) if nW > 0 and nM > 0
                               else math.nan)
        out["uniform_duality"] = float(np.var(np.sum(W * M, axis=1), ddof=1))
        w_norms = np.linalg.norm(W, axis=1)
        out["equinorm_W"] = _ratio(_std(w_norms, std), float(np.mean(w_norms)))
        if np.any(w_norms == 0):
            out["equiangularity_W"] = out["max_angle_W"] = math.nan
            undefined["equiangularity_W"] = undefined["max_angle_W"] = "a classifier row is zero"
        else:
            cos_w = _off_diagonal_cosines(W)
            out["equiangularity_W"] = _std(cos_w, std)
            out["max_angle_W"] = float(np.mean(np.abs(cos_w + 1.0 / (K - 1))))
        out["nc4_mismatch"] = dec["mismatch"] / N
        out["nc4_mismatch_nobias"] = dec["mismatch_nobias"] / N
        out["accuracy"] = dec["correct"] / N
        out["bias_global_mean"] = float(np.linalg.norm(W @ g + (0.0 if b is None else b)))
        for key in ("nc2_etf_W", "nc2_of_W", "equinorm_W"):
            if math.isnan(out[key]):
                undefined[key] = "W = 0"
        for key in ("nc3_etf", "nc3_of", "self_duality"):
            if math.isnan(out[key]):
                undefined[key] = "W or the class means give a zero product"
    out["undefined"] = undefined
    return out


# --- entry points -----------------------------------------------------------------------------

def measure_layers(layers, labels, W=None, b=None, classifier_layer=None, global_mean="classes",
                   std="population", pinv_rtol=None, chunk_rows=None, quiet=True):
    """Measure each layer of {name: features [N, d]} (numpy/JAX arrays or memory maps) against
    the same labels; W [K, d] and b [K] read `classifier_layer` (default: the last layer).

    Returns {"conventions": {...}, "classes": [...], "counts": [...], "layers": {name: suite}}.
    """
    _check_options(global_mean, std, pinv_rtol, chunk_rows)
    if not isinstance(layers, dict) or not layers:
        raise ValueError("layers must be a non-empty dict {name: features [N, d]}")
    classes, codes = encode_labels(labels)
    K, N = len(classes), len(codes)
    layers = {name: _as_numpy(X, f"features {name!r}") if not isinstance(X, np.memmap) else X
              for name, X in layers.items()}
    for name, X in layers.items():
        _check_layer(X, name, N)
    if classifier_layer is None:
        classifier_layer = list(layers)[-1]
    if classifier_layer not in layers:
        raise ValueError(f"classifier_layer must be one of {list(layers)}, got "
                         f"{classifier_layer!r}")
    W, b = _check_classifier(W, b, K, layers[classifier_layer].shape[1], classifier_layer)
    from ufm.progress import progress_bar

    result = {}
    for name, X in layers.items():
        uses_W = W is not None and name == classifier_layer
        update, close = progress_bar(2 * N, quiet=quiet, desc=f"measure {name}", unit="row")
        stats = accumulate(X, codes, K, W if uses_W else None, b if uses_W else None,
                           chunk_rows, name, update)
        close()
        result[name] = dict(d=stats["d"], **suite(stats, W if uses_W else None,
                                                  b if uses_W else None, global_mean, std,
                                                  pinv_rtol))
    rtol = pinv_rtol
    return {"conventions": {"global_mean": global_mean, "std": std,
                            "pinv_rtol": rtol if rtol is not None else "d*eps(float64)",
                            "rank_rtol": RANK_TOL, "dtype": "float64",
                            "chunk_rows": chunk_rows or CHUNK_ROWS},
            "N": N, "K": K, "classes": classes.tolist(),
            "counts": np.bincount(codes, minlength=K).tolist(),
            "classifier_layer": classifier_layer if W is not None else None,
            "has_bias": b is not None, "layers": result}


def measure_arrays(features, labels, W=None, b=None, **options):
    """One layer: `measure_layers({"features": features}, labels, W, b, **options)`."""
    return measure_layers({"features": features}, labels, W, b, **options)


def _npz_member(path, key, mmap):
    """One array of an .npz: a read-only memory map when `mmap` and the member is stored
    uncompressed, else loaded."""
    if mmap:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(f"{key}.npy")
            if info.compress_type == zipfile.ZIP_STORED:
                with open(path, "rb") as fh:
                    fh.seek(info.header_offset)
                    local = fh.read(30)
                    name_len, extra_len = (int.from_bytes(local[26:28], "little"),
                                           int.from_bytes(local[28:30], "little"))
                    fh.seek(info.header_offset + 30 + name_len + extra_len)
                    version = np.lib.format.read_magic(fh)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, fortran, dtype = read(fh)
                    offset = fh.tell()
                return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset,
                                 order="F" if fortran else "C")
    with np.load(path, allow_pickle=False) as data:
        return data[key]


def _load(path, mmap):
    if path.endswith(".npy"):
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    raise ValueError(f"{path}: expected a .npy file")


def load_file(path, layers=None, labels=None, W=None, b=None, stream=False):
    """(layers {name: array}, labels, W, b) from an .npz (keys `labels`, optional `W`, `b`, and
    one array per layer: `features` or any other names) or from .npy files (`path` the features,
    `labels` a path). With `stream`, arrays are memory maps where the format allows."""
    if not os.path.isfile(path):
        raise ValueError(f"FILE must be an existing .npz or .npy file, got {path!r}")
    extra = {}
    for name, flag, value in (("labels", "--labels", labels), ("W", "--classifier", W),
                              ("b", "--bias", b)):
        if value is not None:
            if not (isinstance(value, str) and value.endswith(".npy") and os.path.isfile(value)):
                raise ValueError(f"{flag} must be an existing .npy file, got {value!r}")
            extra[name] = _load(value, False)
    if path.endswith(".npy"):
        if "labels" not in extra:
            raise ValueError(f"{path} is a .npy file: pass the labels as --labels LABELS.npy")
        arrays = {"features": _load(path, stream)}
    elif path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                keys = list(data.keys())
        except (zipfile.BadZipFile, ValueError, OSError) as e:
            raise ValueError(f"{path} is not a readable .npz file: {e}") from None
        for name in ("labels", "W", "b"):
            if name in keys and name not in extra:
                extra[name] = _npz_member(path, name, False)
        candidates = [k for k in keys if k not in RESERVED]
        arrays = {k: _npz_member(path, k, stream) for k in candidates}
    else:
        raise ValueError(f"FILE must end in .npz or .npy, got {path!r}")
    if "labels" not in extra:
        raise ValueError(f"{path} has no `labels` array (keys: {sorted(arrays)})")
    if layers:
        missing = [name for name in layers if name not in arrays]
        if missing:
            raise ValueError(f"--layer {missing[0]!r} is not in {path} (layers: {sorted(arrays)})")
        arrays = {name: arrays[name] for name in layers}
    elif "features" in arrays:
        arrays = {"features": arrays["features"]}
    if not arrays:
        raise ValueError(f"{path} holds no features (keys: {keys})")
    return arrays, extra["labels"], extra.get("W"), extra.get("b")


def measure_file(path, layers=None, labels=None, W=None, b=None, stream=False, **options):
    """`measure_layers` on what `load_file` reads; `source` records the file."""
    arrays, y, W_, b_ = load_file(path, layers, labels, W, b, stream)
    result = measure_layers(arrays, y, W_, b_, **options)
    result["source"] = {"file": os.path.abspath(path), "streamed": bool(stream)}
    return result


def write(result, out_dir):
    """out_dir/measure.json, atomically (NaN written as null)."""
    write_json(os.path.join(out_dir, "measure.json"), result)


REPORT_ORDER = ("nc1", "nc1_unnormalised", "nc1_quotient", "nc1_cdnv", "nc2_etf_H", "nc2_of_H",
                "equinorm_H", "equiangularity_H", "max_angle_H", "hyperspherical_distance",
                "hyperspherical_log", "rank_means", "rank_centred_means", "ncc_accuracy",
                "nc2_etf_W", "nc2_of_W", "nc3_etf", "nc3_of", "self_duality", "uniform_duality",
                "equinorm_W", "equiangularity_W", "max_angle_W", "nc4_mismatch",
                "nc4_mismatch_nobias", "accuracy", "bias_global_mean")


def _cell(v):
    if v is None:
        return "—"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def format_report(result):
    """The suite as text: one column per layer."""
    names = list(result["layers"])
    conv = result["conventions"]
    lines = [f"N = {result['N']}, K = {result['K']}, counts {result['counts']}; global mean: "
             f"{conv['global_mean']}, std: {conv['std']}, pinv rtol: {conv['pinv_rtol']}",
             f"{'measurement':<24}" + "".join(f"{n[:16]:>17}" for n in names)]
    for key in REPORT_ORDER:
        values = [result["layers"][n].get(key) for n in names]
        if all(v is None for v in values):
            continue
        lines.append(f"{key:<24}" + "".join(f"{_cell(v):>17}" for v in values))
    for n in names:
        for key, why in result["layers"][n]["undefined"].items():
            lines.append(f"undefined: {n}.{key}: {why}")
    return "\n".join(lines)


__all__ = ["measure_layers", "measure_arrays", "measure_file", "load_file", "accumulate",
           "suite", "encode_labels", "write", "format_report", "GLOBAL_MEANS", "STDS"]
