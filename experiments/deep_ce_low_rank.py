"""Figure `deep_ce_low_rank` — the deep linear cross-entropy UFM (Garrod & Keating 2025): deep neural
collapse (DNC) is the global optimum only at small depth; the low-rank solution wins deeper.

For each K and depth L, the two reference values from 1-D minimisations (docs/theory.md, "Deep
linear cross-entropy"): f_DNC (class-mean logits α·P, rank K − 1) and f_LR (K/2 blocks
β[[1, −1], [−1, 1]], rank K/2), against the lowest objective L-BFGS found over many seeds, and
the fraction of seeds whose centred class-mean logits have each numerical rank. The same grid from
the command line (one compiled program per (L, K)):
  ufm sweep deep-linear-ce --x64 --depth 1,2,3,4,5 --K 4,6,10 --n 5 --d 16 \
      --lam-H1 0.001953125 --lam-W 0.001953125 --optimizer lbfgs --init-scale 0.5 --seeds 200
"""
import numpy as np

from ufm import metrics, sweep, theory
from ufm.models import Sizes

from experiments import common

NAME = "deep_ce_low_rank"
FULL = dict(Ks=[4, 6, 10], depths=[1, 2, 3, 4, 5], n=5, d=16, lam=2.0 ** -9, seeds=200,
            steps=5000, init_scale=0.5)
SMOKE = dict(FULL, Ks=[4], depths=[3], seeds=3, steps=50)


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    static = {"depth": cfg["depths"], "K": cfg["Ks"], "d": [cfg["d"]], "n": [cfg["n"]]}
    update, close = common.progress(len(cfg["depths"]) * len(cfg["Ks"]), args.quiet, NAME)
    arrays, config = sweep.run_grid(
        "deep-linear-ce", static, {"lam_H1": cfg["lam"], "lam_W": cfg["lam"]}, {},
        order=["depth", "K"], steps=cfg["steps"], init_scale=cfg["init_scale"],
        optimizer="lbfgs", seeds=cfg["seeds"], progress=update and (lambda d, t: update(d)))
    close()
    refs = {"f_dnc": [], "f_lr": []}
    for L in cfg["depths"]:
        rows = [theory.deep_cross_entropy(
            {"lam_H1": cfg["lam"], **{f"lam_W{l}": cfg["lam"] for l in range(1, L + 1)}},
            Sizes(K, cfg["n"], cfg["d"]), L) for K in cfg["Ks"]]
        refs["f_dnc"].append([p.dnc for p in rows])
        refs["f_lr"].append([np.nan if p.low_rank is None else p.low_rank for p in rows])
    shape = (len(cfg["depths"]), len(cfg["Ks"]), cfg["seeds"])  # a single K or L is no axis
    keep = ("objective", "rank_centred_logits", "reached", "converged", "grad_norm",
            "steps_taken")
    out = {k: arrays[k].reshape(shape) for k in keep}
    out.update(depth=np.asarray(cfg["depths"]), K=np.asarray(cfg["Ks"]), seed=arrays["seed"])
    out.update({k: np.asarray(v) for k, v in refs.items()})
    return common.finish(args, NAME, out, dict(cfg, rank_tol=metrics.RANK_TOL,
                                          certificate_tol=config["certificate_tol"]), plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    Ks, depths = list(a["K"]), list(a["depth"])
    fig, axes = plt.subplots(2, len(Ks), figsize=(6 * len(Ks), 9), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, K in enumerate(Ks):
        ax = axes[0, j]
        obj = a["objective"][:, j]  # [L, seeds]
        ax.plot(depths, a["f_dnc"][:, j], "-", color=colors[0], label="f_DNC (rank K−1)")
        ax.plot(depths, a["f_lr"][:, j], "-", color=colors[1], label="f_LR (rank K/2)")
        ax.plot(depths, np.nanmin(obj, axis=1), "kx", ms=9, mew=2,
                label=f"lowest of {obj.shape[1]} L-BFGS seeds")
        for i, L in enumerate(depths):
            winner = "DNC" if a["f_dnc"][i, j] < a["f_lr"][i, j] else "LR"
            ax.annotate(winner, (L, a["f_dnc"][i, j]), textcoords="offset points",
                        xytext=(0, 8), ha="center", fontsize=8)
        ax.set_xticks(depths)
        ax.set_xlabel("depth L (weight matrices after H1)")
        ax.set_ylabel("objective")
        ax.set_title(f"K = {K}: the lower reference is optimal-so-far (label: which)", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax = axes[1, j]
        ranks = a["rank_centred_logits"][:, j]  # [L, seeds]
        bottom = np.zeros(len(depths))
        for r in range(1, K):
            frac = (ranks == r).mean(axis=1)
            if frac.any():
                ax.bar(depths, frac, bottom=bottom, label=f"rank {r}", color=colors[r % len(colors)])
                bottom += frac
        ax.set_xticks(depths)
        ax.set_ylim(0, 1)
        ax.set_xlabel("depth L")
        ax.set_ylabel("fraction of seeds")
        ax.set_title(f"K = {K}: numerical rank of the centred class-mean logits "
                     f"(DNC: {K - 1}, LR: {K // 2})", fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"Deep linear cross-entropy UFM: n={cfg['n']}, d={cfg['d']}, every λ = "
                 f"{cfg['lam']:g}, L-BFGS from init std {cfg['init_scale']:g}, "
                 f"{cfg['seeds']} seeds per (K, L), rank cut-off {cfg['rank_tol']:g}·σ_max  "
                 f"[our setting; Garrod & Keating 2025]", fontsize=11)
    common.tight_layout(fig, rect=(0, 0, 1, 0.95))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
