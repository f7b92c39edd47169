"""What fits: the ranges the machinery takes and the memory a run, a sweep or a proof needs,
checked before anything is allocated (docs/architecture.md, "Limits").

Estimates are deliberately simple: bytes = dtype size × (parameter entries × the copies the
optimiser keeps + the activations of one objective evaluation), times the configurations that are
in memory together. They are upper bounds within a small factor, meant to refuse what cannot fit
with a message that says so, not to plan memory to the byte.
"""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from ufm.config import parts
from ufm.optimise import get_optimizer

MAX_STEPS = 2 ** 31 - 1  # the step counter is an int32
MAX_SEED = 2 ** 32 - 1  # jax.random.PRNGKey keeps 32 bits of a seed: larger ones would alias
HISTORY_MARGIN = 2  # batched results are copied (stacking, the pick of the best restart)
MEMORY_FRACTION = 0.8  # refuse what needs more than this fraction of the machine's memory


def machine_memory():
    """(bytes, what) of the default device: an accelerator's memory limit where JAX reports one,
    else the host's physical memory."""
    device = jax.local_devices()[0]  # on several hosts, only this process's devices answer
    stats = getattr(device, "memory_stats", lambda: None)()
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{device.device_kind} memory"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "host memory"


def gib(nbytes):
    return f"{nbytes / 2 ** 30:,.1f} GiB"


MAX_SCALARS = 64  # measurements per layer, more than any model records


def parameter_entries(model, sizes):
    """Entries of every parameter block of `model` at `sizes` (no allocation: eval_shape)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), {"init_scale": 1.0}, sizes))
    return sum(math.prod(v.shape) for v in jax.tree.leaves(shapes))


def run_bytes(model, sizes, optimizer="gd", batch=1):
    """Estimated peak bytes of `batch` runs of `model` held in memory together (restarts, or a
    vmapped group of a sweep): parameters with grads, updates and the optimiser's copies, and the
    activations of one evaluation (targets and logits [K, N], each feature level [d, N])."""
    itemsize = jnp.dtype(jnp.result_type(float)).itemsize
    P = parameter_entries(model, sizes)
    levels = max(1, 2 * (model.depth or 0))
    activations = 4 * sizes.K * sizes.N + 2 * levels * sizes.d * sizes.N
    copies = get_optimizer(optimizer).copies
    return itemsize * batch * (P * (3 + copies) + activations)


def result_bytes(model, sizes, count=1):
    """Bytes of `count` grid points' (or history records') results on the host: every
    measurement, the certificate and the theory arrays, as float64.

    Exact (eval_shape of one record, no allocation) only where it could matter: tracing the
    measurements costs a fraction of a second, so while a generous bound (MAX_SCALARS
    measurements per layer, the global bound's K×K inputs) times `count` is below a thousandth of
    the machine's memory that bound is returned instead."""
    layers = 1 + (model.depth or 0)
    bound_entries = 0 if model.bound_inputs is None else sizes.K * sizes.K + 2 * sizes.K
    generous = 8 * (MAX_SCALARS * layers + bound_entries + 12)
    if count * generous < 1e-3 * machine_memory()[0]:
        return count * generous

    def measured():
        hyper = {k: jnp.ones(()) for k in (*model.hyper_names, "init_scale")}
        params = model.init(jax.random.PRNGKey(0), hyper, sizes)
        bound = {} if model.bound_inputs is None else model.bound_inputs(params, sizes)
        return model.measure(params, hyper, sizes), bound

    try:
        measurements, bound = jax.eval_shape(measured)
        outputs = len(measurements) + sum(math.prod(v.shape) for v in bound.values())
    except Exception:  # noqa: BLE001 - an estimate: assume a generous number of outputs
        outputs = 64
    return count * 8 * (outputs + 12)


def check_fits(nbytes, what):
    """ValueError when `nbytes` exceed MEMORY_FRACTION of the machine's memory, saying `what`
    needs it, the estimate and the machine's memory."""
    limit, where = machine_memory()
    if nbytes > MEMORY_FRACTION * limit:
        raise ValueError(f"{what} needs about {gib(nbytes)} but the machine has {gib(limit)} of "
                         f"{where}: reduce it")


def check_run(model, sizes, optimizer, restarts, records=2):
    """A single `ufm train` run (R restarts vmapped together) must fit: each restart's working
    memory plus its recorded history (`records` rows of every measurement), with a margin of
    HISTORY_MARGIN for the copies XLA makes of batched results."""
    per_restart_history = result_bytes(model, sizes, records)
    nbytes = HISTORY_MARGIN * (run_bytes(model, sizes, optimizer, restarts)
                               + restarts * per_restart_history)
    check_fits(nbytes, f"this run (K={sizes.K}, n={_counts(sizes)}, d={sizes.d}, "
                       f"{restarts} restart{'s' * (restarts != 1)}, "
                       f"{get_optimizer(optimizer).name}, "
                       f"{jnp.dtype(jnp.result_type(float))})")


def _counts(sizes):
    n = sizes.n
    return n if not isinstance(n, tuple) else f"{min(n)}…{max(n)} per class"


def check_steps(steps):
    if steps > MAX_STEPS:
        raise ValueError(f"steps (--steps) must be at most {MAX_STEPS:,} (the step counter is "
                         f"32-bit), got {steps:,}")


def check_seed(seed, name="seed (--seed)", count=1):
    """0 ≤ seed and seed + count − 1 ≤ MAX_SEED (JAX's PRNG keeps 32 bits)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {seed!r}")
    if seed < 0 or seed + count - 1 > MAX_SEED:
        top = f" (with {count} seeds, seed + {count - 1})" if count > 1 else ""
        raise ValueError(f"{name} must be between 0 and {MAX_SEED} (2^32 − 1: JAX's PRNG keys "
                         f"take 32 bits){top}, got {seed}")


def check_representable(hyper):
    """Every number of a hyper dict must stay finite in the working dtype (1e39 is inf in
    float32)."""
    dtype = jnp.result_type(float)
    top = float(jnp.finfo(dtype).max)
    for name, value in hyper.items():
        for what, v in parts(name, value):
            if abs(float(v)) > top:
                raise ValueError(f"{what} = {float(v):g} overflows {jnp.dtype(dtype)} "
                                 f"(largest {top:.3g}); pass --x64 or a smaller value")
