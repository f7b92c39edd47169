"""Figure `imbalanced_ce` — the certified optimum of the cross-entropy UFM under class imbalance
(docs/theory.md §5): K classes, the first K − m with R·n_min samples, the m minority classes with
n_min, across the imbalance ratio R for several λ = λ_W = λ_H. The convex solver gives the global
minimum with a dual certificate at every point; from it, the angle between the minority classes'
classifier vectors (minority collapse: → 0°) and the rank of W. L-BFGS and plain GD from random
seeds are rated by their own certificate: global (gap to the dual bound ≤ the tolerance), local
(converged — small gradient — but not global), or stalled (not converged)."""
import numpy as np

import ufm
from ufm import sweep

from experiments import common

NAME = "imbalanced_ce"
FULL = dict(K=4, minority=2, n_min=1, d=8, ratios=[1, 2, 4, 8, 16, 32, 64, 128],
            lams=[1e-2, 3e-3, 1e-3], seeds=8, lbfgs_steps=3000, gd_steps=20000, gd_lr=1.0,
            init_scale=0.5)
SMOKE = dict(FULL, ratios=[1], lams=[1e-2], seeds=2, lbfgs_steps=300, gd_steps=200)


def counts(cfg, R):
    return (R * cfg["n_min"],) * (cfg["K"] - cfg["minority"]) + (cfg["n_min"],) * cfg["minority"]


def threshold(cfg, lam):
    """R* where the minority classifiers coincide (ufm.theory.minority_collapse_ratio, μ = λ)."""
    from ufm import theory

    return theory.minority_collapse_ratio(cfg["K"] - cfg["minority"], cfg["minority"],
                                          cfg["n_min"], lam)


