"""Pictures of what the CLI writes (`ufm plot PATH`, or `--plot` on train/sweep/measure/proof).

Four kinds of output, recognised by their files:
- a run (result.json): the objective and its relative gap to the closed form (or, without one, to
  the certified global lower bound) against the step, and every recorded measurement;
- a sweep (sweep.npz + sweep.json): a heat map of one recorded array over two axes (default the
  first two traced ones), or lines over one axis; any other axis is sliced (`at`) or reduced by a
  stated rule; where the model's closed form has a threshold (the solution becomes zero, the bias
  saturates) its curve is drawn;
- measurements (measure.json): every metric per layer, one panel each;
- a proof check (proof.json): the gap of every step's inequality, at the random points and at the
  optimiser's solution.

Each plot returns a `Plot`: the PNG's path, and the arrays exactly as drawn (so a test can compare
them with the file's numbers). numpy and matplotlib only: neither JAX nor the simulator is
imported. Figures are made with matplotlib's object API (no pyplot, no global backend change) and
written atomically.
"""
import io
import json
import math
import os
from typing import NamedTuple

import numpy as np

from ufm.files import atomic_write

REDUCTIONS = {"min": np.nanmin, "max": np.nanmax, "mean": np.nanmean, "median": np.nanmedian}
KINDS = {"result.json": "train", "sweep.json": "sweep", "measure.json": "measure",
         "proof.json": "proof"}
TINY = 1e-300  # floor for log scales (an exact zero gap is drawn at the bottom)


class Plot(NamedTuple):
    path: str  # the PNG written
    kind: str  # train, sweep, measure or proof
    data: dict  # label -> the numbers drawn (numpy arrays), as they are in the file
    title: str


def find(path):
    """(kind, the JSON file) for a folder written by the CLI or one of its files; a ValueError
    naming what is allowed otherwise."""
    if os.path.isdir(path):
        found = [f for f in KINDS if os.path.isfile(os.path.join(path, f))]
        if len(found) != 1:
            what = "none" if not found else " and ".join(found)
            raise ValueError(f"path (PATH) must be a folder with one of {', '.join(KINDS)} (a "
                             f"train, sweep, measure or proof output), found {what} in {path}")
        return KINDS[found[0]], os.path.join(path, found[0])
    name = os.path.basename(path)
    if name == "sweep.npz":
        return "sweep", os.path.join(os.path.dirname(path), "sweep.json")
    if name not in KINDS or not os.path.isfile(path):
        raise ValueError(f"path (PATH) must be a train, sweep, measure or proof output (a folder, "
                         f"or its {', '.join(KINDS)}), got {path!r}")
    return KINDS[name], path


def _read_json(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as err:
        raise ValueError(f"path (PATH): cannot read {path}: {err}") from None


def _figure(panels, title, width=5.0):
    from matplotlib.figure import Figure

    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols, 3.8 * rows), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]
    fig.suptitle(title, fontsize=10)
    return fig, axes


