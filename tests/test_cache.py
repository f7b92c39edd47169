"""The CLI's caches (ufm/cache.py): JAX's persistent compilation cache and the exported programs
beside it — on by default for the CLI, off with the environment variables, shown and cleared by
`ufm cache`, keyed so that nothing stale is loaded, and never able to change a result."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ufm import cache

TRAIN = ["train", "bias-free", "--steps", "400", "--log-every", "100", "--quiet"]


def _cli(args, env, out=None):
    argv = [sys.executable, "-m", "ufm.cli", *args] + (["--out", str(out)] if out else [])
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _env(folder, programs="1", compilation="1"):
    env = dict(os.environ, UFM_CACHE_DIR=str(folder), UFM_PROGRAM_CACHE=programs,
               UFM_COMPILATION_CACHE=compilation)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


@pytest.mark.long
def test_a_second_run_loads_its_exported_program_and_gives_the_same_result(tmp_path):
    """Two `ufm train` runs with one cache folder: the first exports the program (one file under
    programs/), the second loads it; both write the same result.json and params.npz. With the
    caches off nothing is written and the result is the same again. `ufm cache --clear`
    removes it all."""
    folder = tmp_path / "cache"
    _cli(TRAIN, _env(folder), tmp_path / "a")
    programs = os.listdir(folder / "programs")
    assert len(programs) == 1 and programs[0].endswith(".jaxexport")
    stamp = os.path.getmtime(folder / "programs" / programs[0])
    _cli(TRAIN, _env(folder), tmp_path / "b")
    assert os.path.getmtime(folder / "programs" / programs[0]) == stamp  # loaded, not rewritten
    off = tmp_path / "off"
    _cli(TRAIN, _env(off, programs="0", compilation="0"), tmp_path / "c")
    assert not off.exists()
    results = [json.loads((tmp_path / r / "result.json").read_text()) for r in "abc"]
    assert results[0] == results[1] == results[2]
    params = [np.load(tmp_path / r / "params.npz") for r in "abc"]
    for name in params[0].files:
        assert np.array_equal(params[0][name], params[1][name])
        assert np.array_equal(params[0][name], params[2][name])
    shown = _cli(["cache"], _env(folder)).stdout
    assert str(folder) in shown and "on" in shown
    _cli(["cache", "--clear"], _env(folder))
    assert not folder.exists()


def test_program_keys_follow_what_decides_the_program():
    """The file name changes with the static description, the argument shapes and dtypes, and
    the tree of the arguments; it is the same for the same call."""
    args = (np.zeros(3, np.float32), {"lr": np.float32(0.1)})
    key = cache.program_key(args, ("simulate", "bias-free", 100))
    assert key == cache.program_key(args, ("simulate", "bias-free", 100))
    others = [cache.program_key(args, ("simulate", "bias-free", 200)),
              cache.program_key((np.zeros(4, np.float32), args[1]), ("simulate", "bias-free", 100)),
              cache.program_key((np.zeros(3, np.float64), args[1]), ("simulate", "bias-free", 100)),
              cache.program_key((args[0], {"lam": np.float32(0.1)}), ("simulate", "bias-free", 100))]
    assert len({key, *others}) == 5


def test_an_unreadable_program_is_exported_again_and_the_cache_never_costs_a_run(tmp_path,
                                                                                   monkeypatch):
    """A garbled file in programs/ is replaced by a fresh export; a function that cannot be
    exported runs as the plain jitted function; with the program cache off `program` returns
    the function itself."""
    fn = jax.jit(lambda x, s: {"y": jnp.sin(x) * s})
    args = (np.linspace(0, 1, 5), np.float64(2.0))
    assert cache.program(fn, args, ("sin",)) is fn  # off (the tests' default)
    monkeypatch.setattr(cache, "_PROGRAMS", str(tmp_path))
    want = np.asarray(fn(*args)["y"])
    path = tmp_path / cache.program_key(args, ("sin",))
    path.write_bytes(b"not a program")
    got = cache.program(fn, args, ("sin",))(*args)
    assert np.array_equal(np.asarray(got["y"]), want)
    assert path.read_bytes() != b"not a program"  # exported again
    got = cache.program(fn, args, ("sin",))(*args)  # and loaded
    assert np.array_equal(np.asarray(got["y"]), want)
    host = jax.jit(lambda x: jax.pure_callback(np.cos, jax.ShapeDtypeStruct(x.shape, x.dtype), x))
    assert cache.program(host, (args[0],), ("callback",)) is host  # host callbacks: not exportable


def test_the_compilation_cache_is_capped_so_that_jax_locks_its_entries(tmp_path):
    """Without a cap JAX writes an entry in place and reads without a lock, so a second process
    could load one half-written (a test worker once died of it); with the cap every read and write
    holds the folder's file lock. A cap the caller set is kept; entries an uncapped JAX left in the
    folder do not stop new ones being written. In a fresh process: the library configures JAX only
    when asked."""
    code = """
import jax, sys
from ufm import cache
if sys.argv[2] == "capped":
    jax.config.update("jax_compilation_cache_max_size", 123456789)
cache.enable_compilation_cache(sys.argv[1])
jax.jit(lambda x: x * 2.0 + 1.0)(jax.numpy.ones(3)).block_until_ready()
print(jax.config.jax_compilation_cache_max_size)
"""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    old = """
import jax, sys
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.jit(lambda x: x * 3.0 - 1.0)(jax.numpy.ones(3)).block_until_ready()
"""
    for mode, want in (("default", cache.CACHE_MAX_BYTES), ("capped", 123456789)):
        folder = tmp_path / mode
        # an entry an uncapped JAX left (no last-use file): capped JAX must still write beside it
        subprocess.run([sys.executable, "-c", old, str(folder)], env=env, check=True)
        done = subprocess.run([sys.executable, "-c", code, str(folder), mode], env=env,
                              capture_output=True, text=True, check=True)
        assert "Error writing persistent compilation cache" not in done.stderr, done.stderr
        assert int(done.stdout.split()[-1]) == want
        assert sum(n.endswith("-cache") for n in os.listdir(folder)) >= 2
        names = os.listdir(folder)
        assert ".lockfile" in names and any(n.endswith("-cache") for n in names), names
        assert sorted(os.path.basename(f) for f in cache.entries(str(folder))) == sorted(names)
