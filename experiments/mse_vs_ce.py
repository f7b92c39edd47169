"""Figure `mse_vs_ce` — the geometry the loss selects: Gram matrices of the class means of a
bias-free MSE UFM (Theorem 3.1: orthogonal frame, H̄ᵀH̄ ∝ I) and of a cross-entropy UFM (Zhu et
al. 2021: simplex ETF, H̄ᵀH̄ ∝ P), as heatmaps normalised by their diagonals."""
import numpy as np

import ufm
from ufm import metrics

from experiments import common

NAME = "mse_vs_ce"
FULL = dict(K=6, d=20, n=20, lam_W=5e-3, lam_H=5e-3, steps=40000)
SMOKE = dict(FULL, K=3, d=5, n=4, steps=200)


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    arrays = {}
    for model, lr in (("bias-free", 0.1), ("ce", 0.5)):
        update, close = common.progress(cfg["steps"], args.quiet, f"{NAME} {model}")
        r = ufm.train(model, lr=lr, log_every=cfg["steps"], progress=update, **cfg)
        close()
        Hbar = np.asarray(metrics.class_means(r.params["H"], cfg["K"]))
        key = model.replace("-", "_")
        arrays[f"{key}_gram"] = Hbar.T @ Hbar
        arrays[f"{key}_nc2_of_H"] = r.final["nc2_of_H"]
        arrays[f"{key}_nc2_etf_H"] = r.final["nc2_etf_H"]
    return common.finish(args, NAME, arrays, cfg, plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    K = cfg["K"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    for ax, key, title in ((axes[0], "bias_free", "MSE, bias-free: orthogonal frame"),
                           (axes[1], "ce", "cross-entropy: simplex ETF")):
        G = a[f"{key}_gram"]
        C = G / np.sqrt(np.outer(np.diag(G), np.diag(G)))
        im = ax.imshow(C, vmin=-1, vmax=1, cmap="RdBu_r")
        for i in range(K):
            for j in range(K):
                ax.text(j, i, f"{C[i, j]:.3f}", ha="center", va="center", fontsize=7)
        ax.set_title(f"{title}\nNC2-OF {float(a[f'{key}_nc2_of_H']):.1e}, NC2-ETF "
                     f"{float(a[f'{key}_nc2_etf_H']):.1e}", fontsize=10)
        ax.set_xlabel("class k'")
        ax.set_ylabel("class k")
        fig.colorbar(im, ax=ax, label="cos(h̄_k, h̄_k')")
    fig.suptitle(f"Class-mean Gram (cosines) after GD: MSE gives cos = 0, CE gives cos = −1/(K−1) = "
                 f"{-1 / (K - 1):.3f}; K={K}, d={cfg['d']}, n={cfg['n']}, λ_W=λ_H={cfg['lam_W']:g}, "
                 f"{cfg['steps']} steps  [our setting]", fontsize=10)
    common.tight_layout(fig, rect=(0, 0, 1, 0.92))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