def minority_angle(W, m):
    """Mean angle (degrees) between the last m rows of W (the minority classifiers)."""
    V = W[-m:] / np.linalg.norm(W[-m:], axis=1, keepdims=True)
    G = V @ V.T
    cos = G[~np.eye(m, dtype=bool)].mean()
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def rated_seeds(cfg, lam, optimizer, steps, lr, quiet):
    """Every seed at every R, by one compiled program per R: the verdict counts
    [R, 3] (global, local, stalled)."""
    static = {"K": [cfg["K"]], "d": [cfg["d"]], "n": [counts(cfg, R) for R in cfg["ratios"]]}
    update, close = common.sweep_progress(quiet, f"{NAME} {optimizer} λ={lam:g}")
    arrays, _ = sweep.run_grid(
        "ce", static, {"lam_W": lam, "lam_H": lam}, {}, order=["n"], steps=steps, lr=lr,
        init_scale=cfg["init_scale"], seeds=cfg["seeds"], optimizer=optimizer, progress=update)
    close()
    glob, conv = arrays["global"], arrays["converged"]
    return np.stack([glob.sum(-1), (conv & ~glob).sum(-1), (~conv & ~glob).sum(-1)], axis=-1), \
        arrays["objective"]


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    L, Rn = len(cfg["lams"]), len(cfg["ratios"])
    out = {k: np.full((L, Rn), np.nan) for k in ("optimum", "gap", "angle", "rank")}
    rated = {o: np.zeros((L, Rn, 3), int) for o in ("lbfgs", "gd")}
    best = {o: np.full((L, Rn, cfg["seeds"]), np.nan) for o in ("lbfgs", "gd")}
    for i, lam in enumerate(cfg["lams"]):
        for j, R in enumerate(cfg["ratios"]):
            r = ufm.train("ce", K=cfg["K"], n=counts(cfg, R), d=cfg["d"], lam_W=lam, lam_H=lam,
                          optimizer="convex", steps=100000, log_every=100000)
            W = r.params["W"]
            s = np.linalg.svd(W, compute_uv=False)
            out["optimum"][i, j] = r.final["objective"]
            out["gap"][i, j] = r.certificate["global_gap"]
            out["angle"][i, j] = minority_angle(W, cfg["minority"])
            out["rank"][i, j] = int(np.sum(s > 1e-6 * s[0]))
        for opt, steps, lr in (("lbfgs", cfg["lbfgs_steps"], 0.1),
                               ("gd", cfg["gd_steps"], cfg["gd_lr"])):
            rated[opt][i], best[opt][i] = rated_seeds(cfg, lam, opt, steps, lr, args.quiet)
    arrays = dict(out, ratios=np.asarray(cfg["ratios"]), lams=np.asarray(cfg["lams"]),
                  lbfgs_rated=rated["lbfgs"], gd_rated=rated["gd"],
                  lbfgs_objective=best["lbfgs"], gd_objective=best["gd"])
    return common.finish(args, NAME, arrays, cfg, plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    R, lams = a["ratios"], a["lams"]
    fig, axes = plt.subplots(1, 4, figsize=(22, 5))
    for i, lam in enumerate(lams):
        axes[0].plot(R, a["angle"][i], "o-", label=f"λ = {lam:g}")
        axes[1].plot(R, a["rank"][i], "o-", label=f"λ = {lam:g}")
        axes[2].plot(R, np.clip(np.abs(a["gap"][i]), 1e-17, None), "o-", label=f"λ = {lam:g}")
        colour = axes[0].lines[-1].get_color()
        collapsed = np.flatnonzero(a["angle"][i] < 1.0)
        if collapsed.size:
            axes[0].axvline(R[collapsed[0]], ls=":", color=colour, lw=1)
        star = threshold(cfg, lam)
        if star <= R.max() * 4:
            axes[0].axvline(star, ls="--", color=colour, lw=1.2,
                            label=f"R* = {star:.4g}: derived threshold √n_min = λN")
    axes[0].axhline(np.degrees(np.arccos(-1 / (cfg["K"] - 1))), color="grey", ls="--", lw=1,
                    label="simplex ETF angle")
    axes[0].set_title("certified optimum: angle between the minority classifiers\n(dotted: "
                      "first R with angle < 1°; dashed: the derived threshold R*, theory.md §5.5)",
                      fontsize=10)
    axes[0].set_ylabel("degrees")
    axes[1].set_title("certified optimum: rank of W", fontsize=10)
    axes[2].set_title("convex solver: objective − dual lower bound", fontsize=10)
    axes[2].set_yscale("log")
    width = 0.8 / len(lams)
    x = np.arange(len(R))
    colours = {"global": "tab:green", "local": "tab:orange", "stalled": "tab:red"}
    for i, lam in enumerate(lams):
        for o, opt, hatch in ((0, "lbfgs", ""), (1, "gd", "//")):
            bottom = np.zeros(len(R))
            for v, verdict in enumerate(("global", "local", "stalled")):
                frac = a[f"{opt}_rated"][i, :, v] / cfg["seeds"]
                axes[3].bar(x + (i - (len(lams) - 1) / 2) * width + (o - 0.5) * width / 2, frac,
                            width / 2, bottom=bottom, color=colours[verdict], hatch=hatch,
                            edgecolor="k", lw=0.3,
                            label=f"{verdict} ({'L-BFGS' if o == 0 else 'GD'})"
                            if i == 0 and True else None)
                bottom += frac
    axes[3].set_xticks(x, [str(r) for r in R])
    axes[3].set_title(f"{cfg['seeds']} seeds per point, rated by their certificate\n(plain: "
                      f"L-BFGS; hatched: GD {cfg['gd_steps']} steps of {cfg['gd_lr']:g}; bars "
                      f"left to right: λ = {', '.join(f'{v:g}' for v in lams)})", fontsize=10)
    handles, labels = axes[3].get_legend_handles_labels()
    keep = dict(zip(labels, handles))
    axes[3].legend(keep.values(), keep.keys(), fontsize=7, loc="lower left")
    for ax in axes[:3]:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("imbalance ratio R (majority / minority count)")
        ax.legend(fontsize=8)
    axes[3].set_xlabel("imbalance ratio R")
    fig.suptitle(f"Cross-entropy UFM under imbalance, certified: K = {cfg['K']} ({cfg['minority']} "
                 f"minority classes of {cfg['n_min']} sample{'s' * (cfg['n_min'] > 1)}, the "
                 f"others R·{cfg['n_min']}), d = {cfg['d']}, λ_W = λ_H = λ, float64  [our "
                 f"setting]", fontsize=11)
    common.tight_layout(fig, rect=(0, 0, 1, 0.93))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
