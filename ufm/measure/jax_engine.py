"""`ufm measure --engine jax`: the two passes of `ufm.measure.accumulate` with JAX on its default
device — a GPU or TPU when one is present — with float64 accumulators (docs/theory.md §4).

The same statistics as the numpy engine, from the same definitions: rows moved by the same
offset, class sums, Σ_W in the span of the class means, the classes' squared distances, and the
nearest-centre and classifier decisions with their ties — all in float64 on the device (no
float32 screen: an accelerator's float64 matrix products are what this engine is for). Chunks
are padded to one shape (one compiled program per layer) and sent to the device one after
another; results stay there until the end, so reading the next chunk overlaps the device's work.
float64 is switched on only inside (JAX's scoped `enable_x64`), never for the caller.

Differences from the numpy engine, by construction: sums are taken in another order (results
agree to ~1e-12, tested), and on a GPU class sums are scattered with atomics, so classes with
identical rows need not get bit-identical means (exact ties between coincident means are then
not guaranteed to be found).
"""
import functools

import numpy as np

import jax
import jax.numpy as jnp

from ufm import linalg

DECISIONS = ("mismatch", "mismatch_nobias", "correct", "ncc_correct", "ncc_ties", "ties",
             "ties_nobias")


@functools.partial(jax.jit, static_argnums=3)
def _first(rows, y, mask, K, offset):
    block = jnp.where(mask[:, None], rows.astype(jnp.float64) - offset, 0.0)
    return jax.ops.segment_sum(block, y, num_segments=K), jnp.all(jnp.isfinite(block))


def _ties(scores, chosen, mask):
    best = jnp.take_along_axis(scores, chosen[:, None], axis=1)
    return jnp.sum(mask & (jnp.sum(scores == best, axis=1) > 1))


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _second(rows, y, mask, K, has_W, has_b, offset, means, basis, centres, W, shift, b):
    block = rows.astype(jnp.float64) - offset
    D = jnp.where(mask[:, None], block - means[y], 0.0)
    spread = jnp.sum(D * D, axis=1)
    P = D @ basis.T
    q = P + centres[y]
    distance = jnp.sum(centres * centres, axis=1)[None, :] - 2.0 * q @ centres.T
    ncc = jnp.argmin(distance, axis=1)
    zero = jnp.zeros((), jnp.int64)
    counts = {"ncc_correct": jnp.sum(mask & (ncc == y)), "ncc_ties": _ties(distance, ncc, mask)}
    if has_W:
        logits = block @ W.T + shift
        plain = jnp.argmax(logits, axis=1)
        counts["ties_nobias"] = _ties(logits, plain, mask)
        if has_b:
            logits = logits + b
            full = jnp.argmax(logits, axis=1)
        else:
            full = plain
        counts["ties"] = _ties(logits, full, mask)
        counts["mismatch"] = jnp.sum(mask & (full != ncc))
        counts["mismatch_nobias"] = jnp.sum(mask & (plain != ncc))
        counts["correct"] = jnp.sum(mask & (full == y))
    counts = jnp.stack([counts.get(k, zero).astype(jnp.int64) for k in DECISIONS])
    return P.T @ P, jax.ops.segment_sum(spread, y, num_segments=K), counts


def _padded(X, codes, start, stop, rows):
    """Rows start:stop (as stored), their labels and a mask, padded to `rows` rows."""
    block = np.asarray(X[start:stop])
    y = codes[start:stop]
    n = stop - start
    if n == rows:
        return block, y, np.ones(n, bool)
    return (np.concatenate([block, np.zeros((rows - n, block.shape[1]), block.dtype)]),
            np.concatenate([y, np.zeros(rows - n, y.dtype)]), np.arange(rows) < n)


def accumulate(X, codes, K, W, b, chunks, name, progress, offset):
    """`ufm.measure.accumulate`'s statistics with JAX: the same dict, in float64."""
    from ufm.measure.passes import _rows, span_basis, statistics

    N, d = X.shape
    rows = chunks[0][1] - chunks[0][0]
    with linalg.float64_scope():
        device_offset = jnp.asarray(offset)
        sums, finite = jnp.zeros((K, d)), jnp.asarray(True)
        for start, stop in chunks:  # nothing read back per chunk: the device never waits
            part, chunk_finite = _first(*_padded(X, codes, start, stop, rows), K, device_offset)
            sums, finite = sums + part, finite & chunk_finite
            if progress:
                progress(stop)
        if not bool(finite):
            for start, stop in chunks:
                _rows(X, start, stop, name)  # names the first row that is not finite
        counts = np.bincount(codes, minlength=K).astype(np.int64)
        means = np.asarray(sums) / counts[:, None]
        basis = span_basis(means)
        full_basis = np.eye(d) if basis is None else basis
        args = [jnp.asarray(a) for a in (offset, means, full_basis, means @ full_basis.T)]
        has_W, has_b = W is not None, b is not None
        args += [jnp.asarray(W if has_W else np.zeros((K, d))),
                 jnp.asarray(W @ offset if has_W else np.zeros(K)),
                 jnp.asarray(b if has_b else np.zeros(K))]
        scatter, within, decided = 0.0, jnp.zeros(K), jnp.zeros(len(DECISIONS), jnp.int64)
        for start, stop in chunks:
            part, spread, tally = _second(*_padded(X, codes, start, stop, rows), K, has_W, has_b,
                                          *args)
            scatter, within, decided = scatter + part, within + spread, decided + tally
            if progress:
                progress(N + stop)
        decisions = dict(zip(DECISIONS, (int(v) for v in np.asarray(decided))))
        return statistics(counts, offset, np.asarray(sums), basis, np.asarray(scatter),
                          np.asarray(within), decisions)
