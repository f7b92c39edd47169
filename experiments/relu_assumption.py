"""Figure `relu_assumption` — stress test of Theorem 4.2's assumption ‖W1H1‖_* = ‖σ(W1H1)‖_*
(Tirer & Bruna, Appendix E conjecture it holds at every global minimiser of the ReLU model).

A `ufm sweep` of the ReLU extended model over (λ_W1, λ_W2, λ_H1) × seeds, for several (K, d):
every run that reaches the closed-form optimal value (relative gap < 1e-9, float64) is a global
minimiser, and at each one we record ‖W1H1‖_* − ‖σ(W1H1)‖_*. The same grid from the command line:
  ufm sweep relu-extended --x64 --K 4 --d 8 --n 4 --lam-W1 1e-3:3e-2:4:log \
      --lam-W2 1e-3:3e-2:4:log --lam-H1 1e-3:3e-2:4:log --seeds 8 --optimizer momentum \
      --lr 0.05 --init-scale 0.5 --steps 30000
"""
import numpy as np

from ufm import sweep
from ufm.config import hyper_for
from ufm.models import MODELS, Sizes

from experiments import common

NAME = "relu_assumption"
FULL = dict(sizes=[(3, 3), (3, 6), (4, 4), (4, 8), (5, 5), (5, 10)], n=4,
            lams=[1e-3, 3e-2, 4], seeds=8, steps=30000, lr=0.05, init_scale=0.5,
            optimizer="momentum", reached=1e-9)
SMOKE = dict(FULL, sizes=[(3, 4)], lams=[1e-3, 3e-2, 2], seeds=2, steps=300)


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    model = MODELS["relu-extended"]
    lo, hi, num = cfg["lams"]
    grid = np.logspace(np.log10(lo), np.log10(hi), num)
    axes = {"lam_W1": grid, "lam_W2": grid, "lam_H1": grid}
    base = hyper_for(model, {}, cfg["lr"], cfg["init_scale"])
    arrays, per_size = {}, []
    update, close = common.progress(len(cfg["sizes"]), args.quiet, NAME)
    for i, (K, d) in enumerate(cfg["sizes"]):
        res, _ = sweep.run_sweep(model, Sizes(K, cfg["n"], d), base, axes, steps=cfg["steps"],
                                 seeds=cfg["seeds"], optimizer=cfg["optimizer"])
        f, fstar = res["objective"], res["theory_objective"]
        gap = res["nuclear_Z2"] - res["nuclear_H2"]
        rel_gap = gap / np.maximum(res["nuclear_H2"], 1e-300)
        reached = np.abs(f - fstar) <= cfg["reached"] * fstar
        nonzero = reached & (res["nuclear_H2"] > 1e-6)
        for k, v in dict(objective=f, closed_form=fstar, gap=gap, rel_gap=rel_gap,
                         reached=reached, nonzero=nonzero).items():
            arrays[f"K{K}_d{d}/{k}"] = v
        per_size.append(dict(
            K=K, d=d, runs=int(f.size), reached=int(reached.sum()),
            reached_nonzero=int(nonzero.sum()),
            max_abs_rel_violation=float(np.abs(rel_gap[nonzero]).max()) if nonzero.any() else None,
            max_signed_gap=float(gap[nonzero].max()) if nonzero.any() else None,
            min_signed_gap=float(gap[nonzero].min()) if nonzero.any() else None,
            max_abs_rel_violation_all_runs=float(np.nanmax(np.abs(rel_gap[res["nuclear_H2"] > 1e-6])))
            if (res["nuclear_H2"] > 1e-6).any() else None))
        if update:
            update(i + 1)
    close()
    arrays["lam"] = grid
    worst = [s["max_abs_rel_violation"] for s in per_size if s["max_abs_rel_violation"] is not None]
    summary = dict(runs=sum(s["runs"] for s in per_size),
                   reached=sum(s["reached"] for s in per_size),
                   reached_nonzero=sum(s["reached_nonzero"] for s in per_size),
                   max_abs_rel_violation=max(worst) if worst else None)
    print(f"{NAME}: {summary}")
    return common.finish(args, NAME, arrays, dict(cfg, per_size=per_size, summary=summary),
                         plot)


def plot(out):
    plt = common.pyplot()
    a, meta = common.load(out, NAME)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for s in meta["per_size"]:
        key = f"K{s['K']}_d{s['d']}"
        rel, nz = a[f"{key}/rel_gap"], a[f"{key}/nonzero"]
        f, fstar = a[f"{key}/objective"], a[f"{key}/closed_form"]
        excess = np.abs(f - fstar) / fstar
        x = np.clip(excess.ravel(), 1e-17, None)
        y = np.clip(np.abs(rel).ravel(), 1e-18, None)
        axes[0].loglog(x, y, ".", ms=3, alpha=0.6, label=f"K={s['K']}, d={s['d']}: "
                       f"{s['reached_nonzero']}/{s['runs']} at a nonzero global minimum")
        if nz.any():
            axes[1].hist(np.log10(np.clip(np.abs(rel[nz]), 1e-18, None)), bins=30,
                         histtype="step", label=f"K={s['K']}, d={s['d']}")
    axes[0].axvline(meta["reached"], color="k", ls=":", lw=0.8)
    axes[0].set_xlabel("relative excess objective (f − f*)/f* of the run (log)")
    axes[0].set_ylabel("|‖W1H1‖_* − ‖σ(W1H1)‖_*| / ‖σ(W1H1)‖_* (log)")
    axes[0].set_title("every run: left of the dotted line = reached the global minimum", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("log10 relative violation at global minimisers")
    axes[1].set_ylabel("runs")
    axes[1].set_title("the assumption at the global minimisers found", fontsize=9)
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=7)
    summ = meta["summary"]
    worst = summ["max_abs_rel_violation"]
    fig.suptitle(f"Theorem 4.2's assumption ‖W1H1‖_* = ‖σ(W1H1)‖_* at global minimisers of the "
                 f"ReLU UFM: {summ['reached_nonzero']} of {summ['runs']} runs reached a nonzero "
                 f"global minimum; largest relative violation "
                 f"{'n/a' if worst is None else f'{worst:.1e}'}\nλ_W1, λ_W2, λ_H1 ∈ "
                 f"{meta['lams'][0]:g}…{meta['lams'][1]:g} ({meta['lams'][2]} log-spaced each), "
                 f"n={meta['n']}, {meta['seeds']} seeds, {meta['steps']} steps of "
                 f"{meta['optimizer']} (lr {meta['lr']:g}), init std {meta['init_scale']:g} "
                 f"[our setting]", fontsize=10)
    common.tight_layout(fig, rect=(0, 0, 1, 0.9))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
