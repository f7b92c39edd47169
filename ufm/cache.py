"""JAX's persistent compilation cache for ufm (docs/usage.md, "Compilation cache").

Compiling, not computing, is most of a short run's wall time: `ufm train bias-free` spends about
5 s compiling the same programs every time, against 0.07 s for its 20,000 steps. JAX can keep
compiled programs on disk, keyed by its own hash of everything that decides the executable (the
program, the jax/jaxlib versions, the backend and device, the compile options and XLA_FLAGS), so a
second run of the same command loads them instead.

- The CLI turns it on by default; `UFM_COMPILATION_CACHE=0` (or `off`/`false`/`no`) turns it off.
- The library leaves JAX alone unless asked: call `ufm.enable_compilation_cache()` (before the
  first compilation) or set `UFM_COMPILATION_CACHE=1` in the environment before importing ufm's
  simulator modules — the library never changes JAX's configuration behind the caller's back.
- Where: `UFM_CACHE_DIR`, else `$XDG_CACHE_HOME/ufm/jax`, else `~/.cache/ufm/jax`. Its size is
  not capped (JAX's cap needs the `filelock` package, not a dependency): `ufm cache` shows it.
- `ufm cache` shows it; `ufm cache --clear` removes it.

JAX's own settings win: if the caller already set `jax_compilation_cache_dir` (or the
JAX_COMPILATION_CACHE_DIR environment variable) that folder is used.
"""
import os
import shutil

ENV = "UFM_COMPILATION_CACHE"
DIR_ENV = "UFM_CACHE_DIR"
OFF = ("0", "off", "false", "no")
MIN_COMPILE_SECONDS = 0.2  # programs faster to compile than this are not worth a file


def cache_dir():
    """The folder ufm keeps compiled programs in (XDG conventions)."""
    if os.environ.get(DIR_ENV):
        return os.path.abspath(os.environ[DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ufm", "jax")


def wanted(default):
    """Whether the cache should be on: UFM_COMPILATION_CACHE if set, else `default`."""
    value = os.environ.get(ENV)
    if value is None or value == "":
        return default
    return value.strip().lower() not in OFF


def enable_compilation_cache(path=None, min_compile_seconds=MIN_COMPILE_SECONDS):
    """Turn on JAX's persistent compilation cache in `path` (default `cache_dir()`), keeping
    programs that took at least `min_compile_seconds` to compile. Call it before the first
    compilation. A folder the caller already gave JAX wins. Returns the folder used."""
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    folder = os.path.abspath(path) if path else cache_dir()
    os.makedirs(folder, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # the caller's wins
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))

    return folder


def size(path=None):
    """(files, bytes) held in the cache folder."""
    folder = path or cache_dir()
    files = total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.path.getsize(os.path.join(root, name))
                files += 1
            except OSError:
                pass
    return files, total


def clear(path=None):
    """Remove the cache folder; returns (files, bytes) removed."""
    folder = path or cache_dir()
    held = size(folder)
    shutil.rmtree(folder, ignore_errors=True)
    return held


__all__ = ["cache_dir", "clear", "enable_compilation_cache", "size", "wanted"]
