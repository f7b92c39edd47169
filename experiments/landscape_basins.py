"""Figure `landscape_basins` — where L-BFGS lands in the deep linear cross-entropy UFM, each end
point classified by its second-order certificate (docs/theory.md §6) and its objective.

K = 10 classes, every λ equal; for each depth L and width d, many seeds from a random start, each
end point's kind (strict local minimum modulo symmetry, saddle, degenerate, not stationary) from
the Lanczos certificate of `ufm sweep --hessian`, and where it is among the constructions (DNC,
the low-rank blocks, the triangular tight frame; docs/theory.md §6.5). The same grid from the
command line:
  ufm sweep deep-linear-ce --x64 --depth 2,3,4 --K 10 --n 2 --d 9,16,32 --lam-H1 0.001953125 \
      --lam-W 0.001953125 --optimizer lbfgs --init-scale 0.5 --seeds 64 --hessian 100
"""
import numpy as np

from ufm import sweep, theory
from ufm.models import Sizes

from experiments import common

NAME = "landscape_basins"
FULL = dict(K=10, n=2, depths=[2, 3, 4], widths=[9, 16, 32], lam=2.0 ** -9, seeds=64,
            steps=2000, init_scale=0.5, lanczos=100)
SMOKE = dict(FULL, depths=[2, 3], widths=[9], seeds=2, steps=30, lanczos=20)
CLASSES = ("DNC", "low-rank blocks", "triangular frame", "other local min", "saddle",
           "degenerate", "not stationary")


def rate(kind, reached):
    """The class of one end point (CLASSES) from its certificate's kind and its landing: a
    strict local minimum by the reference it sits on (theory.landing), the rest by kind."""
    if kind == "strict local minimum":
        return {"dnc": CLASSES[0], "low-rank": CLASSES[1],
                "triangular": CLASSES[2]}.get(str(reached), CLASSES[3])
    return {"saddle": CLASSES[4], "degenerate": CLASSES[5]}.get(str(kind), CLASSES[6])


def fractions(kinds, reached):
    """[..., len(CLASSES)]: the fraction of seeds (last axis of the inputs) in each class."""
    rated = np.vectorize(rate)(kinds, reached)
    return np.stack([(rated == c).mean(axis=-1) for c in CLASSES], axis=-1)


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    static = {"depth": cfg["depths"], "K": [cfg["K"]], "d": cfg["widths"], "n": [cfg["n"]]}
    update, close = common.progress(len(cfg["depths"]) * len(cfg["widths"]), args.quiet, NAME)
    arrays, config = sweep.run_grid(
        "deep-linear-ce", static, {"lam_H1": cfg["lam"], "lam_W": cfg["lam"]}, {},
        order=["depth", "d"], steps=cfg["steps"], init_scale=cfg["init_scale"],
        optimizer="lbfgs", seeds=cfg["seeds"], hessian=cfg["lanczos"],
        progress=update and (lambda d, t: update(d)))
    close()
    shape = (len(cfg["depths"]), len(cfg["widths"]), cfg["seeds"])
    keep = ("objective", "second_order_kind", "min_eigenvalue", "second_order_tol", "reached",
            "rank_centred_logits", "grad_norm")
    out = {k: arrays[k].reshape(shape) for k in keep}
    refs = {name: [] for name in ("dnc", "low-rank", "triangular")}
    for L in cfg["depths"]:
        hyper = {"lam_H1": cfg["lam"], **{f"lam_W{l}": cfg["lam"] for l in range(1, L + 1)}}
        found = theory.deep_ce_constructions(hyper, Sizes(cfg["K"], cfg["n"], 16), L)
        for name in refs:
            refs[name].append(found[name].objective)
    out.update({f"f_{k.replace('-', '_')}": np.asarray(v) for k, v in refs.items()})
    out.update(depth=np.asarray(cfg["depths"]), d=np.asarray(cfg["widths"]))
    return common.finish(args, NAME, out,
                         dict(cfg, certificate_tol=config["certificate_tol"]), plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    depths, widths = list(a["depth"]), list(a["d"])
    fig, axes = plt.subplots(1, len(depths), figsize=(5.5 * len(depths), 4.6), squeeze=False)
    colors = ["#1f77b4", "#2ca02c", "#17becf", "#9467bd", "#d62728", "#ff7f0e", "#7f7f7f"]
    share = fractions(a["second_order_kind"], a["reached"])  # [L, d, class]
    for i, L in enumerate(depths):
        ax = axes[0, i]
        bottom = np.zeros(len(widths))
        x = np.arange(len(widths))
        for c, name in enumerate(CLASSES):
            frac = share[i, :, c]
            ax.bar(x, frac, bottom=bottom, color=colors[c], label=name if i == 0 else None)
            bottom += frac
        best = np.nanmin(a["objective"][i], axis=-1)
        for j in range(len(widths)):
            ax.annotate(f"best {best[j]:.4f}", (x[j], 1.01), ha="center", fontsize=7)
        ax.set_xticks(x, [f"d = {w}" for w in widths])
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("fraction of seeds")
        ax.set_title(f"L = {L}: f_DNC {a['f_dnc'][i]:.4f}, f_LR {a['f_low_rank'][i]:.4f}, "
                     f"f_TRI {a['f_triangular'][i]:.4f}", fontsize=9)
    fig.legend(loc="lower center", ncol=len(CLASSES), fontsize=8)
    fig.suptitle(f"Deep linear CE UFM, K = {cfg['K']}, n = {cfg['n']}, every λ = {cfg['lam']:g}: "
                 f"where {cfg['seeds']} L-BFGS seeds (std {cfg['init_scale']:g}, ≤ {cfg['steps']} "
                 f"steps) end, by second-order certificate ({cfg['lanczos']} Lanczos steps) and "
                 f"landing  [our setting]", fontsize=10)
    common.tight_layout(fig, rect=(0, 0.07, 1, 0.93))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
