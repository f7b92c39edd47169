"""How the tests compile and what they share (set here, by the caller, never by the library).

- float64 everywhere (`jax_enable_x64`).
- XLA's CPU code generation is set for compiling fast, because the suite is dominated by
  compiling many small programs, each run briefly (75% of an L-BFGS test's time is XLA's backend
  compile): backend optimisation level 0 (about 40% off the suite) and the classic elementwise
  emitters instead of the newer fusion emitters (`--xla_cpu_use_fusion_emitters=false`, a further
  third off each compile). Both change how machine code is generated, not the mathematics: every
  theorem test still compares float64 results with closed forms at its stated tolerance, and the
  golden results (tests/golden.py) are pinned under these same flags. Flags already in XLA_FLAGS
  win. They reach the subprocesses the tests start (CLI, experiment scripts) through the
  environment, so runs compared across processes are compiled alike.
- One persistent compilation cache for the subprocesses the tests start (CLI runs, experiment
  scripts; ufm/cache.py), kept between runs in the user's cache folder (`…/ufm/jax-tests`, or
  $UFM_CACHE_DIR). JAX keys every entry by the program, versions, device and flags, so nothing
  stale is ever loaded (`ufm cache --clear` with the same UFM_CACHE_DIR empties it). The test
  workers themselves do not use it (see below `jax_enable_compilation_cache`).
- `pytest.approx` refuses a non-zero expected value below 1e-11 without an explicit `abs=`: its
  default absolute tolerance (1e-12) would make such a check pass whatever the value (found by
  mutation testing, docs/testing.md).
"""
import os

TEST_XLA_FLAGS = {"--xla_backend_optimization_level": "0",
                  "--xla_cpu_use_fusion_emitters": "false"}


def _configure():
    flags = os.environ.get("XLA_FLAGS", "")
    chosen = [f"{k}={v}" for k, v in TEST_XLA_FLAGS.items() if k not in flags]
    os.environ["XLA_FLAGS"] = " ".join([flags] + chosen).strip()
    if "UFM_CACHE_DIR" not in os.environ:
        from ufm.cache import cache_dir  # no JAX: XLA_FLAGS must be set before JAX starts

        os.environ["UFM_CACHE_DIR"] = cache_dir() + "-tests"
    os.environ.setdefault("UFM_COMPILATION_CACHE", "1")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    # exported programs (the CLI's second cache) cost a cold run its export; CI is always cold,
    # and CLI tests run in-process: off here, on in the tests of the program cache itself
    os.environ.setdefault("UFM_PROGRAM_CACHE", "0")


_configure()

import jax  # noqa: E402  (after XLA_FLAGS)

jax.config.update("jax_enable_x64", True)
# The test workers themselves keep no compiled programs on disk (their subprocesses still do):
# serialising every program for the cache cost a cold run 2 minutes, and the workers rarely
# compile the same program twice.
jax.config.update("jax_enable_compilation_cache", False)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test module. Each XLA CPU executable keeps memory
    maps; a worker that compiled the whole suite's programs reached tens of thousands of them and
    died in XLA once past the kernel's vm.max_map_count (65,530) — a segmentation fault or abort
    in whatever compiled next (docs/testing.md)."""
    yield
    jax.clear_caches()

_approx = pytest.approx
TINY_EXPECTED = 1e-11  # below approx's default abs (1e-12) by less than a decade: say `abs=`


def _checked_approx(expected, rel=None, abs=None, nan_ok=False):
    if abs is None:
        try:
            values = np.abs(np.asarray(expected, dtype=float))
        except (TypeError, ValueError):
            values = np.zeros(0)
        nonzero = values[values > 0]
        if nonzero.size and nonzero.min() < TINY_EXPECTED:
            raise AssertionError(f"pytest.approx({nonzero.min():.1e}, …) without abs=: the "
                                 f"default absolute tolerance 1e-12 would accept anything; pass "
                                 f"abs= (0 for a purely relative check)")
    return _approx(expected, rel=rel, abs=abs, nan_ok=nan_ok)


pytest.approx = _checked_approx


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "long: takes tens of seconds (compiles many programs or starts processes); "
                   "such tests run first, so that the workers finish together")


def pytest_collection_modifyitems(config, items):
    """The `long` tests first (a stable sort): started last, one of them would leave a worker
    idle at the end of the run while the other finishes it."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)
