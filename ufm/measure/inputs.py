"""`ufm measure`'s inputs and outputs: arrays and labels checked, .npy/.npz files read (memory
mapped where they can be), the report written as JSON, text and CSV."""

import io
import math
import os
import zipfile

import numpy as np

from ufm.files import atomic_write, write_json


GLOBAL_MEANS = ("classes", "samples")
STDS = ("population", "unbiased")
RESERVED = ("labels", "W", "b")  # npz keys that are not layers


# --- input ------------------------------------------------------------------------------------

def _as_numpy(a, name):
    """A numpy view of a numpy/JAX array, of anything np.asarray takes (__array__), or of a
    DLPack producer (a PyTorch tensor: on a GPU it is copied to the host by its own `.cpu()`,
    which ufm calls without importing torch)."""
    if isinstance(a, np.ndarray):
        return a
    try:
        if hasattr(a, "__dlpack__") and not hasattr(a, "__array__"):
            return np.from_dlpack(a)
        return np.asarray(a)
    except Exception as first:  # noqa: BLE001 - a device tensor: bring it to the host, or report
        mover = getattr(a, "cpu", None) or getattr(a, "get", None)  # torch / cupy
        if callable(mover):
            try:
                moved = mover()
                return np.from_dlpack(moved) if hasattr(moved, "__dlpack__") else np.asarray(moved)
            except Exception:  # noqa: BLE001 - report the first failure below
                pass
        raise ValueError(f"{name} must be an array, got {type(a).__name__}: {first}") from None


def encode_labels(labels):
    """(classes [K] sorted distinct values, codes [N] in 0..K−1) of integer labels [N]."""
    labels = _as_numpy(labels, "labels")
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional [N], got shape {labels.shape}")
    if labels.size and not (np.issubdtype(labels.dtype, np.integer)
                            or np.issubdtype(labels.dtype, np.bool_)):
        floating = np.issubdtype(labels.dtype, np.floating)
        if floating and not np.all(np.isfinite(labels)):
            bad = int(np.flatnonzero(~np.isfinite(labels))[0])
            raise ValueError(f"labels must be integers, got {labels[bad]} at row {bad}")
        as_int = labels.astype(np.int64) if floating else None
        if as_int is None or not np.array_equal(as_int, labels):
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        labels = as_int
    if labels.size and labels.min() < 0:
        bad = labels[labels < 0]
        value = int(bad[0])
        raise ValueError(f"labels must be >= 0: {value} appears in {int(np.sum(labels == value))} "
                         f"rows — negative labels (−1, −100) usually mean 'ignore this row', so "
                         f"ufm does not measure them as a class: drop those rows "
                         f"(features[labels >= 0], labels[labels >= 0]) first")
    classes, codes = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"labels must name at least 2 classes, got {len(classes)} "
                         f"({classes.tolist()})")
    return classes, codes.reshape(-1)


def _check_layer(X, name, N):
    if X.ndim != 2:
        raise ValueError(f"features {name!r} must be two-dimensional [N, d], got shape {X.shape}")
    if X.shape[0] != N:
        hint = " (transposed? rows are samples)" if X.shape[1] == N else ""
        raise ValueError(f"features {name!r} have {X.shape[0]} rows but labels have {N} "
                         f"entries{hint}")
    if X.shape[1] < 1:
        raise ValueError(f"features {name!r} have no columns (shape {X.shape})")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise ValueError(f"features {name!r} must be numeric, got dtype {X.dtype}")


def _check_classifier(W, b, K, d, layer, classes=None):
    """W [K, d] and b [K] as float64, checked. W's row k is the class of the k-th smallest label
    (docs/usage.md: the report says so when the labels are not 0 … K − 1); a W with more rows
    than the labels' classes (a split missing a class) is refused, naming the rows to pass."""
    if W is None:
        if b is not None:
            raise ValueError("b was given without W")
        return None, None
    W = np.asarray(_as_numpy(W, "W"), np.float64)
    if (classes is not None and W.ndim == 2 and W.shape[0] > K
            and np.issubdtype(classes.dtype, np.integer) and classes.max() < W.shape[0]):
        shown = ", ".join(map(str, classes[:8])) + (", …" if K > 8 else "")
        raise ValueError(f"the labels name {K} of W's {W.shape[0]} classes ({shown}): a split "
                         f"missing a class cannot be measured with the full classifier yet "
                         f"(its decisions range over every row); pass W's rows of the classes "
                         f"present, W[[{shown}]], and b's")
    if W.shape != (K, d):
        hint = " (transposed?)" if W.shape == (d, K) else ""
        raise ValueError(f"W must have shape [K, d] = [{K}, {d}] to read layer {layer!r}, got "
                         f"{W.shape}{hint}")
    if b is not None:
        b = np.asarray(_as_numpy(b, "b"), np.float64)
        if b.shape != (K,):
            raise ValueError(f"b must have shape [K] = [{K}], got {b.shape}")
    if not (np.all(np.isfinite(W)) and (b is None or np.all(np.isfinite(b)))):
        raise ValueError("W and b must be finite")
    return W, b


