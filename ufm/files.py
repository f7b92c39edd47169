"""Writing results: every file atomically (a temporary file beside it, then a rename), and one
conversion of results to JSON (NaN and ±inf as null, numpy scalars and arrays as Python ones);
reading a matrix a model option names (`read_matrix`).

Imports neither JAX nor the simulator, so `ufm measure` and plotting can use it alone.
"""
import json
import math
import os
import tempfile
import warnings

import numpy as np


def json_ready(obj):
    """`obj` with non-finite floats as None (JSON has no NaN), numpy scalars and arrays as Python
    numbers and lists, tuples as lists."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    return obj


def atomic_write(path, write):
    """Call write(file_object) on a temporary file beside `path`, then rename it into place."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, doc):
    """`doc` (made JSON-ready) to `path`, atomically, indented."""
    text = json.dumps(json_ready(doc), indent=1).encode()
    atomic_write(path, lambda fh: fh.write(text))


def write_npz(path, arrays):
    """{name: array} to `path` as an uncompressed .npz, atomically."""
    atomic_write(path, lambda fh: np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()}))


def read_matrix(value, what, key, expected="a matrix"):
    """A real float64 array from a .npy, .npz (array `key`) or text/.csv file (2-D), or an
    array-like; ValueError starting with `what` (e.g. "targets (--targets)") when it cannot be
    read as `expected` or holds anything but real numbers. Shape and finiteness are the
    caller's to check."""
    if isinstance(value, str):
        try:
            if value.endswith(".npy"):
                value = np.load(value, allow_pickle=False)
            elif value.endswith(".npz"):
                with np.load(value, allow_pickle=False) as f:
                    value = f[key]
            else:
                with warnings.catch_warnings():  # an empty file: our message, not numpy's
                    warnings.simplefilter("ignore")
                    value = np.loadtxt(value, delimiter="," if value.endswith(".csv") else None,
                                       ndmin=2)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{what} {value!r} cannot be read as {expected}: {err}") from None
    kind = np.asarray(value).dtype.kind
    if kind not in "biuf":  # complex (the imaginary part would be dropped), strings, objects
        raise ValueError(f"{what} must hold real numbers, got {np.asarray(value).dtype} entries")
    return np.asarray(value, np.float64)
