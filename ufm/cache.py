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
- Where: `UFM_CACHE_DIR`, else `$XDG_CACHE_HOME/ufm/jax`, else `~/.cache/ufm/jax`. Capped at
  CACHE_MAX_BYTES, least recently used entries evicted first (a cap the caller set wins). The cap
  is also what makes JAX take a file lock around every read and write of an entry: without it JAX
  writes entries in place, and a second process (two runs at once, pytest-xdist workers, hosts
  sharing a folder) could read one half-written — seen once as a test worker's segmentation
  fault while deserialising it. `ufm cache` shows the size.
- `ufm cache` shows it; `ufm cache --clear` removes what ufm wrote there (JAX's entries and the
  exported programs), never anything else in the folder.

JAX's own settings win: if the caller already set `jax_compilation_cache_dir` (or the
JAX_COMPILATION_CACHE_DIR environment variable) that folder is used.

Programs, too (`program`): JAX computes its cache key from the *lowered* program, so even a cached
run traces and lowers it first (about 1 s of a second `ufm train`). For the CLI
(`enable_programs`; UFM_PROGRAM_CACHE=0 turns it off) a run's program is also kept exported
(`jax.export`: traced and lowered once, serialized) under `programs/` in the same folder, keyed by everything that decides it: what is run and at which
static sizes, the argument shapes and dtypes, the hash of ufm's own source, and the jax, jaxlib
and optax versions. A later run deserializes it and goes straight to compiling (a hit in JAX's
cache). Any failure to export, store or load falls back to the plain jitted function.
"""
import hashlib
import os
import re

ENV = "UFM_COMPILATION_CACHE"
DIR_ENV = "UFM_CACHE_DIR"
OFF = ("0", "off", "false", "no")
MIN_COMPILE_SECONDS = 0.2  # programs faster to compile than this are not worth a file
CACHE_MAX_BYTES = 4 * 2 ** 30  # JAX's cap on the folder (and its file lock: see above)


def cache_dir():
    """The folder ufm keeps compiled programs in: JAX's own JAX_COMPILATION_CACHE_DIR when the
    caller set it (it wins in training too), else UFM_CACHE_DIR, else XDG conventions."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.path.abspath(os.environ["JAX_COMPILATION_CACHE_DIR"])
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
    try:
        os.makedirs(folder, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"{folder} is not writable")
    except OSError as err:  # the cache must never cost a run: without it, once said
        import sys

        print(f"ufm: warning: no compilation cache ({folder} cannot be a cache folder: "
              f"{err.strerror or err}); runs compile from scratch", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    if jax.config.jax_compilation_cache_max_size == -1:  # uncapped and unlocked: cap it (and lock)
        jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    _stamp_entries(folder)  # capped (ours or the caller's): every entry needs its last-use time
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # the caller's wins
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))

    return folder


def _stamp_entries(folder):
    """Give every entry an uncapped cache left (no `-atime` file: JAX writes those only with a
    cap) its last-use time from the file's, as capped JAX expects of every entry — without one,
    each write to the folder fails with a warning and the cache stops growing."""
    try:
        names = set(os.listdir(folder))
        for name in names:
            if name.endswith("-cache") and JAX_ENTRY.match(name):
                atime = name[:-len("-cache")] + "-atime"
                if atime not in names:
                    stamp = os.stat(os.path.join(folder, name)).st_mtime_ns
                    with open(os.path.join(folder, atime), "wb") as fh:
                        fh.write(stamp.to_bytes(8, "little"))
    except OSError:  # the cache must never cost a run
        pass


SERIALIZED = []  # (NamedTuple type, name) a kept program may return: registered by their modules


def serializable(cls, name):
    """Declare a NamedTuple type that kept programs return (the optimiser's Trajectory), so this
    module never imports the modules whose programs it keeps."""
    if (cls, name) not in SERIALIZED:
        SERIALIZED.append((cls, name))
    return cls


PROGRAMS_ENV = "UFM_PROGRAM_CACHE"
_PROGRAMS = None  # the folder exported programs are kept in, once `enable_programs` ran
_SOURCE = None


def enable_programs():
    """Keep exported programs (`program`) beside JAX's compilation cache — the CLI's default,
    off with UFM_PROGRAM_CACHE=0 (or with the compilation cache off). Exporting costs a cold run
    a little, so the library and the tests leave it off. Returns the folder, or None."""
    import jax

    global _PROGRAMS
    folder = jax.config.jax_compilation_cache_dir
    if not folder or os.environ.get(PROGRAMS_ENV, "").strip().lower() in OFF:
        return None
    _PROGRAMS = os.path.join(folder, "programs")
    return _PROGRAMS