def _check_options(global_mean, std, pinv_rtol, chunk_rows):
    if global_mean not in GLOBAL_MEANS:
        raise ValueError(f"global_mean (--global-mean) must be one of {GLOBAL_MEANS}, got "
                         f"{global_mean!r}")
    if std not in STDS:
        raise ValueError(f"std (--std) must be one of {STDS}, got {std!r}")
    if pinv_rtol is not None and not (isinstance(pinv_rtol, (int, float))
                                      and math.isfinite(pinv_rtol) and 0 <= pinv_rtol < 1):
        raise ValueError(f"pinv_rtol (--pinv-rtol) must be a number in [0, 1), got {pinv_rtol!r}")
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(
            chunk_rows, (int, np.integer)) or chunk_rows < 1):
        raise ValueError(f"chunk_rows (--chunk-rows) must be an integer >= 1, got {chunk_rows!r}")


class Unreadable(ValueError):
    """A file or member that cannot be read as it claims (its message is complete)."""


def _npy_header(fh):
    """(shape, fortran order, dtype) of the .npy array at fh's position; fh left at its data."""
    version = np.lib.format.read_magic(fh)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    return read(fh)


def _mappable(path, what, dtype, shape, fortran, available):
    """Refuse to memory-map an array whose dtype holds objects or whose bytes are fewer than its
    header says (a truncated member would read the next one's bytes as features)."""
    if dtype.hasobject:
        raise Unreadable(f"{what} in {path} holds Python objects (dtype {dtype}), not numbers")
    need = math.prod(shape) * dtype.itemsize
    if need > available:
        raise Unreadable(f"{what} in {path} is truncated or corrupt: its header says shape "
                         f"{tuple(shape)} of {dtype} ({need:,} bytes) but it holds {available:,}")


def _npz_member(path, key, mmap):
    """One array of an .npz: a read-only memory map when `mmap` and the member is stored
    uncompressed (its dtype and byte count checked against its header first), else loaded."""
    if mmap:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(f"{key}.npy")
            if info.compress_type == zipfile.ZIP_STORED:
                with open(path, "rb") as fh:
                    fh.seek(info.header_offset)
                    local = fh.read(30)
                    name_len, extra_len = (int.from_bytes(local[26:28], "little"),
                                           int.from_bytes(local[28:30], "little"))
                    start = info.header_offset + 30 + name_len + extra_len
                    fh.seek(start)
                    shape, fortran, dtype = _npy_header(fh)
                    offset = fh.tell()
                _mappable(path, f"{key}.npy", dtype, shape, fortran,
                          info.file_size - (offset - start))
                return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset,
                                 order="F" if fortran else "C")
    with np.load(path, allow_pickle=False) as data:
        return data[key]


def _load(path, mmap):
    if not path.endswith(".npy"):
        raise ValueError(f"{path}: expected a .npy file")
    try:
        if mmap:  # check the header against the file's size before mapping it
            with open(path, "rb") as fh:
                shape, fortran, dtype = _npy_header(fh)
                header = fh.tell()
            _mappable(path, "the array", dtype, shape, fortran, os.path.getsize(path) - header)
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Unreadable:
        raise
    except (OSError, EOFError, ValueError) as err:
        raise Unreadable(f"{path} is not a readable .npy file: {err}") from None


