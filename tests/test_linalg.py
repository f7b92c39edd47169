"""ufm.linalg: the jnp.linalg results bit for bit, one matrix per LAPACK call under vmap on CPU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ufm import linalg

CASES = {  # name: (ufm.linalg function, the jnp.linalg reference, argument shapes of one call)
    "svd": (linalg.svd, lambda a: jnp.linalg.svd(a, full_matrices=False), [(7, 4)]),
    "singular_values": (linalg.singular_values, lambda a: jnp.linalg.svd(a, compute_uv=False),
                        [(4, 7)]),
    "qr": (linalg.qr, jnp.linalg.qr, [(7, 4)]),
    "solve": (linalg.solve, jnp.linalg.solve, [(5, 5), (5, 3)]),
}


def _args(shapes, batch, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(batch + s)) for s in shapes]


@pytest.mark.parametrize("name", CASES)
def test_same_numbers_as_jnp_linalg_unbatched_and_under_nested_vmap(name):
    fn, reference, shapes = CASES[name]
    one = _args(shapes, ())
    for a, b in zip(jax.tree.leaves(jax.jit(fn)(*one)), jax.tree.leaves(jax.jit(reference)(*one))):
        np.testing.assert_array_equal(a, b)
    many = _args(shapes, (3, 5), seed=1)
    got = jax.jit(jax.vmap(jax.vmap(fn)))(*many)
    for i in range(3):
        for j in range(5):
            want = jax.jit(reference)(*[x[i, j] for x in many])
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_array_equal(a[i, j], b)


def test_an_unbatched_argument_is_broadcast():
    A = _args([(5, 5)], ())[0]
    B = _args([(5, 2)], (4,), seed=2)[0]
    got = jax.vmap(linalg.solve, in_axes=(None, 0))(A, B)
    for i in range(4):
        np.testing.assert_array_equal(got[i], jnp.linalg.solve(A, B[i]))


def test_under_vmap_on_cpu_each_lapack_call_gets_one_matrix():
    """The point of the module: jaxlib's batched CPU kernels block a thread-pool thread while
    they wait for pieces of their batch, which deadlocks when two run at once (one per host
    device). Inside the compiled program, every svd must see a single matrix."""
    x = jnp.zeros((16, 8, 6))
    text = jax.jit(jax.vmap(linalg.singular_values)).lower(x).as_text()
    calls = [line for line in text.splitlines() if "svd" in line.lower() and "call" in line]
    assert calls, text[:2000]
    assert all("16x" not in line for line in calls), calls
    plain = jax.jit(jax.vmap(lambda a: jnp.linalg.svd(a, compute_uv=False))).lower(x).as_text()
    assert any("16x8x6" in line for line in plain.splitlines() if "svd" in line.lower())


def test_off_cpu_the_batch_goes_to_one_batched_call(monkeypatch):
    """On accelerators the rule hands the whole batch to the plain jnp.linalg call (batched
    solvers are fast there); simulated here by reporting another backend while tracing."""
    x = jnp.asarray(np.random.default_rng(3).standard_normal((16, 8, 6)))
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    text = jax.jit(jax.vmap(linalg.singular_values)).lower(x).as_text()
    assert any("16x8x6" in line for line in text.splitlines() if "svd" in line.lower()), text[:2000]
    got = jax.jit(jax.vmap(linalg.singular_values))(x)
    monkeypatch.undo()
    np.testing.assert_array_equal(got, jax.jit(jax.vmap(
        lambda a: jnp.linalg.svd(a, compute_uv=False)))(x))