def _save(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def _numbers(values):
    """A float array of a JSON list (None as NaN)."""
    return np.array([np.nan if v is None else v for v in values], np.float64)


def _log_ready(y):
    """y for a log axis: |y| with zeros at TINY (NaN stays NaN)."""
    return np.maximum(np.abs(y), TINY)


def _lam_text(config):
    return ", ".join(f"{k}={v:g}" for k, v in sorted(config.items())
                     if k.startswith("lam_") and isinstance(v, (int, float)))


def _counts_text(n):
    return "/".join(map(str, n)) if isinstance(n, list) else str(n)


# --- a run ------------------------------------------------------------------------------------

def run_title(doc):
    cfg = doc.get("config", {})
    return (f"ufm train {doc.get('model', cfg.get('model', '?'))}: K={cfg.get('K')}, "
            f"n={_counts_text(cfg.get('n'))}, d={cfg.get('d')}, {_lam_text(cfg)}; "
            f"{cfg.get('optimizer', 'gd')}, {cfg.get('dtype', '')}")


def history_series(history):
    """{name: values} of every per-step series of a run's history (a list per layer becomes
    name[l]), without `step`."""
    steps = len(history.get("step", []))
    out = {}
    for name, values in history.items():
        if name == "step" or not isinstance(values, list) or len(values) != steps or not steps:
            continue
        if isinstance(values[0], list):
            for i in range(len(values[0])):
                out[f"{name}[{i}]"] = _numbers([v[i] for v in values])
        elif all(v is None or isinstance(v, (int, float)) for v in values):
            out[name] = _numbers(values)
    return out


SHORT_HISTORY = 30  # records up to which a run's curves are drawn with markers
GROUPS = (("collapse (NC1–NC4)", ("nc", "cdnv", "han_", "self_duality", "mismatch", "ncc")),
          ("ranks (linear scale)", ("rank",)),
          ("norms, angles and the bias", ("norm", "cos", "angle", "equi", "b_", "rho",
                                          "nuclear")))


def group_series(series):
    """{panel title: [names]}: the measurements in panels by what they measure (collapse, ranks,
    norms and angles, the rest), empty panels left out."""
    out = {title: [] for title, _ in GROUPS}
    out["other measurements"] = []
    for name in series:
        low = name.lower()
        title = next((t for t, keys in GROUPS if any(k in low for k in keys)),
                     "other measurements")
        out[title].append(name)
    return {t: names for t, names in out.items() if names}


def _floored(ax, step, values, label, style):
    """|values| on a log axis; exact zeros drawn as ▼ at a floor a decade below the smallest
    nonzero value in the axis (not at 1e-308, which would squash every other curve)."""
    mag = np.abs(np.asarray(values, np.float64))
    positive = mag[np.isfinite(mag) & (mag > 0)]
    floor = positive.min() / 10 if positive.size else 1e-16
    line, = ax.plot(step, np.where(mag > 0, mag, np.nan), label=label, lw=1, **style)
    zero = mag == 0
    if zero.any():
        ax.plot(step[zero], np.full(zero.sum(), floor), "v", color=line.get_color(), ms=4,
                label=f"{label} = 0 (▼ at {floor:.0e})")


def plot_run(doc, png):
    if not isinstance(doc.get("history"), dict) or "step" not in doc["history"]:
        raise ValueError("path (PATH): this result.json has no history of steps: it is not a "
                         "ufm train result")
    history = doc["history"]
    step = _numbers(history.get("step", []))
    if step.size == 0:
        raise ValueError("path (PATH): the run's history is empty (no step was recorded: "
                         "--log-every larger than the steps run), nothing to plot")
    series = history_series(history)
    objective = series.pop("objective", None)
    data = {"step": step}
    reference, ref_name = None, None
    theory = doc.get("theory") or {}
    cert = doc.get("certificate") or {}
    if isinstance(theory.get("objective"), (int, float)):
        reference, ref_name = float(theory["objective"]), "closed form"
    elif isinstance(cert.get("lower_bound"), (int, float)):
        reference, ref_name = float(cert["lower_bound"]), "global lower bound"
    groups = group_series(series)
    fig, axes = _figure(1 + len(groups), run_title(doc), width=6.0)
    ax_f = axes[0]
    style = dict(marker="o", ms=3) if step.size <= SHORT_HISTORY else {}  # a few records: show them
    if objective is not None:
        data["objective"] = objective
        ax_f.plot(step, _log_ready(objective), label="objective f", **style)
        if reference is not None:
            gap = (objective - reference) / max(abs(reference), TINY)
            data["gap"] = gap
            _floored(ax_f, step, gap, f"|f − f*|/|f*| ({ref_name} f* = {reference:.6g})", style)
    ax_f.set(xlabel="step", yscale="log", title="objective")
    ax_f.legend(fontsize=7)
    for ax, (title, members) in zip(axes[1:], groups.items()):
        linear = title.startswith("ranks")
        for name in members:
            data[name] = series[name]
            if linear:
                ax.plot(step, series[name], label=name, lw=1, **style)
            else:
                _floored(ax, step, series[name], name, style)
        ax.set(xlabel="step", yscale="linear" if linear else "log", title=title)
        ax.legend(fontsize=6, ncol=2 if len(members) > 6 else 1)
    _save(fig, png)
    return Plot(png, "train", data, run_title(doc))


# --- a sweep ----------------------------------------------------------------------------------

def sweep_axes(config, arrays):
    """[(name, values)] of the sweep's result axes in order (static axes of several values where
    the arrays have them, the traced axes, the seed axis last)."""
    order = list(config.get("axes_order") or config.get("axes", {}))
    static = {k: v for k, v in (config.get("static") or {}).items() if len(v) > 1}
    axes = []
    for name in order:
        if name in static:
            axes.append((name, np.asarray(static[name])))
        elif name in config.get("axes", {}):
            values = np.asarray(config["axes"][name], np.float64)
            # a per-class hyperparameter's axis ([P, K] vectors): drawn, and --at picked, by index
            axes.append((name, np.arange(len(values)) if values.ndim == 2 else values))
    if config.get("seeds"):
        seed = config.get("seed", 0)
        axes.append(("seed", np.arange(seed, seed + config["seeds"])))
    return axes


def default_array(arrays):
    """The gap to the closed form where the sweep has one, else the global gap, else the
    objective."""
    if "theory_objective" in arrays and np.isfinite(arrays["theory_objective"]).any():
        return "gap"
    return "global_gap" if "global_gap" in arrays else "objective"


def sweep_values(arrays, name):
    """The array `name` of a sweep; 'gap' is |objective − theory_objective|/|theory_objective|."""
    if name == "gap":
        if "theory_objective" not in arrays:
            raise ValueError("array (--array) 'gap' needs a closed form (theory_objective), which "
                             "this sweep does not have")
        th = arrays["theory_objective"].astype(np.float64)
        return np.abs(arrays["objective"] - th) / np.maximum(np.abs(th), TINY)
    if name not in arrays:
        allowed = sorted(k for k, v in arrays.items() if v.dtype.kind in "biuf" and v.ndim > 1)
        raise ValueError(f"array (--array) must be one of gap, {', '.join(allowed)}; got {name!r}")
    values = arrays[name]
    if values.dtype.kind not in "biuf":
        raise ValueError(f"array (--array) must be numeric, {name!r} holds {values.dtype}")
    return values.astype(np.float64)


def parse_at(items, axes):
    """{axis: index} from ['AXIS=VALUE', …]: the grid value nearest VALUE (relative)."""
    names = dict(axes)
    out = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or name not in names:
            raise ValueError(f"at (--at) must be AXIS=VALUE with AXIS one of "
                             f"{', '.join(names)}; got {item!r}")
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f"at (--at) needs a number after {name}=, got {value!r}") from None
        grid = names[name].astype(np.float64)
        out[name] = int(np.argmin(np.abs(grid - v) / np.maximum(np.abs(grid), TINY)))
    return out


