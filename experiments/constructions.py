"""Figure `constructions` — structured solutions of the deep linear cross-entropy UFM against deep
neural collapse (docs/theory.md §6.5): the triangular tight frame T(r) (K = C(r, 2) classes in
rank r − 1) and the low-rank blocks (rank K/2), each objective exact after minimising its scale,
as a ratio to f_DNC against r for several depths; and, at K = 10, L = 4, every L-BFGS seed's end
against the three references. The seeds from the command line:
  ufm sweep deep-linear-ce --x64 --depth 4 --K 10 --n 5 --d 16 --lam-H1 0.001953125 \
      --lam-W 0.001953125 --optimizer lbfgs --init-scale 0.5 --seeds 32
"""
import numpy as np

from ufm import sweep, theory
from ufm.models import Sizes

from experiments import common

NAME = "constructions"
FULL = dict(rs=[5, 6, 7, 8], depths=[3, 4, 5], n=5, d=16, lam=2.0 ** -9, seed_K=10, seed_L=4,
            seeds=32, steps=5000, init_scale=0.5)
SMOKE = dict(FULL, rs=[5, 6], depths=[3], seeds=2, steps=30)


def lams(L, lam):
    return {"lam_H1": lam, **{f"lam_W{l}": lam for l in range(1, L + 1)}}


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    out = {k: np.full((len(cfg["depths"]), len(cfg["rs"])), np.nan)
           for k in ("f_dnc", "f_lr", "f_tri")}
    for i, L in enumerate(cfg["depths"]):
        for j, r in enumerate(cfg["rs"]):
            K = r * (r - 1) // 2
            found = theory.deep_ce_constructions(lams(L, cfg["lam"]), Sizes(K, cfg["n"], K), L)
            out["f_dnc"][i, j] = found["dnc"].objective
            out["f_tri"][i, j] = found["triangular"].objective
            if "low-rank" in found:
                out["f_lr"][i, j] = found["low-rank"].objective
    K, L = cfg["seed_K"], cfg["seed_L"]
    arrays, _ = sweep.run_grid(
        "deep-linear-ce", {"depth": [L], "K": [K], "d": [cfg["d"]], "n": [cfg["n"]]},
        {"lam_H1": cfg["lam"], "lam_W": cfg["lam"]}, {}, order=[], steps=cfg["steps"],
        init_scale=cfg["init_scale"], optimizer="lbfgs", seeds=cfg["seeds"])
    found = theory.deep_ce_constructions(lams(L, cfg["lam"]), Sizes(K, cfg["n"], cfg["d"]), L)
    out.update(seed_objective=arrays["objective"].ravel(),
               seed_rank=arrays["rank_centred_logits"].ravel(),
               seed_reached=arrays["reached"].ravel(),
               seed_refs=np.array([found[k].objective for k in ("dnc", "low-rank", "triangular")]),
               r=np.asarray(cfg["rs"]), depth=np.asarray(cfg["depths"]))
    return common.finish(args, NAME, out, cfg, plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    rs = a["r"]
    for i, L in enumerate(a["depth"]):
        line, = left.plot(rs, a["f_tri"][i] / a["f_dnc"][i], "o-", label=f"triangular, L = {L}")
        left.plot(rs, a["f_lr"][i] / a["f_dnc"][i], "s--", color=line.get_color(), alpha=0.6,
                  label=f"low-rank blocks, L = {L} (K even)")
    left.axhline(1, color="k", lw=0.8)
    left.set_xticks(rs, [f"r = {r}\nK = {r * (r - 1) // 2}" for r in rs])
    left.set_ylabel("objective / f_DNC")
    left.set_title("constructions against deep neural collapse (below 1: DNC is not optimal)",
                   fontsize=9)
    left.legend(fontsize=7)
    left.grid(True, alpha=0.3)
    obj, ranks = a["seed_objective"], a["seed_rank"]
    order = np.argsort(obj)
    right.scatter(np.arange(len(obj)), obj[order], c=ranks[order], cmap="viridis", s=18)
    for value, name, style in zip(a["seed_refs"], ("f_DNC (rank 9)", "f_LR (rank 5)",
                                                     "f_TRI (rank 4)"), (":", "--", "-")):
        right.axhline(value, color="k", ls=style, lw=1, label=f"{name} = {value:.6f}")
    right.set_xlabel("seeds, sorted by final objective (colour: centred logit rank)")
    right.set_ylabel("objective")
    right.set_title(f"K = {cfg['seed_K']}, L = {cfg['seed_L']}: {len(obj)} L-BFGS seeds (std "
                    f"{cfg['init_scale']:g}, ≤ {cfg['steps']} steps) against the constructions",
                    fontsize=9)
    right.legend(fontsize=7)
    fig.suptitle(f"Deep linear CE UFM: n = {cfg['n']}, every λ = {cfg['lam']:g}  [our setting; "
                 f"DNC and blocks as Garrod & Keating 2025, triangular frame: ufm]", fontsize=10)
    common.tight_layout(fig, rect=(0, 0, 1, 0.93))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