def _source_hash():
    """sha256 of ufm's own source files: a program exported by other code is never loaded."""
    global _SOURCE
    if _SOURCE is None:
        digest = hashlib.sha256()
        root = os.path.dirname(os.path.abspath(__file__))
        for folder, dirs, names in sorted(os.walk(root)):
            dirs.sort()
            for name in sorted(n for n in names if n.endswith(".py")):
                digest.update(name.encode())
                with open(os.path.join(folder, name), "rb") as fh:
                    digest.update(fh.read())
        _SOURCE = digest.hexdigest()
    return _SOURCE


def program_key(args, what):
    """The file name of the exported program of `what` (a repr-stable description of the
    function and its static arguments) called with `args`."""
    import jax
    import jaxlib
    import optax

    leaves, tree = jax.tree.flatten(args)
    signature = [(tuple(getattr(v, "shape", ())), str(getattr(v, "dtype", type(v).__name__)))
                 for v in leaves]
    parts = (what, str(tree), signature, _source_hash(), jax.__version__, jaxlib.__version__,
             optax.__version__, jax.default_backend(), bool(jax.config.jax_enable_x64))
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:40] + ".jaxexport"


def program(fn, args, what):
    """`fn` (a jitted function) for these `args`, loaded as an exported program from the cache
    when it holds one, else exported, stored atomically, and called — so a second run skips
    tracing and lowering. `fn` itself when the cache is off, when jax.export cannot serialize
    here (it needs the `flatbuffers` package), or when anything goes wrong."""
    if _PROGRAMS is None:
        return fn
    try:
        from jax import export

        from ufm.files import atomic_write

        for cls, name in SERIALIZED:
            try:
                export.register_namedtuple_serialization(cls, serialized_name=name)
            except ValueError:
                pass  # already registered
        path = os.path.join(_PROGRAMS, program_key(args, what))
        if os.path.isfile(path):
            try:
                with open(path, "rb") as fh:
                    return export.deserialize(bytearray(fh.read())).call
            except Exception:  # noqa: BLE001 - an unreadable file is exported again
                os.remove(path)
        exported = export.export(fn)(*args)
        data = exported.serialize()
        atomic_write(path, lambda fh: fh.write(data))  # makes the folder
        return exported.call
    except Exception:  # noqa: BLE001 - the cache must never cost a run
        return fn


# What ufm writes there, and nothing else is counted or removed: JAX's entries
# (<name>-<64 hex digits>-cache, and -atime where JAX keeps access times) and the exported
# programs (programs/<40 hex digits>.jaxexport). The folder may be shared with the user's files.
JAX_ENTRY = re.compile(r"^(.+-[0-9a-f]{64}-(cache|atime)|\.lockfile)$")  # entries, their lock
PROGRAM_ENTRY = re.compile(r"^[0-9a-f]{40}\.jaxexport$")


def entries(path=None):
    """The files ufm wrote in the cache folder (none if it is not a folder)."""
    folder = path or cache_dir()
    if not os.path.isdir(folder):
        return []
    found = [os.path.join(folder, n) for n in os.listdir(folder) if JAX_ENTRY.match(n)]
    programs = os.path.join(folder, "programs")
    if os.path.isdir(programs):
        found += [os.path.join(programs, n) for n in os.listdir(programs)
                  if PROGRAM_ENTRY.match(n)]
    return [f for f in found if os.path.isfile(f) and not os.path.islink(f)]


def size(path=None):
    """(files, bytes) of ufm's entries in the cache folder."""
    files = total = 0
    for f in entries(path):
        try:
            total += os.path.getsize(f)
            files += 1
        except OSError:
            pass
    return files, total


def clear(path=None):
    """Remove ufm's entries from the cache folder (and programs/ and the folder itself if that
    leaves them empty); anything else there is left alone. Returns (files, bytes) removed."""
    folder = path or cache_dir()
    files = total = 0
    for f in entries(folder):
        try:
            nbytes = os.path.getsize(f)
            os.remove(f)
            files, total = files + 1, total + nbytes
        except OSError:
            pass
    for empty in (os.path.join(folder, "programs"), folder):
        try:
            os.rmdir(empty)  # only if empty
        except OSError:
            pass
    return files, total


__all__ = ["cache_dir", "clear", "entries", "enable_compilation_cache", "enable_programs", "program",
           "program_key", "size", "wanted"]