def _log_axis(values):
    v = np.asarray(values, np.float64)
    return bool(v.size > 2 and (v > 0).all() and v.max() / v.min() >= 20)


def _edges(v, log):
    """Cell edges around grid values (geometric midpoints on a log axis)."""
    v = np.asarray(v, np.float64)
    if v.size == 1:
        return np.array([v[0] / 2, v[0] * 2]) if log else np.array([v[0] - 0.5, v[0] + 0.5])
    t = np.log(v) if log else v
    mid = (t[1:] + t[:-1]) / 2
    e = np.concatenate([[2 * t[0] - mid[0]], mid, [2 * t[-1] - mid[-1]]])
    return np.exp(e) if log else e


def reduce_to(values, axes, keep, at, rule):
    """values with every axis not in `keep` sliced at `at` or reduced by `rule`; returns (the
    array over `keep` in that order, the words saying what was done)."""
    names = [a for a, _ in axes]
    words = []
    for name in reversed(names):  # innermost first, so indices stay valid
        if name in keep:
            continue
        i = names.index(name)
        if name in at:
            values = np.take(values, at[name], axis=i)
            words.append(f"{name}={dict(axes)[name][at[name]]:g}")
        else:
            values = REDUCTIONS[rule](values, axis=i)
            words.append(f"{rule} over {name}")
        names.pop(i)
    order = [names.index(k) for k in keep]
    return np.transpose(values, order), ", ".join(reversed(words))


def sweep_title(config):
    static = {k: v[0] for k, v in (config.get("static") or {}).items() if len(v) == 1}
    fixed = ", ".join(f"{k}={_counts_text(v)}" for k, v in static.items())
    base = _lam_text({k: v for k, v in (config.get("base") or {}).items()
                      if k not in config.get("axes", {})})
    return (f"ufm sweep {config.get('model')}: {fixed}; {base}; {config.get('optimizer', 'gd')}, "
            f"{config.get('steps')} steps, {config.get('dtype', '')}").replace("; ;", ";")


