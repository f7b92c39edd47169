"""What every experiment script shares: arguments, saving data atomically, progress, plot style.

A script parses its arguments, runs the library, saves `DATA/NAME.npz` + `DATA/NAME.json`, then
draws `OUT/NAME.png` from the saved files only.
"""
import argparse
import json
import os

import numpy as np

FIGURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "figures")
DPI = {"figure": 110, "smoke": 30}  # a smoke run checks that the figure draws, not how it looks
_dpi = [DPI["figure"]]


def parse_args(name, description, argv=None, extra=None):
    """Common flags: --smoke (tiny sizes, seconds), --quiet, --out DIR, --float32."""
    p = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description)
    p.add_argument("--smoke", action="store_true", help="tiny sizes for a quick check")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", default=FIGURES, help="folder for the PNG (data under OUT/data)")
    p.add_argument("--float32", action="store_true",
                   help="run in float32 (default float64, to show collapse to round-off)")
    if extra:
        extra(p)
    args = p.parse_args(argv)
    _dpi[0] = DPI["smoke" if args.smoke else "figure"]
    if not args.float32:
        import jax  # the script is the caller: it chooses the precision of its own process

        jax.config.update("jax_enable_x64", True)
    from ufm import cache

    if cache.wanted(True):  # as the CLI: a rerun loads its compiled programs (docs/usage.md)
        cache.enable_compilation_cache()
    return args


def data_paths(out, name):
    d = os.path.join(out, "data")
    return os.path.join(d, f"{name}.npz"), os.path.join(d, f"{name}.json")


def save(out, name, arrays, config):
    """Write OUT/data/NAME.npz and NAME.json atomically."""
    from ufm.files import write_json, write_npz

    npz, js = data_paths(out, name)
    write_npz(npz, arrays)
    write_json(js, config)


def finish(args, name, arrays, config, plot):
    """Every script's epilogue: save its data (`save`), then draw the figure from the saved files
    only (`plot(out)`); returns the figure's path."""
    save(args.out, name, arrays, config)
    return plot(args.out)


def load(out, name):
    npz, js = data_paths(out, name)
    with np.load(npz) as f:
        arrays = {k: f[k] for k in f.files}
    with open(js) as fh:
        return arrays, json.load(fh)


def progress(total, quiet, desc):
    """A tqdm bar on stderr; returns (callback(done), close())."""
    from ufm.progress import progress_bar

    return progress_bar(total, quiet, desc)


def tight_layout(fig, rect=(0, 0, 1, 1)):
    """fig.tight_layout(rect=rect) — except in a smoke run, which checks that a figure draws,
    not how it looks (the layout solver measures every tick label: half a smoke figure's time)."""
    if _dpi[0] != DPI["smoke"]:
        fig.tight_layout(rect=rect)


def save_figure(fig, out, name):
    """Save OUT/NAME.png atomically and close the figure."""
    import matplotlib.pyplot as plt

    from ufm.files import atomic_write

    path = os.path.join(out, f"{name}.png")
    smoke = _dpi[0] == DPI["smoke"]  # a smoke run: no second layout pass for a tight box
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=_dpi[0],
                                              bbox_inches=None if smoke else "tight"))
    plt.close(fig)
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_curves(ax, x, curves, title, ylabel="value (log scale)", xlabel="iteration"):
    """Curves {label: y} on a log-y axis; non-positive values are clipped to 1e-17."""
    for label, y in curves.items():
        ax.semilogy(x, np.clip(np.abs(np.asarray(y, dtype=float)), 1e-17, None), label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7)


def sweep_progress(quiet, desc):
    """A bar over a whole `ufm.sweep` call: (progress(done, total) for the sweep, close())."""
    update, close = progress(1, quiet, desc)
    return (None if update is None else (lambda done, total: update(done / total))), close


def heatmap(fig, ax, x, y, z, title, xlabel, ylabel, log=True, vmin=None, vmax=None):
    """z [len(x), len(y)] over log-spaced axes, on a log colour scale when `log` (|z| clipped at
    1e-17, so exact zeros show as the floor)."""
    from matplotlib.colors import LogNorm

    z = np.asarray(z, float)
    norm = None
    if log:
        z = np.clip(np.abs(z), 1e-17, None)
        norm = LogNorm(vmin=vmin or max(z[np.isfinite(z)].min(), 1e-16),
                       vmax=vmax or z[np.isfinite(z)].max())
    im = ax.pcolormesh(x, y, z.T, norm=norm, shading="nearest", cmap="viridis")
    fig.colorbar(im, ax=ax)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)

