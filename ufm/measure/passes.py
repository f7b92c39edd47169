"""The two passes over chunks of rows (float64 accumulators), their planning within a memory
budget, the worker threads, and the statistics they leave (docs/theory.md §4)."""

import math
import os
import threading

import numpy as np

from ufm.measure.screens import CLASS_BLOCK, Decisions


ENGINES = ("numpy", "jax")
BUDGET_BYTES = 64 * 2 ** 20  # working set of the chunks of rows in flight, and of a tile of class pairs


# --- the two passes ---------------------------------------------------------------------------

def rows_per_chunk(d, K, budget_bytes=None, engine="numpy"):
    """Rows whose working copies (the rows as read, their centred float64 version and the
    gathered class means, the projection, and a block of the nearest-centre distances and the
    logits: [rows, min(K, CLASS_BLOCK)]) fit in `budget_bytes` (default BUDGET_BYTES): peak
    memory is set by the budget, not by N. Scoring the classes a block at a time keeps the
    chunks hundreds of rows long at any K, and the products [rows, r] × [r, classes] efficient
    (at K = 50,257 whole rows of scores made chunks of 27 rows, and the products ran at 40% of
    their speed: docs/performance.md). The JAX engine scores every class at once: [rows, K]."""
    budget = BUDGET_BYTES if budget_bytes is None else budget_bytes
    scored = K if engine == "jax" else min(K, CLASS_BLOCK)
    return max(1, int(budget // (8 * (4 * d + 3 * scored))))


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


def plan(X, codes, K, chunk_rows=None, name="features", budget_bytes=None, engine="numpy"):
    """(chunks, counts [K], offset [d], share): the chunks of rows within the budget (`share`
    bytes per chunk in flight: the whole budget for the JAX engine, a worker's share here), the
    class counts, and the offset the passes move every row by (`_offset`)."""
    N, d = X.shape
    share = budget_bytes if engine == "jax" else _per_worker(budget_bytes)  # chunks in flight
    chunks = _chunks(N, chunk_rows or rows_per_chunk(d, K, share, engine))
    counts = np.bincount(codes, minlength=K).astype(np.int64)
    return chunks, counts, _offset(X, *chunks[0], name), share


def two_passes(X, codes, K, W, b, chunks, counts, offset, share, chunk_rows=None,
               name="features", progress=None):
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
    and without b against the nearest class centre, and correct classifier decisions. (The JAX
    engine, ufm/measure/jax_engine.py, is a second implementation of these passes.)
    """
    N, d = X.shape
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


def statistics(counts, offset, sums, basis, scatter, within, decisions, means=None):
    """`accumulate`'s dict from what the two passes gathered (either engine): class counts,
    the offset, class sums relative to it, the span basis, Σ_W·N in it, the classes' summed
    squared distances and the decision counts; `means` the class means relative to the offset
    when the caller holds them already (sums / counts, computed so; the sums are then read only
    for their total, and may keep zero rows for classes no row named). With a zero offset the
    raw means are those very means: no K × d array more."""
    N, d = int(counts.sum()), sums.shape[1]
    means = sums / counts[:, None] if means is None else means
    return dict(N=N, d=d, counts=counts, offset=offset, sums_o=sums, means_o=means,
                means=means + offset if np.any(offset) else means, basis=basis,
                sigma_w=scatter / N,
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


def tile_rows(K, budget_bytes=None):
    """Rows of a [rows, K] tile of class pairs whose float64 temporaries (about ten) fit in the
    budget: nothing K×K is ever held."""
    budget = BUDGET_BYTES if budget_bytes is None else budget_bytes
    return max(1, min(K, int(budget // (80 * K))))


MEMORY_FRACTION = 0.8  # refuse what needs more than this fraction of the host's memory


def working_bytes(N, d, K, chunk_rows, budget_bytes=None):
    """Estimated peak bytes of measuring one layer (float64), beyond the features themselves:
    the K×d means, their copies and classifier products, the thin SVDs of the means ([K, r],
    [r, d], r = min(K, d)), Σ_W in the means' span [r, r], one chunk of rows with its K
    decisions (four copies of a block of classes), and one tile of class pairs (`tile_rows`)."""
    rows, r = min(N, chunk_rows), min(K, d)
    tile = 80 * tile_rows(K, budget_bytes) * K
    return (8 * (8 * K * d + 4 * K * r + 3 * r * d + 2 * r * r
                 + 4 * rows * (d + min(K, CLASS_BLOCK))) + tile)


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
