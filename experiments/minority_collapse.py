"""Figure `minority_collapse` — fixed simplex-ETF classifier against the learnable layer-peeled
model (LPM) as the imbalance ratio R = n_majority/n_minority grows (docs/theory.md §3.9, seeds 000/004):
the angle between the minority classes' classifier vectors collapses toward 0 in the LPM (minority
collapse), stays at the balanced ETF angle arccos(−1/(K−1)) with the fixed ETF, and is kept by
the LPM with per-class weights α_k = 1/n_k."""
import math

import numpy as np

import ufm

from experiments import common

NAME = "minority_collapse"
FULL = dict(K=4, d=8, majority=2, n_minority=2, ratios=[1, 2, 3, 5, 8, 12, 20, 35, 60, 100],
            steps=20000, lr=0.5, E_H=1.0, E_W=1.0)
SMOKE = dict(FULL, ratios=[1, 10], steps=200)
RUNS = {"LPM (learnable W)": dict(model="lpm"),
        "LPM, α_k = 1/n_k": dict(model="lpm", alpha="inverse-count"),
        "fixed simplex ETF": dict(model="fixed-etf")}


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    K, m = cfg["K"], cfg["majority"]
    arrays = {"ratio": np.array(cfg["ratios"], float)}
    update, close = common.progress(len(RUNS) * len(cfg["ratios"]), args.quiet, NAME)
    done = 0
    for label, run in RUNS.items():
        cos, align = [], []
        for R in cfg["ratios"]:
            n = tuple([R * cfg["n_minority"]] * m + [cfg["n_minority"]] * (K - m))
            lams = {k: cfg[k] for k in (("E_H", "E_W") if run["model"] == "lpm" else ("E_H",))}
            r = ufm.train(run["model"], K=K, n=n, d=cfg["d"], steps=cfg["steps"],
                          log_every=cfg["steps"], lr=cfg["lr"], alpha=run.get("alpha"), **lams)
            W = r.params["W"] if "W" in r.params else r.params["E"].T
            cos.append(float(ufm.models.constrained.minority_cosine(W, n)))
            align.append(r.final["cos_prototype_min"])
            done += 1
            if update:
                update(done)
        arrays[f"{label}/minority_cos"] = np.array(cos)
        arrays[f"{label}/cos_prototype_min"] = np.array(align)
    close()
    return common.finish(args, NAME, arrays, dict(cfg, runs=RUNS), plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    K = cfg["K"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for label in cfg["runs"]:
        angle = np.degrees(np.arccos(np.clip(a[f"{label}/minority_cos"], -1, 1)))
        axes[0].semilogx(a["ratio"], angle, "o-", ms=4, label=label)
        axes[1].semilogx(a["ratio"], 1 - a[f"{label}/cos_prototype_min"] + 1e-17, "o-", ms=4,
                         label=label)
    balanced = math.degrees(math.acos(-1 / (K - 1)))
    axes[0].axhline(balanced, color="k", ls=":", lw=0.8,
                    label=f"balanced ETF angle arccos(−1/(K−1)) = {balanced:.2f}°")
    axes[0].set_ylabel("angle between the minority classes' classifier vectors (degrees)")
    axes[0].set_title("minority collapse: LPM → 0°, fixed ETF keeps its angle", fontsize=9)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("1 − min_k cos(class mean h̄_k, its classifier vector)")
    axes[1].set_title("features against their own class vector", fontsize=9)
    for ax in axes:
        ax.set_xlabel("imbalance ratio R = n_majority / n_minority (log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Fixed simplex-ETF classifier vs the layer-peeled model under imbalance: K={K} "
                 f"({cfg['majority']} majority classes of R·{cfg['n_minority']} samples, "
                 f"{K - cfg['majority']} minority of {cfg['n_minority']}), d={cfg['d']}, "
                 f"E_H=E_W={cfg['E_H']:g}, CE, {cfg['steps']} projected GD steps of "
                 f"{cfg['lr']:g} [our setting]", fontsize=10)
    common.tight_layout(fig, rect=(0, 0, 1, 0.93))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