def plot_sweep(config, arrays, png, *, array=None, x=None, y=None, at=(), reduce="median"):
    """A heat map of `array` over axes x (columns) and y (rows), or lines over x when the sweep has
    one axis or y is 'none'."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce (--reduce) must be one of {', '.join(REDUCTIONS)}, got "
                         f"{reduce!r}")
    axes = sweep_axes(config, arrays)
    names = [a for a, _ in axes]
    array = array or default_array(arrays)
    values = sweep_values(arrays, array)
    if values.ndim != len(axes):
        raise ValueError(f"array (--array) {array!r} has {values.ndim} axes, the sweep {len(axes)}")
    if not axes:  # a one-point sweep: its value, as a bar
        return _one_point(config, values, array, png)
    at = parse_at(at, axes)
    free = [n for n in names if n not in at]
    x = x or (free[0] if free else None)
    if y is None:
        y = next((n for n in free if n != x and n != "seed"), "none")
    for flag_name, value in (("x", x), ("y", y)):
        if value is not None and value != "none" and value not in names:
            raise ValueError(f"{flag_name} (--{flag_name}) must be one of {', '.join(names)}"
                             f"{' or none' if flag_name == 'y' else ''}, got {value!r}")
    if x is None or x == y:
        raise ValueError(f"x (--x) and y (--y) must be two different axes of {', '.join(names)}")
    keep = [x] if y == "none" else [y, x]
    grid, rule = reduce_to(values, axes, keep, {k: v for k, v in at.items() if k not in keep},
                           reduce)
    vals = dict(axes)
    title = sweep_title(config)
    label = array if array != "gap" else "|f − f*|/|f*| (closed form f*)"
    data = {array: grid, x: vals[x]}
    fig, (ax,) = _figure(1, title, width=7.0)
    xlog = _log_axis(vals[x])
    if y == "none":
        ax.plot(vals[x], grid, "o-")
        ax.set(xlabel=x, ylabel=label, xscale="log" if xlog else "linear")
        if (grid > 0).all() and np.nanmax(grid) / max(np.nanmin(grid), TINY) > 100:
            ax.set_yscale("log")
    else:
        data[y] = vals[y]
        ylog = _log_axis(vals[y])
        positive = grid[np.isfinite(grid)]
        log_colours = positive.size and (positive >= 0).all() and (
            positive.max() / max(positive[positive > 0].min(initial=np.inf), TINY) > 100)
        from matplotlib.colors import LogNorm

        shown = np.maximum(grid, positive[positive > 0].min(initial=1.0)) if log_colours else grid
        mesh = ax.pcolormesh(_edges(vals[x], xlog), _edges(vals[y], ylog), shown,
                             norm=LogNorm() if log_colours else None, shading="flat")
        fig.colorbar(mesh, ax=ax, label=label)
        ax.set(xlabel=x, ylabel=y, xscale="log" if xlog else "linear",
               yscale="log" if ylog else "linear")
        for key, text, colour in (("theory_c_ratio", "solution becomes zero", "w"),
                                  ("theory_bias_ratio", "bias saturates", "c")):
            if key not in arrays or not np.isfinite(arrays[key]).any():
                continue
            ratio, _ = reduce_to(arrays[key].astype(np.float64), axes, keep, at, "median")
            if np.nanmin(ratio) < 1 < np.nanmax(ratio):
                data[key] = ratio
                ax.contour(vals[x], vals[y], ratio, levels=[1.0], colors=colour,
                           linestyles="--", linewidths=1.5)
                ax.plot([], [], "--", color=colour, label=f"closed form: {text}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower left")
    for name, set_ticks in ((x, ax.set_xticks), (y, ax.set_yticks)):
        vectors = np.asarray((config.get("axes") or {}).get(name, []), np.float64)
        if vectors.ndim == 2:  # a per-class axis: one tick per vector, labelled with it
            set_ticks(np.arange(len(vectors)),
                      [",".join(f"{v:g}" for v in row) for row in vectors], fontsize=7)
    ax.set_title(f"{label}" + (f" ({rule})" if rule else ""), fontsize=9)
    _save(fig, png)
    return Plot(png, "sweep", data, title)


# --- measurements -----------------------------------------------------------------------------

def measure_series(doc):
    """{metric: [value per layer]} of a measure.json (NaN where a layer lacks it), and the layer
    names; for several files (`{"files": [...]}`) one entry per file and layer, named
    FILE:LAYER."""
    docs = doc["files"] if "files" in doc else [doc]
    entries = []  # (label, values of that layer)
    for d in docs:
        name = os.path.splitext(os.path.basename(d.get("source", {}).get("file", "")))[0]
        for layer, values in d.get("layers", {}).items():
            entries.append((f"{name}:{layer}" if len(docs) > 1 else layer, values))
    metrics = []
    for _, values in entries:
        for k, v in values.items():
            if k not in metrics and k not in ("d", "undefined") and (
                    v is None or isinstance(v, (int, float))):
                metrics.append(k)
    return ({m: _numbers([values.get(m) for _, values in entries]) for m in metrics},
            [label for label, _ in entries])


def plot_measure(doc, png):
    series, layers = measure_series(doc)
    first = doc["files"][0] if "files" in doc else doc
    conv = first.get("conventions", {})
    what = (f"{len(doc['files'])} files" if "files" in doc else
            os.path.basename(first.get("source", {}).get("file", "")))
    title = (f"ufm measure {what}: N={first.get('N')}, K={first.get('K')}; global mean: "
             f"{conv.get('global_mean')}, std: {conv.get('std')}, pinv cut-off "
             f"{conv.get('pinv_rtol')}")
    fig, axes = _figure(max(len(series), 1), title, width=3.6)
    where = np.arange(len(layers))
    for ax, (name, values) in zip(axes, series.items()):
        ax.plot(where, values, "o-")
        finite = values[np.isfinite(values)]
        if finite.size and (finite > 0).all() and finite.max() / finite.min() > 10:
            ax.set_yscale("log")
        ax.set_xticks(where, layers, fontsize=7)
        ax.set_title(name, fontsize=8)
    _save(fig, png)
    return Plot(png, "measure", dict(series, layer=np.array(layers)), title)


# --- a proof check ----------------------------------------------------------------------------

def proof_series(doc):
    """{step name: (gaps at the random points, gaps at the optimum)} in the file's order."""
    out = {}
    for s in doc.get("steps", []):
        rnd, opt = out.setdefault(s["name"], ([], []))
        (opt if s.get("at") == "optimum" else rnd).append(
            np.nan if s.get("gap") is None else s["gap"])
    return {k: (np.array(r, np.float64), np.array(o, np.float64)) for k, (r, o) in out.items()}


