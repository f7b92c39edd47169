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
of Σ_B below pinv_rtol × the largest are dropped in NC1's pseudo-inverse; default d·eps(float64):
torch's and scipy's pinv rule, with float64's epsilon rather than the input's; numpy's default is
a fixed 1e-15 — docs/theory.md §4).
Undefined values (a ratio of vanishing quantities) are NaN and named under `undefined`.
"""
import io
import math
import os
import threading
import zipfile

import numpy as np

from ufm.files import atomic_write, write_json
from ufm.conventions import RANK_TOL

GLOBAL_MEANS = ("classes", "samples")
ENGINES = ("numpy", "jax")
STDS = ("population", "unbiased")
BUDGET_BYTES = 64 * 2 ** 20  # working set of the chunks of rows in flight, and of a tile of class pairs
RESERVED = ("labels", "W", "b")  # npz keys that are not layers
EPS32 = float(np.finfo(np.float32).eps)  # the float32 screens' rounding unit (2u)
SUBNORMAL32 = float(np.finfo(np.float32).smallest_subnormal)  # 2⁻¹⁴⁹: twice an absolute rounding


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
        floating = np.issubdtype(labels.dtype, np.floating)
        if floating and not np.all(np.isfinite(labels)):
            bad = int(np.flatnonzero(~np.isfinite(labels))[0])
            raise ValueError(f"labels must be integers, got {labels[bad]} at row {bad}")
        as_int = labels.astype(np.int64) if floating else None
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

def rows_per_chunk(d, K, budget_bytes=None):
    """Rows whose working copies (the rows as read, their centred float64 version and the
    gathered class means, the projection, the nearest-centre distances and the logits
    [rows, K]) fit in `budget_bytes` (default BUDGET_BYTES): peak memory is set by the budget,
    not by N."""
    budget = BUDGET_BYTES if budget_bytes is None else budget_bytes
    return max(1, int(budget // (8 * (4 * d + 3 * K))))


def rows_for_sums(d, itemsize, budget_bytes=None):
    """(rows of a first-pass chunk, rows converted at a time) within `budget_bytes`: half of it
    for the rows as read (itemsize·d bytes a row, and the class order), half for the rows being
    converted (gathered and in float64: (itemsize + 8)·d a row; `_class_sums`' `piece`). The
    chunks are about twice the second pass's, so class segments are longer: fewer numpy calls
    a row, and the two workers wait less on each other for Python's lock (docs/performance.md)."""
    budget = BUDGET_BYTES if budget_bytes is None else budget_bytes
    return (max(1, int(budget // (2 * (itemsize * d + 16)))),
            max(1, int(budget // (2 * (itemsize + 8) * d))))


def _chunks(N, chunk_rows):
    return [(start, min(start + chunk_rows, N)) for start in range(0, N, chunk_rows)]


class Shards:
    """Several arrays [N_i, d] (files, memory maps) read as one [ΣN_i, d], a slice at a time:
    pooled statistics without concatenating anything."""

    def __init__(self, parts):
        self.parts = list(parts)
        widths = {p.shape[1] for p in self.parts}
        if len(widths) != 1:
            raise ValueError(f"pooled features must have the same number of columns, got "
                             f"{sorted(widths)}")
        self.ends = np.cumsum([p.shape[0] for p in self.parts])
        self.shape = (int(self.ends[-1]), widths.pop())
        self.ndim = 2
        self.dtype = np.result_type(*[p.dtype for p in self.parts])

    def __getitem__(self, rows):
        start, stop, _ = rows.indices(self.shape[0])
        out, begin = [], 0
        for part, end in zip(self.parts, self.ends):
            lo, hi = max(start, begin), min(stop, end)
            if lo < hi:
                out.append(np.asarray(part[lo - begin:hi - begin]))
            begin = end
        return np.concatenate(out) if len(out) != 1 else out[0]


def _class_sums(rows, y, K, offset=None, piece=None):
    """Σ of the rows of each class  [K, d] in float64 (minus `offset` first when given; `rows`
    may be float32: each class's rows are converted as they are summed), converting at most
    `piece` rows at a time (default: all). The chunk's rows are sorted into class segments: a
    sum per class present when the segments are long, one np.add.reduceat per piece of rows
    when they are short (both far faster than np.add.at). A class's sum depends only on its
    own rows, in order (and, with short segments, on where the pieces cut): classes with the
    same rows get the same mean, bit for bit (a one-hot matrix product would not: BLAS sums by
    position), so ties between coincident means stay exact."""
    sums = np.zeros((K, rows.shape[1]))
    _add_class_sums(sums, rows, y, offset, piece or max(1, len(y)))
    return sums


def _add_class_sums(sums, rows, y, offset, piece):
    order = np.argsort(y, kind="stable")
    ys = y[order]
    starts = np.flatnonzero(np.concatenate([[True], ys[1:] != ys[:-1]]))

    def convert(gathered):  # a gathered copy: to float64 (no copy if it is), the offset in
        part = gathered.astype(np.float64, copy=False)  # place (10% faster than one mixed call)
        if offset is not None:
            part -= offset
        return part

    if 8 * len(starts) > len(y):  # short segments: one call a piece beats a call per class
        if len(y) > piece:
            for start, stop in _chunks(len(y), piece):
                _add_class_sums(sums, rows[start:stop], y[start:stop], offset, piece)
            return
        sums[ys[starts]] += np.add.reduceat(convert(rows[order]), starts, axis=0)
        return
    for start, stop in zip(starts.tolist(), np.append(starts[1:], len(y)).tolist()):
        for lo in range(start, stop, piece):  # a class's rows, `piece` at a time
            sums[ys[start]] += convert(rows[order[lo:min(lo + piece, stop)]]).sum(axis=0)


def _offset(X, start, stop, name):
    """The offset every row is moved by: the mean o of rows start:stop when ‖o‖ exceeds their
    spread around it (root mean square of ‖x − o‖), else zero, which the passes skip (`_moved`):
    a pass fewer over every row, and the roundings it would have saved are then at most those
    of ‖x‖ ≤ ‖x − o‖ + ‖o‖, twice the spread, instead of the spread."""
    block = _rows(X, start, stop, name)
    mean = block.mean(axis=0)
    block -= mean
    spread = math.sqrt(float(np.einsum("ij,ij->", block, block)) / len(block))
    return mean if float(np.linalg.norm(mean)) > spread else np.zeros_like(mean)


def _moved(offset):
    """The offset to subtract from rows, or None for a zero offset (nothing to subtract)."""
    return offset if np.any(offset) else None


def _rows(X, start, stop, name, offset=None):
    """Rows start:stop as float64, minus `offset` (one pass: conversion and subtraction
    fused); a ValueError naming the first row that is not finite."""
    rows = np.asarray(X[start:stop])
    block = (rows.astype(np.float64) if offset is None
             else np.subtract(rows, offset, dtype=np.float64))
    if not math.isfinite(float(np.sum(block))):  # a sum of finite rows may overflow: look
        finite = np.all(np.isfinite(block), axis=1)
        if not finite.all():
            bad = start + int(np.flatnonzero(~finite)[0])
            raise ValueError(f"features {name!r} are not finite (row {bad})")
    return block


def span_basis(means):
    """Orthonormal rows [r, d] spanning the centred class means (r = min(K, d)), or None when
    r = d (the standard basis). The span of μ_k − g is the same for every global mean g that is
    an average of the class means (the mean of the means, or the sample mean): the span of the
    differences μ_k − μ_j. NC1 needs Σ_W only in that span (docs/theory.md §4)."""
    K, d = means.shape
    if K >= d:
        return None
    return np.linalg.svd(means - means.mean(axis=0), full_matrices=False)[2]


def _project(D, basis):
    """The rows D in the basis' coordinates [rows, r] (D itself for the standard basis),
    computed as (basis·Dᵀ)ᵀ: OpenBLAS runs the product with the long dimension last ≈ 15%
    faster (docs/performance.md), and the transposed view costs nothing."""
    return D if basis is None else (basis @ D.T).T


def accumulate(X, codes, K, W=None, b=None, chunk_rows=None, name="features", progress=None,
               budget_bytes=None, engine="numpy"):
    """The sufficient statistics of one layer, in two passes over row chunks (float64).

    Every row is first moved by `offset` (the mean of the first chunk, when it is larger than
    the rows' spread around it: `_offset`), so that features with a large common offset (1e12 ×
    their spread) lose nothing to cancellation: sums, scatter, distances and nearest-centre
    decisions are computed from x − offset (they do not depend on it), and only the raw means
    add it back.
    Σ_W is gathered in the span of the centred class means (`span_basis`): [r, r] with
    r = min(K, d), never [d, d] when K < d, and r/d of the work.
    Returns a dict: counts [K], offset [d], sums_o [K, d] and means_o [K, d] (of x − offset),
    means [K, d] (raw), basis ([r, d] or None), sigma_w [r, r] (Σ_W in the basis, divided by
    N), trace_w (tr Σ_W), within [K] (mean ‖x − μ_k‖² per class), and with W: mismatches with
    and without b against the nearest class centre, and correct classifier decisions.
    engine="jax" runs the passes with JAX on its default device (ufm/measure_jax.py).
    """
    N, d = X.shape
    share = budget_bytes if engine == "jax" else _per_worker(budget_bytes)  # chunks in flight
    chunks = _chunks(N, chunk_rows or rows_per_chunk(d, K, share))
    counts = np.bincount(codes, minlength=K).astype(np.int64)
    offset = _offset(X, *chunks[0], name)
    if engine == "jax":  # the same passes on JAX's default device (ufm/measure_jax.py)
        from ufm import measure_jax

        return measure_jax.accumulate(X, codes, K, W, b, chunks, name, progress, offset)
    with blas_per_worker():  # both passes and what lies between them (`blas_per_worker`)
        sums = np.zeros((K, d))
        itemsize = np.dtype(X.dtype).itemsize if np.dtype(X.dtype).kind == "f" else 8
        summed_rows, piece = rows_for_sums(d, itemsize, share)
        summed = chunks if chunk_rows else _chunks(N, summed_rows)
        moved = _moved(offset)

        def first(start, stop):
            rows = np.asarray(X[start:stop])
            sums = _class_sums(rows, codes[start:stop], K, moved, piece)
            if not np.all(np.isfinite(sums)):
                _rows(X, start, stop, name)  # names the first row that is not finite
            return sums

        for (start, stop), part in zip(summed, _in_order(first, summed)):
            sums += part
            if progress:
                progress(stop)
        means = sums / counts[:, None]
        basis = span_basis(means)
        decide = Decisions(means, basis, W, b, offset)
        scatter, within, decisions, _ = _second_pass(X, codes, K, chunks, name, offset, means,
                                                     basis, decide, N, progress)
        return statistics(counts, offset, sums, basis, scatter, within, decisions)


def statistics(counts, offset, sums, basis, scatter, within, decisions):
    """`accumulate`'s dict from what the two passes gathered (either engine): class counts,
    the offset, class sums relative to it, the span basis, Σ_W·N in it, the classes' summed
    squared distances and the decision counts."""
    N, d = int(counts.sum()), sums.shape[1]
    means = sums / counts[:, None]
    return dict(N=N, d=d, counts=counts, offset=offset, sums_o=sums, means_o=means,
                means=means + offset, basis=basis, sigma_w=scatter / N,
                trace_w=float(within.sum() / N), within=within / counts, decisions=decisions)


def _second_pass(X, codes, K, chunks, name, offset, means, basis, decide, N, progress=None,
                 class_sums=False):
    """The pass over chunks of rows given the class means (relative to `offset`): Σ_W·N in
    `basis` coordinates, the classes' summed squared distances [K], the decisions, and with
    `class_sums` the rows' own class sums (relative to the offset; else None). Chunks in
    flight one per core, summed in chunk order (the same sums as one thread)."""
    d = X.shape[1]
    local = threading.local()
    moved = _moved(offset)

    def one(start, stop):
        rows, y = np.asarray(X[start:stop]), codes[start:stop]
        if getattr(local, "rows", 0) < len(y):  # a worker's buffers, reused chunk after chunk
            local.rows, local.D = len(y), np.empty((len(y), d))
            local.G = np.empty((min(CENTRE_BLOCK, len(y)), d))
        D = local.D[:len(y)]
        _centre(D, rows, y, moved, means, local.G)
        if class_sums:  # Σ(x − offset − μ_y) per class, from the centred rows: no pass more
            own = _class_sums(D, y, K)
        spread = np.einsum("ij,ij->i", D, D)
        if not math.isfinite(float(spread.sum())):  # a row that is not finite, or overflow
            _rows(X, start, stop, name)  # names the first row that is not finite
        P = _project(D, basis)
        del D
        counts = _no_decisions()
        decide(counts, rows, y, np.sqrt(spread), P)
        return (P.T @ P, np.bincount(y, weights=spread, minlength=K), counts,
                own if class_sums else None)

    scatter, within, decisions = 0.0, np.zeros(K), _no_decisions()
    sums = np.zeros((K, d)) if class_sums else None
    for (start, stop), (part, spread, counts, own) in zip(chunks, _in_order(one, chunks)):
        scatter = scatter + part
        within += spread
        for key, value in counts.items():
            decisions[key] += value
        if class_sums:
            sums += own
        if progress:
            progress(N + stop)
    if class_sums:  # back to sums of x − offset: add n_k·μ_k
        sums += np.bincount(codes, minlength=K)[:, None] * means
    return scatter, within, decisions, sums


CENTRE_BLOCK = 64  # rows centred at a time: 64 × d float64 (256 KB at d = 512) stays in cache


def _centre(D, rows, y, offset, means, G):
    """D = (rows − offset) − means[y] in float64, two roundings as written (the offset first:
    x − offset loses nothing to a large common offset; None: no offset), as many rows at a
    time as the scratch G holds (CENTRE_BLOCK): the gathered means never take a chunk's worth
    of memory (peak 50 → 35 MB in the bench), and each block's steps run in cache (20% faster
    on one core; the same on two, which share the memory bandwidth: docs/performance.md)."""
    for start in range(0, len(y), len(G)):
        stop = min(start + len(G), len(y))
        part, near = D[start:stop], G[:stop - start]
        np.copyto(part, rows[start:stop])
        if offset is not None:
            part -= offset
        part -= np.take(means, y[start:stop], axis=0, out=near, mode="clip")


WORKERS = max(1, min(4, os.cpu_count() or 1))  # chunks (or tiles) in flight at once


def _per_worker(budget_bytes):
    return (BUDGET_BYTES if budget_bytes is None else budget_bytes) / WORKERS


def _no_decisions():
    return dict(mismatch=0, mismatch_nobias=0, correct=0, ncc_correct=0, ncc_ties=0, ties=0,
                ties_nobias=0)


def blas_per_worker():
    """A context in which BLAS runs on its share of the cores next to WORKERS workers
    (cpu_count // WORKERS threads). Held through both passes and what lies between them (the
    span basis, the decisions' set-up), not only while chunks are in flight: a product on
    every core wakes BLAS's idle threads, which then spin for a while on the cores the
    workers need (measured: 0.2 core-seconds, 10% of the bench's wall time;
    docs/performance.md)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(max(1, (os.cpu_count() or 1) // WORKERS), user_api="blas")


def _in_order(fn, chunks):
    """fn(start, stop) of each chunk, WORKERS at a time in threads (numpy releases the GIL),
    yielded in chunk order; at most 2·WORKERS results wait, so memory stays bounded. BLAS gets
    the cores divided among the workers meanwhile (one each on up to four cores): a chunk per
    core beats every product on every core, as numpy's element-wise work is single-threaded
    (measured 2× on 2 cores, docs/performance.md)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(WORKERS) as pool, blas_per_worker():
        pending = deque()
        for chunk in chunks:
            pending.append(pool.submit(fn, *chunk))
            if len(pending) >= 2 * WORKERS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def against(X, codes, K, ref, W=None, b=None, chunk_rows=None, name="features",
            budget_bytes=None):
    """One pass over features measured against a reference's statistics `ref` (`accumulate` of
    the training features): Σ_W around the reference class means (in the reference's basis),
    the features' own class sums (relative to the reference offset), and the
    nearest-reference-centre and classifier decisions. `codes` index the reference's classes."""
    N, d = X.shape
    offset, means = ref["offset"], ref["means_o"]
    chunks = _chunks(N, chunk_rows or rows_per_chunk(d, K, _per_worker(budget_bytes)))
    with blas_per_worker():
        decide = Decisions(means, ref["basis"], W, b, offset)
        scatter, _, dec, sums = _second_pass(X, codes, K, chunks, name, offset, means,
                                             ref["basis"], decide, N, class_sums=True)
    return dict(N=N, sigma_w=scatter / N, sums_o=sums,
                counts=np.bincount(codes, minlength=K), decisions=dec)


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
        _check_layer(X, name, len(codes))
        stats[name] = accumulate(X, codes, K, chunk_rows=chunk_rows, name=name,
                                 budget_bytes=budget_bytes)
    if W is not None:
        W, b = _check_classifier(W, b, K, arrays[list(arrays)[-1]].shape[1], list(arrays)[-1])
    return {"file": os.path.abspath(path), "classes": classes, "layers": stats, "W": W, "b": b}


def _screen(scores, bound, lowest):
    """(winner per row, rows whose winner is certain): the winning class by `lowest` (argmin)
    or argmax, certain where its lead over the runner-up exceeds three times the rows' error
    `bound` (two for the two scores, one to spare for float64's own rounding), and never in a
    row with a score that is not finite: a float32 sum that overflowed part-way is ±inf or NaN
    whatever its true value, and the bound says nothing of it (scores are overwritten)."""
    finite = None if np.isfinite(scores).all() else np.isfinite(scores).all(axis=1)
    n = np.arange(len(scores))
    win = np.argmin(scores, axis=1) if lowest else np.argmax(scores, axis=1)
    best = scores[n, win].copy()
    scores[n, win] = np.inf if lowest else -np.inf
    runner_up = scores.min(axis=1) if lowest else scores.max(axis=1)
    sure = np.abs(runner_up - best) > 3.0 * bound
    return win, sure if finite is None else sure & finite


class Decisions:
    """The nearest-class-centre and classifier decisions of chunks of rows, added to a dict of
    counts: nearest class centre against the labels, and with W the classifier's (with
    and without b; logits W(x − offset) + W·offset + b) against both, with ties.

    Every decision is the float64 rule's, reached by screens: a score computed in float32
    with a rigorous bound on its error decides a row when its winner leads by more than three
    times the bound (two scores, one to spare); the rows it cannot vouch for (and every tie) go
    on to the next, and the last is float64, where ties are counted.

    Nearest centre, in the span of the means: with V an orthonormal basis of the centred means
    (`span_basis`), ‖x − μ_k‖² = ‖(x − ḡ)⊥‖² + ‖Vx − Vμ_k‖², the first term the same for every
    class; Vx = V(x − μ_y) + Vμ_y comes from the projection Σ_W is gathered from, so the rule
    costs [rows, r] × [r, K] instead of [rows, d] × [d, K] (all relative to the offset: the
    decision does not depend on it, the cancellation does); screened in float32 (`_nearest`),
    then float64 (`nearest`).

    Logits: first in the span of the means (`span_logits`: W = WVᵀV + W⊥, the product in the
    span from the same projection, W⊥'s part bounded — near collapse, NC3, W is close to the
    span and this decides almost every row at r/d of the cost; when a chunk's rows mostly fall
    through, later chunks skip it). Then in float32 from the rows as given (`_screened`;
    float32 features are not converted for it), the bound for a dot product of length d of
    float32-rounded vectors: ≤ 2(d + 2)·eps₃₂·‖x‖‖w‖, Higham's γ_d plus the roundings, with
    ‖x‖ ≤ ‖x − μ_y‖ + ‖μ_y − offset‖ + ‖offset‖; the bias adds eps₃₂ of its size. Below
    float32's normal range every rounding errs by up to 2⁻¹⁵⁰ absolute instead, which every
    bound adds (features of size 1e-22 have products in the subnormal range). Then float64
    (`logits`): the counts are those of float64 throughout."""

    def __init__(self, means, basis=None, W=None, b=None, offset=None):
        eps, tiny = EPS32, SUBNORMAL32
        self.means, self.basis, self.W, self.b = means, basis, W, b
        self.offset = np.zeros(means.shape[1]) if offset is None else offset
        self.centres = means if basis is None else means @ basis.T  # Vμ_k  [K, r]
        self.sq_centres = np.sum(self.centres * self.centres, axis=1)
        self.twice = -2.0 * self.centres  # exact: q·(−2μ_k) is −2(q·μ_k) bit for bit, no pass
        self.mean_norms = np.sqrt(np.sum(means * means, axis=1))
        d, r = means.shape[1], self.centres.shape[1]
        with np.errstate(over="ignore"):  # beyond float32: inf, and those rows are redone
            self.centres32 = self.centres.astype(np.float32)
            self.twice32 = self.twice.astype(np.float32)
            self.sq32 = self.sq_centres.astype(np.float32)
        # the nearest centre's float32 bound (`_nearest`), subnormal terms included
        self.centre_norms = np.sqrt(self.sq_centres)
        self.centre_scale = float(self.centre_norms.max()) * (1.0 + 1e-6)
        self.ncc_gamma = (r + 6) * eps
        self.ncc_const = (eps * self.centre_scale ** 2 + 4.0 * (r + 2) * tiny
                          + 4.0 * np.sqrt(r) * tiny * self.centre_scale)
        self.ncc_tiny = 2.0 * np.sqrt(r) * tiny
        if W is None:
            return
        # the logits' float32 bound on all d coordinates (`_screened`): below float32's normal
        # range each rounding (of x, w, a product, b, the sum with b) errs by 2⁻¹⁵⁰ absolute
        self.shift = W @ self.offset
        with np.errstate(over="ignore"):  # beyond float32: inf, and those rows are redone
            self.W32 = W.astype(np.float32)
            self.b32 = None if b is None else b.astype(np.float32)
        self.w_scale = float(np.linalg.norm(W, axis=1).max())
        self.gamma = 2.0 * (d + 2) * eps
        self.w_const = ((0.0 if b is None else 2.0 * eps * float(np.abs(b).max()))
                        + 2.0 * (d + 2) * tiny)
        self.w_tiny = np.sqrt(d) * tiny  # per unit of ‖x‖ + ‖w‖
        self.offset_norm = float(np.linalg.norm(self.offset))
        self.through_span = basis is not None  # screen in the means' span first (below)
        if self.through_span:
            self._span_classifier(W, b, basis, r)

    def _span_classifier(self, W, b, basis, r):
        """The classifier in the means' span: A = WVᵀ [K, r], so that W(x − offset) = Aq +
        W⊥(x − offset) with q = V(x − offset), and the part of W⊥(x − offset) that differs
        between classes is at most R·‖(x − offset)⊥‖ with R = max_k ‖W⊥_k − mean_j W⊥_j‖ and
        ‖(x − offset)⊥‖ ≤ ‖x − μ_y‖ + ‖μ_y⊥‖ (norms as differences of squares, with a margin
        above their float64 error: no [K, d] array more)."""
        eps, tiny, d = EPS32, SUBNORMAL32, basis.shape[1]
        # the squares' float64 errors, with V·A's and V's own: at most margin·‖A_k‖²
        margin = 4.0 * (np.sqrt(r) + 1.0) * (d + 2) * float(np.finfo(np.float64).eps)

        def outside(A, inside):  # ‖A_k⊥‖ from ‖A_k‖² − ‖VA_k‖², an upper bound
            full = np.sum(A * A, axis=1)
            return np.sqrt(np.maximum(full - np.sum(inside * inside, axis=1), 0.0) + margin * full)

        spanned = W @ basis.T
        w_mean, a_mean = W.mean(axis=0), spanned.mean(axis=0)
        self.residual = max(float(outside(W[k:k + 1024] - w_mean, spanned[k:k + 1024] - a_mean)
                                  .max()) for k in range(0, len(W), 1024))  # no [K, d] copy
        self.perp = outside(self.means, self.centres)
        with np.errstate(over="ignore"):
            self.A32 = spanned.astype(np.float32)
            self.shift32 = self.shift.astype(np.float32)
        constant = float(np.abs(self.shift).max()) + (0.0 if b is None else float(np.abs(b).max()))
        self.span_gamma = (r + 6) * eps * self.w_scale
        self.span_const = (2.0 * eps * constant + 4.0 * (r + 4) * tiny
                           + 2.0 * np.sqrt(r) * tiny * self.w_scale)

    def relative(self, rows):
        """Rows minus the offset, in float64."""
        return np.subtract(rows, self.offset, dtype=np.float64)

    def __call__(self, counts, rows, y, spread, projected=None):
        """Add the decisions of `rows` (as given, float32 or float64) with labels y; `spread`
        [rows] ‖x − μ_y‖ (with the labels' mean norms, a bound on ‖x‖ for the error bounds);
        `projected` [rows, r] the rows' V(x − μ_y) (needed with a basis). Values beyond float32's
        range screen as inf or NaN: those rows are simply decided in float64."""
        with np.errstate(over="ignore", invalid="ignore"):
            ncc, q32 = self._nearest(counts, rows, y, spread, projected)
            if self.W is None:
                return
            norms = spread + self.mean_norms[y] + self.offset_norm
            todo = None  # the rows the span's screen leaves (None: every row)
            if self.through_span:
                plain, full, sure = self._spanned(q32, y, spread)
                todo = np.flatnonzero(~sure)
                if 2 * todo.size > len(y):  # W far from the means' span: the full product
                    self.through_span = False  # from the next chunk on
            if todo is None:
                plain, full, sure = self._screened(rows, norms)
                unsure = np.flatnonzero(~sure)
            elif todo.size:
                plain[todo], full[todo], sure = self._screened(rows[todo], norms[todo])
                unsure = todo[~sure]
            else:
                unsure = todo
        if unsure.size:
            plain[unsure], full[unsure] = self.logits(counts, self.relative(rows[unsure]))
        self._count(counts, plain, full, ncc, y)

    def _nearest(self, counts, rows, y, spread, projected):
        """The nearest centre of each row, screened in float32 like the logits: q = Vx (all
        relative to the offset), scores ‖c_k‖² − 2q·c_k with c_k = Vμ_k, each within
        eps₃₂·((r + 6)·C·Q + C²) of the exact score (C = max‖c_k‖, Q = ‖x − μ_y‖ + 2‖c_y‖ ≥
        ‖q‖ + ‖c_y‖; the product's γ_r·2CQ, 3·eps₃₂·CQ for rounding c_y, V(x − μ_y) and their
        sum, eps₃₂·(C² + 2CQ)/2 for ‖c_k‖² and the last sum; plus the subnormal terms); rows
        whose winner leads by more than three times that are decided, the others (and every
        tie) decided again by `nearest` in float64."""
        if self.basis is None:
            q = self.relative(rows)
            q32 = q.astype(np.float32)
        else:  # V(x − μ_y) and Vμ_y rounded to float32, then added
            q32 = projected.astype(np.float32, order="C")
            q32 += np.take(self.centres32, y, axis=0)
        scores = q32 @ self.twice32.T
        scores += self.sq32[None, :]
        Q = (spread + 2.0 * self.centre_norms[y]) * (1.0 + 1e-6)
        bound = self.ncc_gamma * self.centre_scale * Q + self.ncc_const + self.ncc_tiny * Q
        ncc, sure = _screen(scores, bound, True)
        unsure = np.flatnonzero(~sure)
        counts["ncc_correct"] += int(np.count_nonzero(ncc[sure] == y[sure]))
        if unsure.size:
            again = (q[unsure] if self.basis is None
                     else self.centres[y[unsure]] + projected[unsure])
            ncc[unsure] = self.nearest(counts, again, y[unsure])
        return ncc, q32

    def nearest(self, counts, q, y):
        """The nearest centre of rows `q` (in the centres' coordinates), counted, with ties."""
        distance = q @ self.twice.T  # ‖μ_k‖² − 2q·μ_k: ‖q‖² is the same for every class
        distance += self.sq_centres[None, :]
        ncc = np.argmin(distance, axis=1)
        counts["ncc_correct"] += int(np.count_nonzero(ncc == y))
        counts["ncc_ties"] += _ties(distance, ncc)
        return ncc

    def span_logits(self, q32, y, spread):
        """(logits [rows, K] without b, their error bound [rows]) in the means' span: Aq +
        W·offset in float32, [rows, r] × [r, K] instead of [rows, d] × [d, K]. Each is within
        the bound of the exact logit less a term the same for every class (w̄⊥·(x − offset)):
        the product and roundings as `_nearest`'s with ‖a_k‖ ≤ ‖w_k‖, the constants'
        roundings, and R·(‖x − μ_y‖ + ‖μ_y⊥‖) for the rest of the part outside the span."""
        logits = q32 @ self.A32.T
        logits += self.shift32[None, :]
        Q = (spread + 2.0 * self.centre_norms[y]) * (1.0 + 1e-6)
        return logits, (self.span_gamma * Q + self.span_const + self.ncc_tiny * Q
                        + self.residual * (spread + self.perp[y]) * (1.0 + 1e-6))

    def _spanned(self, q32, y, spread):
        """(argmax without b, with b, which rows are certain) from `span_logits`: near
        collapse (W close to the means' span, NC3) they decide almost every row."""
        return self._two_screens(*self.span_logits(q32, y, spread))

    def _screened(self, rows, norms):
        """(argmax without b, with b, which rows the float32 bound vouches for)."""
        logits = rows.astype(np.float32, copy=False) @ self.W32.T
        bound = (self.gamma * norms * (1.0 + 1e-6) * self.w_scale + self.w_const
                 + self.w_tiny * (norms + self.w_scale))
        return self._two_screens(logits, bound)

    def _two_screens(self, logits, bound):
        """(argmax without b, with b, rows certain for both) of float32 logits within `bound`."""
        with_b = None if self.b32 is None else logits + self.b32[None, :]
        plain, sure = _screen(logits, bound, False)
        if with_b is None:
            return plain, plain, sure
        full, sure_full = _screen(with_b, bound, False)
        return plain, full, sure & sure_full

    def logits(self, counts, block):
        """(argmax without b, with b) of rows minus the offset (`block`) in float64: logits
        W(x − offset) + W·offset + b, their ties counted."""
        logits = block @ self.W.T
        logits += self.shift[None, :]
        plain = np.argmax(logits, axis=1)
        counts["ties_nobias"] += _ties(logits, plain)
        if self.b is None:
            full = plain
        else:
            logits += self.b[None, :]
            full = np.argmax(logits, axis=1)
        counts["ties"] += _ties(logits, full)
        return plain, full

    @staticmethod
    def _count(counts, plain, full, ncc, y):
        counts["mismatch"] += int(np.count_nonzero(full != ncc))
        counts["mismatch_nobias"] += int(np.count_nonzero(plain != ncc))
        counts["correct"] += int(np.count_nonzero(full == y))

    def exact(self, counts, rows, y):
        """Every decision of rows in float64 by the plain rules (the nearest centre in all d
        coordinates): what the screened and projected decisions must equal."""
        block = self.relative(rows)
        ncc = Decisions(self.means, None).nearest(counts, block, y)
        if self.W is not None:
            plain, full = self.logits(counts, block)
            self._count(counts, plain, full, ncc, y)


def _ties(scores, chosen):
    """Rows whose chosen score is attained by another class too (an argmax/argmin tie: W = 0,
    coincident class means), where a decision is arbitrary."""
    best = scores[np.arange(len(chosen)), chosen]
    equal = scores == best[:, None]
    if np.count_nonzero(equal) == len(chosen):  # no ties (the common case): one count
        return 0
    return int(np.count_nonzero(np.count_nonzero(equal, axis=1) > 1))


# --- the suite from the accumulators ----------------------------------------------------------

def _std(x, convention):
    return float(np.std(x, ddof=1 if convention == "unbiased" else 0))


def _ratio(num, den):
    return num / den if den > 0 and math.isfinite(num) else math.nan


def numerical_rank(s, rtol=RANK_TOL):
    """The number of singular values `s` (descending) above rtol × the largest."""
    return int(np.sum(s > rtol * s[0])) if s.size and s[0] > 0 else 0


def _svd(A):
    """(s, Vt) of A [K, d] (thin): the singular values and right singular vectors."""
    _, s, Vt = np.linalg.svd(A, full_matrices=False)
    return s, Vt


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


def tile_rows(K, budget_bytes=None):
    """Rows of a [rows, K] tile of class pairs whose float64 temporaries (about ten) fit in the
    budget: nothing K×K is ever held."""
    budget = BUDGET_BYTES if budget_bytes is None else budget_bytes
    return max(1, min(K, int(budget // (80 * K))))


class Moments:
    """Count, mean and sum of squared deviations of values seen a part at a time, merged by
    Chan, Golub & LeVeque's rule: stable when the spread is tiny next to the mean (E[x²] − E[x]²
    would cancel, e.g. the cosines of collapsed means)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, values):
        n = values.size
        if n == 0:
            return
        mean = float(np.mean(values))
        centred = (values - mean).ravel()
        self.merge(n, mean, float(np.dot(centred, centred)))

    def merge(self, n, mean, m2):
        """Merge the moments (count, mean, centred sum of squares) of more values."""
        if n == 0:
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

    def var(self, ddof=0, repeat=1):
        """The variance, each value counted `repeat` times (pairs as ordered pairs: 2)."""
        return repeat * self.m2 / (repeat * self.n - ddof)


def _sum_squares(a):
    flat = a.ravel()
    return float(np.dot(flat, flat))


def _parts(tile, i0):
    """The strictly upper pairs (i < j) of a tile of rows i0..i0+T against columns i0..K, as
    (values, i, j): the square's strict upper triangle (flat, with index arrays) and the
    rectangle right of it (2-D, with broadcastable index columns/rows): the class vectors
    a[i], a[j] broadcast against the values in both."""
    T, width = tile.shape
    r, c = np.triu_indices(T, 1)
    yield tile[r, c], i0 + r, i0 + c
    if width > T:
        yield (tile[:, T:], np.arange(i0, i0 + T)[:, None],
               np.arange(i0 + T, i0 + width)[None, :])


def _explicit_sq_distances(A, rows, cols, budget_bytes):
    """‖A_i − A_j‖² of the given pairs by subtraction (exact where the Gram expansion
    ‖a‖² + ‖b‖² − 2a·b cancels), a budget's worth of pairs at a time."""
    step = max(1, int((BUDGET_BYTES if budget_bytes is None else budget_bytes)
                      // (16 * A.shape[1])))
    out = np.empty(len(rows))
    for s in range(0, len(rows), step):
        diff = A[rows[s:s + step]] - A[cols[s:s + step]]
        out[s:s + step] = np.einsum("ij,ij->i", diff, diff)
    return out


CLOSE = 1e-2  # a Gram-expanded ‖a − b‖² below CLOSE·(‖a‖² + ‖b‖²) is recomputed by subtraction


def _sq_distances(A, sq, gram, i, j, budget_bytes):
    """‖A_i − A_j‖² for a part of a Gram tile (`_parts`) by ‖a_i‖² + ‖a_j‖² − 2 a_i·a_j, the
    pairs close enough for that to cancel recomputed by subtraction."""
    both = sq[i] + sq[j]
    dist2 = gram * -2.0
    dist2 += both
    close = dist2 < CLOSE * both
    if close.any():
        rows, cols = np.broadcast_to(i, dist2.shape)[close], np.broadcast_to(j, dist2.shape)[close]
        dist2[close] = _explicit_sq_distances(A, rows, cols, budget_bytes)
    return dist2


def _unit_sq_distances(U, cos, i, j, budget_bytes):
    """‖u_i − u_j‖² = 2 − 2cos of unit rows from their cosines (`_sq_distances` with ‖u‖ = 1:
    pairs with cos > 1 − CLOSE recomputed by subtraction); `cos` is overwritten."""
    close = cos > 1.0 - CLOSE
    dist2 = cos
    dist2 *= -2.0
    dist2 += 2.0
    if close.any():
        rows, cols = np.broadcast_to(i, dist2.shape)[close], np.broadcast_to(j, dist2.shape)[close]
        dist2[close] = _explicit_sq_distances(U, rows, cols, budget_bytes)
    return dist2


def _norm_of_product(A, s, Vt):
    """‖A Bᵀ‖_F for B = U diag(s) Vt (thin SVD): ‖A Vtᵀ diag(s)‖_F — no [K, K] product."""
    return float(np.linalg.norm((A @ Vt.T) * s[None, :]))


def _frame_ideal(K, kind):
    """(diagonal, off-diagonal) of the unit-norm ideal: the simplex ETF (I − 11ᵀ/K)/√(K−1) or
    the orthogonal frame I/√K."""
    if kind == "etf":
        return (1.0 - 1.0 / K) / math.sqrt(K - 1), -1.0 / (K * math.sqrt(K - 1))
    return 1.0 / math.sqrt(K), 0.0


class _Frame:
    """‖G/‖G‖ − ideal‖_F accumulated over tiles of G, its norm known in advance (from singular
    values): one pass, each term (G_ij/‖G‖ − ideal_ij)² computed as a difference — no
    2 − 2⟨G, ideal⟩/‖G‖ cancellation near the ideal."""

    def __init__(self, K, kind, norm, diag=None, off=None):
        self.diag, self.off = (diag, off) if kind == "" else _frame_ideal(K, kind)
        self.norm, self.total = norm, 0.0

    def add_symmetric(self, tile, i0):
        """A tile of rows i0.. against columns i0.. of a symmetric G: its diagonal, and twice
        its strictly upper part (which stands for the lower one). Each term as
        (G_ij − ideal_ij·‖G‖)²/‖G‖²: one subtraction pass and one dot product."""
        if self.norm > 0:
            T = tile.shape[0]
            scale = self.norm ** 2
            self.total += _sum_squares(np.diagonal(tile[:, :T]) - self.diag * self.norm) / scale
            for values, _, _ in _parts(tile, i0):
                self.total += 2 * _sum_squares(values - self.off * self.norm) / scale

    def add(self, tile, i0):
        """A tile of rows i0.. against every column."""
        if self.norm > 0:
            R = tile - self.off * self.norm
            T = tile.shape[0]
            R[np.arange(T), i0 + np.arange(T)] += (self.off - self.diag) * self.norm
            self.total += _sum_squares(R) / self.norm ** 2

    def value(self):
        return math.sqrt(self.total) if self.norm > 0 else math.nan


def _cosine_stats(gram, i, j, inverse_norms, K, moments):
    """Add a part's cosines to `moments`; return Σ|cos + 1/(K−1)| and the cosines."""
    cos = gram * inverse_norms[i]
    cos *= inverse_norms[j]
    moments.add(cos)
    return float(np.sum(np.abs(cos + 1.0 / (K - 1)))), cos


def pair_measures(M, g, W=None, std="population", budget_bytes=None, svd_M=None, svd_mu=None,
                  within=None):
    """The measures over pairs of classes and the frame distances (docs/theory.md §4), from
    tiles of rows of the K×K Grams: nothing [K, K] (or [K·(K−1)/2, d]) is held, and the tiles
    fit in the budget. M [K, d] centred means, g [d] the global mean (raw means μ = M + g),
    W [K, d] the classifier, `within` [K] the classes' mean squared distances to their means.
    Returns (values, undefined)."""
    K, d = M.shape
    s_M, Vt_M = svd_M if svd_M is not None else _svd(M)
    s_mu, Vt_mu = svd_mu if svd_mu is not None else _svd(M + g)
    norms = np.linalg.norm(M, axis=1)
    sq = norms ** 2
    inverse = 1.0 / np.where(norms > 0, norms, 1.0)
    Mg, gg = M @ g, float(g @ g)
    frames = {"nc2_etf_H": _Frame(K, "etf", float(np.sqrt(np.sum(s_M ** 4)))),
              "nc2_of_H": _Frame(K, "of", float(np.sqrt(np.sum(s_mu ** 4))))}
    has_direction = bool(np.all(norms > 0))
    if W is not None:
        s_W = _svd(W)[0]
        frames.update({
            "nc2_etf_W": _Frame(K, "etf", float(np.sqrt(np.sum(s_W ** 4)))),
            "nc2_of_W": _Frame(K, "of", float(np.sqrt(np.sum(s_W ** 4)))),
            "nc3_etf": _Frame(K, "etf", _norm_of_product(W, s_M, Vt_M)),
            "nc3_of": _Frame(K, "of", _norm_of_product(W, s_mu, Vt_mu))})
        w_norms = np.linalg.norm(W, axis=1)
        w_inverse = 1.0 / np.where(w_norms > 0, w_norms, 1.0)
        Wg = W @ g
    unit = M * inverse[:, None]
    share = _per_worker(budget_bytes)  # tiles in flight, one per core

    def tile(i0, i1):
        """One tile's partial sums: fresh frames, moments and sums, merged below in order."""
        part = {name: _Frame(K, "", frame.norm, frame.diag, frame.off)
                for name, frame in frames.items()}
        moments = {key: Moments() for key in ("cos_H", "hyper", "hyper_log", "cos_W")}
        sums = dict(angle_H=0.0, angle_W=0.0, cdnv=0.0, coincide=False, same_direction=False)
        C = M[i0:i1] @ M[i0:].T  # centred Gram, rows i0:i1, columns i0..
        part["nc2_etf_H"].add_symmetric(C, i0)
        part["nc2_of_H"].add_symmetric(C + Mg[i0:i1, None] + Mg[None, i0:] + gg, i0)
        for gram, i, j in _parts(C, i0):
            dist2 = _sq_distances(M, sq, gram, i, j, share)
            sums["coincide"] = sums["coincide"] or not np.all(dist2 > 0)
            if not sums["coincide"]:
                sums["cdnv"] += float(np.sum((within[i] + within[j]) / (2.0 * dist2)))
            if has_direction:
                angle, cos = _cosine_stats(gram, i, j, inverse, K, moments["cos_H"])
                sums["angle_H"] += angle
                dist = np.sqrt(_unit_sq_distances(unit, cos, i, j, share))
                moments["hyper"].add(dist)
                if np.all(dist > 0):
                    moments["hyper_log"].add(np.log(dist))  # the variance of log(1/dist)
                else:
                    sums["same_direction"] = True
        if W is not None:
            WW = W[i0:i1] @ W[i0:].T
            part["nc2_etf_W"].add_symmetric(WW, i0)
            part["nc2_of_W"].add_symmetric(WW, i0)
            WM = W[i0:i1] @ M.T  # every column: W Mᵀ is not symmetric
            part["nc3_etf"].add(WM, i0)
            WM += Wg[i0:i1, None]  # W μᵀ
            part["nc3_of"].add(WM, i0)
            if np.all(w_norms > 0):
                for gram, i, j in _parts(WW, i0):
                    sums["angle_W"] += _cosine_stats(gram, i, j, w_inverse, K,
                                                     moments["cos_W"])[0]
        return part, moments, sums

    T = tile_rows(K, share)
    tiles = [(i0, min(K, i0 + T)) for i0 in range(0, K, T)]
    cos_H, hyper, hyper_log, cos_W = Moments(), Moments(), Moments(), Moments()
    angle_H = angle_W = cdnv = 0.0
    coincide = same_direction = False
    for part, moments, sums in _in_order(tile, tiles):  # in tile order: deterministic
        for name, frame in part.items():
            frames[name].total += frame.total
        for mine, theirs in ((cos_H, "cos_H"), (hyper, "hyper"), (hyper_log, "hyper_log"),
                             (cos_W, "cos_W")):
            mine.merge(moments[theirs].n, moments[theirs].mean, moments[theirs].m2)
        angle_H, angle_W = angle_H + sums["angle_H"], angle_W + sums["angle_W"]
        coincide = coincide or sums["coincide"]
        same_direction = same_direction or sums["same_direction"]
        cdnv += sums["cdnv"]
    pairs = K * (K - 1) // 2
    ddof = 1 if std == "unbiased" else 0
    out = {name: frame.value() for name, frame in frames.items()}
    undefined = {}
    out["nc1_cdnv"] = math.nan if coincide else cdnv / pairs
    if coincide:
        undefined["nc1_cdnv"] = "two class means coincide"
    if has_direction:
        out["equiangularity_H"] = math.sqrt(cos_H.var(ddof, repeat=2))
        out["max_angle_H"] = angle_H / pairs
        out["hyperspherical_distance"] = hyper.var()
        out["hyperspherical_log"] = math.nan if same_direction else hyper_log.var()
        if same_direction:
            undefined["hyperspherical_log"] = ("two centred class means point the same way "
                                               "(a distance of 0 has no logarithm)")
    else:
        for key in ("equiangularity_H", "max_angle_H", "hyperspherical_distance",
                    "hyperspherical_log"):
            out[key] = math.nan
            undefined[key] = "a centred class mean is zero (no direction)"
    if W is not None:
        if np.all(w_norms > 0):
            out["equiangularity_W"] = math.sqrt(cos_W.var(ddof, repeat=2))
            out["max_angle_W"] = angle_W / pairs
        else:
            out["equiangularity_W"] = out["max_angle_W"] = math.nan
            undefined["equiangularity_W"] = undefined["max_angle_W"] = "a classifier row is zero"
    return out, undefined


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
            if rows:
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
    W, b = _check_classifier(W, b, K, layers[classifier_layer].shape[1], classifier_layer)
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
            "has_bias": b is not None, "layers": result}


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


MEMORY_FRACTION = 0.8  # refuse what needs more than this fraction of the host's memory


def working_bytes(N, d, K, chunk_rows, budget_bytes=None):
    """Estimated peak bytes of measuring one layer (float64), beyond the features themselves:
    the K×d means, their copies and classifier products, the thin SVDs of the means ([K, r],
    [r, d], r = min(K, d)), Σ_W in the means' span [r, r], one chunk of rows with its K
    decisions (four copies), and one tile of class pairs (`tile_rows`)."""
    rows, r = min(N, chunk_rows), min(K, d)
    tile = 80 * tile_rows(K, budget_bytes) * K
    return 8 * (8 * K * d + 4 * K * r + 3 * r * d + 2 * r * r + 4 * rows * (d + K)) + tile


def check_memory(N, d, K, chunk_rows, name="features", budget_bytes=None):
    """ValueError, before anything is allocated, when measuring a layer needs more than
    MEMORY_FRACTION of this machine's memory (the estimate and the memory named)."""
    need = working_bytes(N, d, K, chunk_rows, budget_bytes)
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > MEMORY_FRACTION * have:
        raise ValueError(f"measuring layer {name!r} (N={N:,}, d={d:,}, K={K:,}) needs about "
                         f"{need / 2 ** 30:,.1f} GiB (the class means and their SVDs, a chunk of "
                         f"{min(N, chunk_rows):,} rows, a tile of class pairs) but the machine "
                         f"has {have / 2 ** 30:,.1f} GiB of host memory: lower --budget or "
                         f"--chunk-rows, or measure fewer dimensions or classes")


def measure_arrays(features, labels, W=None, b=None, **options):
    """One layer: `measure_layers({"features": features}, labels, W, b, **options)`."""
    return measure_layers({"features": features}, labels, W, b, **options)


class Unreadable(ValueError):
    """A file or member that cannot be read as it claims (its message is complete)."""


def _npy_header(fh):
    """(shape, fortran order, dtype) of the .npy array at fh's position; fh left at its data."""
    version = np.lib.format.read_magic(fh)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    return read(fh)


def _mappable(path, what, dtype, shape, fortran, available):
    """Refuse to memory-map an array whose dtype holds objects or whose bytes are fewer than its
    header says (a truncated member would read the next one's bytes as features)."""
    if dtype.hasobject:
        raise Unreadable(f"{what} in {path} holds Python objects (dtype {dtype}), not numbers")
    need = math.prod(shape) * dtype.itemsize
    if need > available:
        raise Unreadable(f"{what} in {path} is truncated or corrupt: its header says shape "
                         f"{tuple(shape)} of {dtype} ({need:,} bytes) but it holds {available:,}")


def _npz_member(path, key, mmap):
    """One array of an .npz: a read-only memory map when `mmap` and the member is stored
    uncompressed (its dtype and byte count checked against its header first), else loaded."""
    if mmap:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(f"{key}.npy")
            if info.compress_type == zipfile.ZIP_STORED:
                with open(path, "rb") as fh:
                    fh.seek(info.header_offset)
                    local = fh.read(30)
                    name_len, extra_len = (int.from_bytes(local[26:28], "little"),
                                           int.from_bytes(local[28:30], "little"))
                    start = info.header_offset + 30 + name_len + extra_len
                    fh.seek(start)
                    shape, fortran, dtype = _npy_header(fh)
                    offset = fh.tell()
                _mappable(path, f"{key}.npy", dtype, shape, fortran,
                          info.file_size - (offset - start))
                return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset,
                                 order="F" if fortran else "C")
    with np.load(path, allow_pickle=False) as data:
        return data[key]


def _load(path, mmap):
    if not path.endswith(".npy"):
        raise ValueError(f"{path}: expected a .npy file")
    try:
        if mmap:  # check the header against the file's size before mapping it
            with open(path, "rb") as fh:
                shape, fortran, dtype = _npy_header(fh)
                header = fh.tell()
            _mappable(path, "the array", dtype, shape, fortran, os.path.getsize(path) - header)
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Unreadable:
        raise
    except (OSError, EOFError, ValueError) as err:
        raise Unreadable(f"{path} is not a readable .npy file: {err}") from None


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
            for name in ("labels", "W", "b"):
                if name in keys and name not in extra:
                    extra[name] = _npz_member(path, name, False)
            candidates = [k for k in keys if k not in RESERVED]
            arrays = {k: _npz_member(path, k, stream) for k in candidates}
        except Unreadable:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
            raise Unreadable(f"{path} is not a readable .npz file: {e}") from None
        if not layers:  # by default every 2-D array is a layer; other keys are not features
            arrays = {k: v for k, v in arrays.items() if np.ndim(v) == 2}
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


def write(result, out_dir):
    """out_dir/measure.json, atomically (NaN written as null)."""
    write_json(os.path.join(out_dir, "measure.json"), result)


REPORT_ORDER = ("nc1", "nc1_unnormalised", "nc1_quotient", "nc1_cdnv", "nc2_etf_H", "nc2_of_H",
                "equinorm_H", "equiangularity_H", "max_angle_H", "hyperspherical_distance",
                "hyperspherical_log", "rank_means", "rank_centred_means", "ncc_accuracy",
                "nc2_etf_W", "nc2_of_W", "nc3_etf", "nc3_of", "self_duality", "uniform_duality",
                "equinorm_W", "equiangularity_W", "max_angle_W", "nc4_mismatch",
                "nc4_mismatch_nobias", "accuracy", "bias_global_mean", "nc1_reference",
                "mean_shift", "ncc_accuracy_reference", "nc4_mismatch_reference",
                "accuracy_reference")


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


__all__ = ["measure_layers", "measure_arrays", "measure_file", "measure_pooled", "load_file",
           "accumulate", "suite", "encode_labels", "write", "write_csv", "csv_rows",
           "format_report", "rows_per_chunk", "Shards", "GLOBAL_MEANS", "STDS"]


CSV_COLUMNS = ("file", "layer", "N", "K", "d") + REPORT_ORDER


def csv_rows(results):
    """One row per (file, layer) of measure results: the file, the layer, N, K, d and every
    measurement in REPORT_ORDER (empty where undefined or not measured)."""
    rows = []
    for result in results:
        source = result.get("source", {})
        file = source.get("file") or "+".join(os.path.basename(f) for f in source.get("files", []))
        for layer, values in result["layers"].items():
            row = {"file": file, "layer": layer, "N": result["N"], "K": result["K"],
                   "d": values["d"]}
            row.update({k: values.get(k) for k in REPORT_ORDER})
            rows.append(row)
    return rows


def write_csv(results, out_dir):
    """out_dir/measure.csv (one row per file and layer), atomically."""
    import csv

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(results):
        writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                         for k, v in row.items()})
    data = text.getvalue().encode()
    atomic_write(os.path.join(out_dir, "measure.csv"), lambda fh: fh.write(data))