def load_file(path, layers=None, labels=None, W=None, b=None, stream=False):
    """(layers {name: array}, labels, W, b) from an .npz (keys `labels`, optional `W`, `b`, and
    one array per layer: `features` or any other names) or from .npy files (`path` the features,
    `labels` a path). With `stream`, arrays are memory maps where the format allows."""
    if not os.path.isfile(path):
        raise ValueError(f"FILE must be an existing .npz or .npy file, got {path!r}")
    extra = {}
    for name, flag, value in (("labels", "--labels", labels), ("W", "--classifier", W),
                              ("b", "--bias", b)):
        if value is not None:
            if not (isinstance(value, str) and value.endswith(".npy") and os.path.isfile(value)):
                raise ValueError(f"{flag} must be an existing .npy file, got {value!r}")
            extra[name] = _load(value, False)
    if path.endswith(".npy"):
        if "labels" not in extra:
            raise ValueError(f"{path} is a .npy file: pass the labels as --labels LABELS.npy")
        arrays = {"features": _load(path, stream)}
    elif path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                keys = list(data.keys())
            for name in ("labels", "W", "b"):
                if name in keys and name not in extra:
                    extra[name] = _npz_member(path, name, False)
            candidates = [k for k in keys if k not in RESERVED]
            arrays = {k: _npz_member(path, k, stream) for k in candidates}
        except Unreadable:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
            raise Unreadable(f"{path} is not a readable .npz file: {e}") from None
        if not layers:  # by default every 2-D array is a layer; other keys are not features
            arrays = {k: v for k, v in arrays.items() if np.ndim(v) == 2}
    else:
        raise ValueError(f"FILE must end in .npz or .npy, got {path!r}")
    if "labels" not in extra:
        raise ValueError(f"{path} has no `labels` array (keys: {sorted(arrays)})")
    if layers:
        missing = [name for name in layers if name not in arrays]
        if missing:
            raise ValueError(f"--layer {missing[0]!r} is not in {path} (layers: {sorted(arrays)})")
        arrays = {name: arrays[name] for name in layers}
    elif "features" in arrays:
        arrays = {"features": arrays["features"]}
    if not arrays:
        raise ValueError(f"{path} holds no features (keys: {keys})")
    return arrays, extra["labels"], extra.get("W"), extra.get("b")


def write(result, out_dir):
    """out_dir/measure.json, atomically (NaN written as null)."""
    write_json(os.path.join(out_dir, "measure.json"), result)


REPORT_ORDER = ("nc1", "nc1_unnormalised", "nc1_quotient", "nc1_cdnv", "nc2_etf_H", "nc2_of_H",
                "equinorm_H", "equiangularity_H", "max_angle_H", "hyperspherical_distance",
                "hyperspherical_log", "rank_means", "rank_centred_means", "ncc_accuracy",
                "nc2_etf_W", "nc2_of_W", "nc3_etf", "nc3_of", "self_duality", "uniform_duality",
                "equinorm_W", "equiangularity_W", "max_angle_W", "nc4_mismatch",
                "nc4_mismatch_nobias", "accuracy", "bias_global_mean", "nc1_reference",
                "mean_shift", "ncc_accuracy_reference", "nc4_mismatch_reference",
                "accuracy_reference", "effective_rank", "effective_rank_means",
                "effective_rank_classes")


def _cell(v):
    if v is None:
        return "—"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def format_report(result):
    """The suite as text: one column per layer."""
    names = list(result["layers"])
    conv = result["conventions"]
    lines = [f"N = {result['N']}, K = {result['K']}, counts {result['counts']}; global mean: "
             f"{conv['global_mean']}, std: {conv['std']}, pinv rtol: {conv['pinv_rtol']}",
             f"{'measurement':<24}" + "".join(f"{n[:16]:>17}" for n in names)]
    for key in REPORT_ORDER:
        values = [result["layers"][n].get(key) for n in names]
        if all(v is None for v in values):
            continue
        lines.append(f"{key:<24}" + "".join(f"{_cell(v):>17}" for v in values))
    for n in names:
        for key, why in result["layers"][n]["undefined"].items():
            lines.append(f"undefined: {n}.{key}: {why}")
    pairing = result.get("classifier_rows")
    if pairing and pairing != "row k is label k":
        lines.append(f"classifier: W's {pairing}")
    for pair, value in (result.get("cka") or {}).items():
        lines.append(f"linear CKA {pair.replace('|', ' – ')}: {_cell(value)}")
    return "\n".join(lines)


CSV_COLUMNS = ("file", "layer", "N", "K", "d") + REPORT_ORDER


def csv_rows(results):
    """One row per (file, layer) of measure results: the file, the layer, N, K, d and every
    measurement in REPORT_ORDER (empty where undefined or not measured)."""
    rows = []
    for result in results:
        source = result.get("source", {})
        file = source.get("file") or "+".join(os.path.basename(f) for f in source.get("files", []))
        for layer, values in result["layers"].items():
            row = {"file": file, "layer": layer, "N": result["N"], "K": result["K"],
                   "d": values["d"]}
            row.update({k: values.get(k) for k in REPORT_ORDER})
            rows.append(row)
    return rows


def write_csv(results, out_dir):
    """out_dir/measure.csv (one row per file and layer), atomically."""
    import csv

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(results):
        writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                         for k, v in row.items()})
    data = text.getvalue().encode()
    atomic_write(os.path.join(out_dir, "measure.csv"), lambda fh: fh.write(data))
