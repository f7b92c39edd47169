"""What ufm needs of XLA's CPU runtime, set before JAX starts it (docs/architecture.md).

jaxlib's CPU runtime (seen with jax 0.10.2) can deadlock when it runs a vmapped program with many
independent operations: every worker of its thread pools waits and the run never returns. Two
settings are involved, and ufm turns both off on CPU:

- `--xla_cpu_enable_concurrency_optimized_scheduler`: the scheduler that orders operations to
  run many at once. With it, a 256-seed grid of the deep linear UFM (L = 4, d = 32) and even an
  8-point one wedged on every attempt; without it, every attempt finished.
- `--xla_cpu_multi_thread_eigen`: the multi-threaded Eigen pool for products. Our vmapped runs
  with measurements (restarts, grids) met the wedge deterministically at d ≈ 30 with it on (also
  reported upstream, e.g. jax-ml/jax#24219 and the PyAutoFit investigation of the same wedge).

So on import ufm adds `FLAG=false` to XLA_FLAGS for each, unless the caller's XLA_FLAGS already
sets that flag (set it to true to opt out) or a JAX backend is already running (then a warning
says so). They change how the CPU work is scheduled and threaded, not what it computes;
parallelism across cores comes from sharding a grid over host devices (`ufm sweep
--host-devices`) instead.
"""
import os
import sys
import warnings

SAFE_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler", "--xla_cpu_multi_thread_eigen")


def safe_cpu_runtime():
    """Add FLAG=false to XLA_FLAGS for each of SAFE_FLAGS the caller has not chosen, if no JAX
    backend runs yet."""
    flags = os.environ.get("XLA_FLAGS", "")
    missing = [flag for flag in SAFE_FLAGS if flag not in flags]
    if not missing:
        return
    bridge = sys.modules.get("jax._src.xla_bridge")  # not imported: no backend can run yet
    if bridge is not None and bridge.backends_are_initialized():
        warnings.warn(f"JAX's backend started before ufm was imported, so ufm could not add "
                      f"{' '.join(f + '=false' for f in missing)} to XLA_FLAGS; vmapped runs on "
                      f"CPU may deadlock in jaxlib's thread pools. Import ufm first, or set "
                      f"them yourself.", RuntimeWarning, stacklevel=3)
        return
    os.environ["XLA_FLAGS"] = " ".join([flags] + [f"{f}=false" for f in missing]).strip()


safe_cpu_runtime()
