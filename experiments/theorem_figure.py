"""The shared machinery of the theorem figures (Tirer & Bruna Figs. 2 and 5): one UFM run with
records every `log_every` steps, the objective against its closed form, NC1–NC3 on log scale."""

import ufm

from experiments import common

# Panels per model: title -> {legend: history key}. Only keys the model records are drawn.
PANELS = {
    "NC1 (within-class variability)": {
        "H": "nc1_H", "H1": "nc1_H1", "W1H1 (pre-ReLU)": "nc1_Z2", "H2": "nc1_H2"},
    "NC2 vs orthogonal frame": {
        "H̄": "nc2_of_H", "H̄1": "nc2_of_H1", "W1H̄1 (pre-ReLU)": "nc2_of_Z2", "H̄2": "nc2_of_H2",
        "W (last layer)": "nc2_of_W"},
    "NC2 vs simplex ETF": {
        "M̄ (centred H̄)": "nc2_etf_H", "M̄1": "nc2_etf_H1", "centred W1H̄1": "nc2_etf_Z2",
        "M̄2": "nc2_etf_H2", "W (last layer)": "nc2_etf_W"},
    "NC3 (alignment of W with the means)": {"OF: W H̄": "nc3_of", "ETF: W M̄": "nc3_etf"},
}


def setting_label(cfg):
    lams = ", ".join(f"{k}={cfg[k]:g}" for k in ("lam_W", "lam_H", "lam_b", "lam_W1", "lam_W2", "lam_H1")
                     if k in cfg)
    init = cfg["init_scale"]
    init = (", ".join(f"{k} {v:g}" for k, v in init.items()) if isinstance(init, dict)
            else f"{init:g}")
    return f"K={cfg['K']}, d={cfg['d']}, n={cfg['n']}, {lams}, GD step {cfg['lr']:g}, init std {init}"


def run(model, settings, args, desc):
    """Train with a progress bar; return (arrays, config) ready for `common.save`."""
    update, close = common.progress(settings["steps"], args.quiet, desc)
    r = ufm.train(model, progress=update, **settings)
    close()
    arrays = {"step": r.steps, **{f"h_{k}": v for k, v in r.history.items()},
              **{f"p_{k}": v for k, v in r.params.items()}}
    config = {"model": model, "config": r.config, "theory": ufm.theory.as_dict(r.theory),
              "restart_objectives": r.restart_objectives, "diverged_at": r.diverged_at}
    return arrays, config


def draw_row(axes, arrays, meta, closed_form_label="closed-form optimum"):
    """Objective with its closed form, relative gap, and the NC panels, on the given axes."""
    step = arrays["step"]
    obj = arrays["h_objective"]
    f_star = meta["theory"]["objective"]
    ax = axes[0]
    ax.semilogy(step, obj, label="objective (GD)")
    ax.axhline(f_star, color="k", ls="--", lw=1, label=f"{closed_form_label} {f_star:.6g}")
    ax.set_title("objective", fontsize=10)
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective (log scale)")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    common.log_curves(axes[1], step, {"|f − f*| / f*": (obj - f_star) / f_star},
                      "relative gap to the closed form", "relative gap (log scale)")
    for ax, (title, keys) in zip(axes[2:], PANELS.items()):
        curves = {lab: arrays[f"h_{k}"] for lab, k in keys.items() if f"h_{k}" in arrays}
        common.log_curves(ax, step, curves, title)


def script(name, model, full, smoke, title, extra_panel=None, doc=""):
    """(main, plot) of a one-run theorem figure: 2×3 panels, `title(meta)` as its title.

    extra_panel(ax, arrays, meta), if given, replaces nothing and draws a seventh panel (2×4 grid).
    """
    def plot(out):
        plt = common.pyplot()
        arrays, meta = common.load(out, name)
        cols = 4 if extra_panel else 3
        fig, axes = plt.subplots(2, cols, figsize=(5 * cols, 8))
        axes = axes.ravel()
        draw_row(axes, arrays, meta)
        if extra_panel:
            extra_panel(axes[6], arrays, meta)
        for ax in axes[7 if extra_panel else 6:]:
            ax.axis("off")
        fig.suptitle(f"{title(meta)}\n{setting_label(meta['config'])}  [our setting; the paper's "
                     f"values were lost from the seed text]", fontsize=11)
        common.tight_layout(fig, rect=(0, 0, 1, 0.95))
        return common.save_figure(fig, out, name)

    def main(argv=None):
        args = common.parse_args(name, doc, argv)
        arrays, config = run(model, smoke if args.smoke else full, args, name)
        return common.finish(args, name, arrays, config, plot)

    return main, plot