def plot_proof(doc, png):
    series = proof_series(doc)
    cfg = doc.get("config", {})
    title = (f"ufm proof {doc.get('theorem')} ({doc.get('title', '')}): K={cfg.get('K')}, "
             f"n={_counts_text(cfg.get('n'))}, d={cfg.get('d')}, {_lam_text(cfg)}; "
             f"{cfg.get('optimizer', 'gd')}, {cfg.get('dtype', '')}")
    fig, (ax,) = _figure(1, title, width=8.0)
    data = {}
    for i, (name, (rnd, opt)) in enumerate(series.items()):
        data[f"{name}/random"], data[f"{name}/optimum"] = rnd, opt
        ax.scatter(np.full(rnd.size, i) + np.linspace(-0.25, 0.25, rnd.size),
                   _log_ready(rnd), s=6, color="tab:blue", label="random points" if not i else None)
        ax.scatter(np.full(opt.size, i), _log_ready(opt), marker="*", s=80, color="tab:red",
                   label="optimiser's solution" if not i else None)
    ax.set_xticks(np.arange(len(series)), list(series), rotation=20, fontsize=7)
    ax.set(yscale="log", ylabel="|gap| of the step's inequality")
    ax.legend(fontsize=7)
    _save(fig, png)
    return Plot(png, "proof", data, title)


# --- entry point ------------------------------------------------------------------------------

def _one_point(config, values, array, png):
    """The plot of a sweep with no axis: its one value of `array`, labelled."""
    value = float(np.asarray(values).reshape(-1)[0])
    fig, (ax,) = _figure(1, sweep_title(config), width=5.0)
    ax.bar([array], [value])
    ax.annotate(f"{value:.6g}", (0, value), ha="center", va="bottom")
    ax.set(ylabel=array, title="one configuration (a sweep with no axis)")
    _save(fig, png)
    return Plot(png, "sweep", {array: np.asarray([value])}, sweep_title(config))


def plot(path, out=None, **sweep_options):
    """Plot the output at `path` (a folder written by ufm train/sweep/measure/proof, or its JSON
    file) to `out` (default: plot.png beside the data). sweep_options: array, x, y, at, reduce
    (sweeps only). Returns a Plot."""
    kind, file = find(path)
    png = out or os.path.join(os.path.dirname(file), "plot.png")
    if not png.endswith(".png"):
        raise ValueError(f"out (--out) must be a .png file, got {png!r}")
    given = {k: v for k, v in sweep_options.items() if v not in (None, (), [])}
    if given and kind != "sweep" and set(given) != {"reduce"}:
        raise ValueError(f"{', '.join('--' + k for k in given)} only apply to a sweep; "
                         f"{path} is a {kind} output")
    doc = _read_json(file)
    if kind == "sweep":
        npz = os.path.join(os.path.dirname(file), "sweep.npz")
        try:
            with np.load(npz, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:
            raise ValueError(f"path (PATH): cannot read {npz}: {err}") from None
        return plot_sweep(doc, arrays, png, **sweep_options)
    return {"train": plot_run, "measure": plot_measure, "proof": plot_proof}[kind](doc, png)


__all__ = ["Plot", "plot", "find", "plot_run", "plot_sweep", "plot_measure", "plot_proof",
           "history_series", "measure_series", "proof_series", "sweep_axes", "sweep_values"]
