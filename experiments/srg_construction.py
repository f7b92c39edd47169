"""Figure `srg_construction` — the triangular (strongly-regular-graph) construction of the deep
ReLU MSE UFM against deep neural collapse (docs/theory.md §6.6). K = C(r, 2) classes are the edges
of a complete graph on r vertices: every level below the last is r-dimensional and non-negative
(the incidence vectors e_a + e_b), the last pre-activation is s·M with M_{ab,cd} = |{a,b} ∩ {c,d}|
− 1 (rank r), and ReLU(s·M) = s·I is an orthogonal frame — the low rank paid for in the ReLU. Its
objective is exact at its free scalars, minimised (`theory.deep_relu_srg`); left: its ratio to
the DNC value against r for L = 2 … 5. Right, at K = 10, L = 4: L-BFGS from random seeds at
width 2K against DNC, the construction, and L-BFGS started from the construction
(`--init-from srg`). The seeds from the command line:
  ufm sweep deep-relu --x64 --depth 4 --K 10 --n 1 --d 20 --lam-H1 0.004 --lam-W 0.004 \
      --optimizer lbfgs --init-scale 0.3 --seeds 16 --steps 1000
"""
import numpy as np

import ufm
from ufm import sweep, theory
from ufm.models import Sizes

from experiments import common

NAME = "srg_construction"
FULL = dict(rs=[4, 5, 6, 7, 8], depths=[2, 3, 4, 5], n=1, lam=0.004, seed_K=10, seed_L=4,
            seed_d=20, seeds=16, steps=1000, init_scale=0.3)
SMOKE = dict(FULL, rs=[4, 5], depths=[3], seed_K=6, seed_L=3, seed_d=6, seeds=2, steps=20)


def lams(L, lam):
    return {"lam_H1": lam, **{f"lam_W{l}": lam for l in range(1, L + 1)}}


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    shape = (len(cfg["depths"]), len(cfg["rs"]))
    out = {"f_dnc": np.full(shape, np.nan), "f_srg": np.full(shape, np.nan)}
    for i, L in enumerate(cfg["depths"]):
        for j, r in enumerate(cfg["rs"]):
            K = r * (r - 1) // 2
            sizes = Sizes(K, cfg["n"], K)
            out["f_dnc"][i, j] = theory.layered(lams(L, cfg["lam"]), sizes, L, "relu").objective
            out["f_srg"][i, j] = theory.deep_relu_srg(lams(L, cfg["lam"]), sizes, L).objective
    K, L, d = cfg["seed_K"], cfg["seed_L"], cfg["seed_d"]
    arrays, _ = sweep.run_grid(
        "deep-relu", {"depth": [L], "K": [K], "d": [d], "n": [cfg["n"]]},
        {"lam_H1": cfg["lam"], "lam_W": cfg["lam"]}, {}, order=[], steps=cfg["steps"],
        init_scale=cfg["init_scale"], optimizer="lbfgs", seeds=cfg["seeds"])
    polished = ufm.train("deep-relu", depth=L, K=K, n=cfg["n"], d=d, lam_H1=cfg["lam"],
                         lam_W=cfg["lam"], optimizer="lbfgs", steps=cfg["steps"],
                         log_every=cfg["steps"], init_from="srg")
    sizes = Sizes(K, cfg["n"], d)
    out.update(seed_objective=arrays["objective"].ravel(),
               seed_rank=arrays[f"rank_Z{L}"].ravel(),
               seed_refs=np.array([theory.layered(lams(L, cfg["lam"]), sizes, L, "relu").objective,
                                   theory.deep_relu_srg(lams(L, cfg["lam"]), sizes, L).objective,
                                   polished.final["objective"]]),
               r=np.asarray(cfg["rs"]), depth=np.asarray(cfg["depths"]))
    return common.finish(args, NAME, out, cfg, plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    rs = a["r"]
    for i, L in enumerate(a["depth"]):
        left.plot(rs, a["f_srg"][i] / a["f_dnc"][i], "o-", label=f"L = {L}")
    left.axhline(1, color="k", lw=0.8)
    left.set_xticks(rs, [f"r = {r}\nK = {r * (r - 1) // 2}" for r in rs])
    left.set_ylabel("f_SRG / f_DNC")
    left.set_title("triangular construction against deep neural collapse (below 1: DNC is not "
                   "optimal)", fontsize=9)
    left.legend(fontsize=8)
    left.grid(True, alpha=0.3)
    obj, ranks = a["seed_objective"], a["seed_rank"]
    order = np.argsort(obj)
    points = right.scatter(np.arange(len(obj)), obj[order], c=ranks[order], cmap="viridis", s=18)
    fig.colorbar(points, ax=right, label="rank of the last pre-activation's class means")
    names = ("f_DNC", "f_SRG (construction)", "L-BFGS from the construction")
    for value, name, style in zip(a["seed_refs"], names, (":", "--", "-")):
        right.axhline(value, color="k", ls=style, lw=1, label=f"{name} = {value:.6f}")
    right.set_xlabel("seeds, sorted by final objective")
    right.set_ylabel("objective")
    right.set_title(f"K = {cfg['seed_K']}, L = {cfg['seed_L']}, d = {cfg['seed_d']}: {len(obj)} "
                    f"L-BFGS seeds (std {cfg['init_scale']:g}, ≤ {cfg['steps']} steps)",
                    fontsize=9)
    right.legend(fontsize=7)
    fig.suptitle(f"Deep ReLU MSE UFM: n = {cfg['n']}, every λ = {cfg['lam']:g}  [our setting; the "
                 f"construction after Súkeník, Mondelli & Lampert 2024, its scalars ours]",
                 fontsize=10)
    common.tight_layout(fig, rect=(0, 0, 1, 0.93))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
