"""LAPACK-backed linear algebra that stays safe under `vmap` on CPU (docs/architecture.md).

jaxlib 0.10.2's CPU kernels for SVD, QR, solve (and the other LAPACK calls) split a batch of
matrices into pieces, hand them to XLA's intra-op thread pool and block a pool thread until they
are done (`ParallelBatchMap`). When two of those calls run at once — one per device with
`--host-devices 2` on a 2-core machine, both batched by a grid's `vmap` — both pool threads block
waiting for pieces that no thread is left to run, and the program never returns. (A grid of 64
seeds at K = 10, d = 64 wedged on every attempt: each device's NC1 called a batched SVD.)

The functions here compute exactly what their `jnp.linalg` namesakes compute, but under `vmap` on
CPU they run one matrix at a time (`lax.map`), so a LAPACK call never has a batch to split. Each
matrix goes through the same LAPACK routine either way: the numbers are identical, bit for bit.
On accelerators they batch as usual. They are not differentiable (JAX has no autodiff rule for a
custom batching rule): use them for measurements, not in objectives.
"""
import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap


def float64_scope():
    """JAX's scoped float64 switch (a context manager), whichever this JAX version offers: for
    computations that need float64 (the second-order certificate, the JAX measure engine)
    without flipping the caller's global x64 setting."""
    try:
        return jax.enable_x64(True)
    except (AttributeError, TypeError):
        from jax.experimental import enable_x64

        return enable_x64()


def one_matrix_at_a_time(fn):
    """`fn` (arrays -> arrays) whose batching rule on CPU is a sequential `lax.map` over the
    batch instead of one batched LAPACK call; elsewhere it batches as `jax.vmap(fn)` would."""

    @custom_vmap
    def wrapped(*args):
        return fn(*args)

    @wrapped.def_vmap
    def batched(axis_size, in_batched, *args):
        args = tuple(a if b else jnp.broadcast_to(a, (axis_size,) + jnp.shape(a))
                     for a, b in zip(args, in_batched))
        if jax.default_backend() == "cpu":
            out = jax.lax.map(lambda xs: wrapped(*xs), args)
        else:  # the plain function's own batching (vmap of `wrapped` would come back here)
            out = jax.vmap(fn)(*args)
        return out, jax.tree.map(lambda _: True, out)

    wrapped.__doc__ = fn.__doc__
    return wrapped


@one_matrix_at_a_time
def svd(A):
    """Thin SVD (U [m, k], s [k], Vᵀ [k, n]), k = min(m, n), as jnp.linalg.svd(full_matrices=False)."""
    return jnp.linalg.svd(A, full_matrices=False)


@one_matrix_at_a_time
def singular_values(A):
    """The singular values of A, descending [min(m, n)]."""
    return jnp.linalg.svd(A, compute_uv=False)


@one_matrix_at_a_time
def qr(A):
    """Reduced QR: (Q [m, k], R [k, n]), as jnp.linalg.qr."""
    return jnp.linalg.qr(A)


@one_matrix_at_a_time
def solve(A, B):
    """X with A X = B, as jnp.linalg.solve (A square and non-singular)."""
    return jnp.linalg.solve(A, B)
