"""What ufm needs of XLA's CPU runtime, set before JAX starts it (docs/architecture.md).

jaxlib's CPU runtime (seen with jax 0.10.2) can deadlock when it runs a vmapped program with many
independent operations on its multi-threaded Eigen pool: every worker waits and the run never
returns. Our vmapped runs with measurements (restarts, grids) met it deterministically at d ≈ 30,
and single-threaded Eigen avoids it (also reported upstream, e.g. jax-ml/jax#24219 and the
PyAutoFit investigation of the same wedge). So on import ufm adds
--xla_cpu_multi_thread_eigen=false to XLA_FLAGS, unless the caller's XLA_FLAGS already sets that
flag (set it to true to opt out) or a JAX backend is already running (then a warning says so).
It changes how CPU products are threaded, not what they compute; parallelism across cores comes
from sharding a grid over host devices (`ufm sweep --host-devices`) instead.
"""
import os
import warnings

EIGEN_FLAG = "--xla_cpu_multi_thread_eigen"


def single_threaded_eigen():
    """Add EIGEN_FLAG=false to XLA_FLAGS if the caller has not chosen it and no backend runs."""
    flags = os.environ.get("XLA_FLAGS", "")
    if EIGEN_FLAG in flags:
        return
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        warnings.warn(f"JAX's backend started before ufm was imported, so ufm could not set "
                      f"XLA_FLAGS={EIGEN_FLAG}=false; vmapped runs on CPU may deadlock in "
                      f"jaxlib's multi-threaded Eigen pool. Import ufm first, or set it "
                      f"yourself.", RuntimeWarning, stacklevel=3)
        return
    os.environ["XLA_FLAGS"] = f"{flags} {EIGEN_FLAG}=false".strip()


single_threaded_eigen()
