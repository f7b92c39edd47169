"""Figure `orthogonal_classifier` — the fixed non-negative orthogonal classifier (Kim & Kim,
seed 004, docs/theory.md §3.9): with ‖h‖² ≤ E_H and Σ_{j≠k} hᵀq_j ≥ 0, CE drives every feature to √E_H·q_k,
so the class means form an orthogonal frame centred at the origin (zero-mean collapse: Gram
E_H·I) and each class uses only the coordinates of its own q_k (feature dimension separation)."""
import numpy as np

import ufm
from ufm import metrics
from ufm.models import Sizes

from experiments import common

NAME = "orthogonal_classifier"
FULL = dict(K=4, d=12, n=(20, 10, 5, 2), E_H=1.0, lr=20.0, steps=1000, log_every=2)
SMOKE = dict(FULL, steps=100, log_every=10)


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    r = ufm.train("fixed-orthogonal", K=cfg["K"], n=cfg["n"], d=cfg["d"], steps=cfg["steps"],
                  log_every=cfg["log_every"], lr=cfg["lr"], E_H=cfg["E_H"])
    means = np.asarray(metrics.class_means(r.params["H"], Sizes(cfg["K"], cfg["n"], cfg["d"]).classes))
    arrays = {"Q": r.params["E"], "means": means, "step": r.steps,
              **{f"h_{k}": v for k, v in r.history.items()}}
    return common.finish(args, NAME, arrays, dict(cfg, final=r.final), plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    Q, means = a["Q"], a["means"]
    K = Q.shape[1]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.8), gridspec_kw=dict(width_ratios=[1, 0.8, 0.8, 1.6]))
    G = means.T @ means
    im = axes[0].imshow(G, cmap="viridis")
    for i in range(K):
        for j in range(K):
            axes[0].text(j, i, f"{G[i, j]:.2g}", ha="center", va="center", fontsize=8,
                         color="w" if G[i, j] < G.max() / 2 else "k")
    axes[0].set_title(f"class-mean Gram H̄ᵀH̄ (E_H = {cfg['E_H']:g}):\northogonal, equal norms, "
                      f"about the origin", fontsize=9)
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    axes[0].set_xticks(range(K))
    axes[0].set_yticks(range(K))
    lim = np.abs(means).max()
    for ax, M, title in ((axes[1], Q, "classifier Q (fixed, ≥ 0)"),
                         (axes[2], means, "class means h̄_k")):
        ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xlabel("class k")
        ax.set_ylabel("feature coordinate")
        ax.set_xticks(range(K))
        ax.set_title(title + ":\nwhich coordinates each class uses", fontsize=9)
    step = np.maximum(a["step"], 1)
    violation = np.maximum(np.maximum(a["h_feature_norm_excess"], -a["h_halfspace_min"]), 0)
    common.log_curves(axes[3], step, {
        "1 − min_k cos(h̄_k, q_k)": 1 - a["h_cos_prototype_min"],
        "NC1 of H": a["h_nc1_H"],
        "NC2-OF of the uncentred means": a["h_nc2_of_H"],
        "constraint violation max(‖h‖²/E_H − 1, −Σ_{j≠k} hᵀq_j, 0)": violation},
        "along projected gradient descent (both constraints end active)",
        xlabel="step (log scale; step 0 drawn at 1)")
    axes[3].set_xscale("log")
    counts = ", ".join(map(str, cfg["n"]))
    fig.suptitle(f"Fixed non-negative orthogonal classifier: zero-mean collapse and feature "
                 f"dimension separation (K={K}, d={Q.shape[0]}, n_k = {counts}, CE, projected GD "
                 f"step {cfg['lr']:g}) [our setting]", fontsize=10)
    common.tight_layout(fig, rect=(0, 0, 1, 0.92))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
