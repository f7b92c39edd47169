"""Figure `deep_linear_thresholds` — where the deep linear UFM's solution becomes zero, at depths
L = 1 … 5 (M = L + 1 factors), against the closed form (docs/theory.md, "Deep linear MSE").

Per depth, the final objective of gradient descent against β = K·(n·λ_H1·Πλ_Wl)^(1/M) (all λ
equal) from a small and a large initialisation, with the closed-form global minimum, the nonzero
local-minimum branch, the jump at β_c(M) and the end of the local minimum at β_max(M). L = 1 is
Theorem 3.1 (continuous at c = 1), L = 2 Theorem 4.1. The last panel has imbalanced classes
(counts 40, 20, 10, 5 at L = 2): β_k = N·λ̄·n_k^(1/M − 1) grows as n_k shrinks, so the classes are
dropped (their t_k jumps to 0) one by one, the smallest first. Each grid is one vmapped program.
"""
import jax
import jax.numpy as jnp
import numpy as np

from ufm import metrics, optimise, theory
from ufm.models import Sizes, get_model

from experiments import common

NAME = "deep_linear_thresholds"
FULL = dict(K=4, n=10, d=8, depths=[1, 2, 3, 4, 5], beta=np.linspace(0.04, 1.2, 30).tolist(),
            inits=[[0.1, 0.1], [0.5, 0.05]],  # [init std, GD step]: small and large
            steps=100000, counts=[40, 20, 10, 5], imbalanced_depth=2,
            lam_bar=np.logspace(-2.4, -1.0, 36).tolist())
SMOKE = dict(FULL, depths=[3], beta=[0.2, 0.9], steps=200, lam_bar=[0.01, 0.05])


def _run(model, sizes, lam, init, lr, steps, quiet, desc):
    """GD on `model` at every λ of `lam` (all blocks equal), one vmapped program."""
    B = len(lam)
    hyper = optimise.broadcast_hyper(optimise.as_hyper(
        {**{k: 0.0 for k in model.hyper_names}, "lr": lr, "init_scale": init}), B)
    for k in model.hyper_names:
        hyper[k] = jnp.asarray(lam, hyper["lr"].dtype)
    keys = jnp.broadcast_to(jax.random.PRNGKey(1), (B, 2))  # the same initial draw everywhere
    update, close = common.progress(steps, quiet, desc)
    traj = optimise.simulate(model, sizes, keys, hyper, steps, steps,
                            callback=update, batched=True)
    close()
    return traj


def _class_fit(params, depth, sizes):
    """t_k: class k's mean logit on its own class, (W_L⋯W_1 h̄_{1,k})_k, per run  [B, K]."""
    H = np.asarray(params["H1"])
    out = []
    for i in range(H.shape[0]):
        Z = np.asarray(metrics.class_means(H[i], sizes.classes))
        for layer in range(1, depth + 1):
            Z = np.asarray(params[f"W{layer}"][i]) @ Z
        out.append(np.diag(Z))
    return np.array(out)


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    K, n = cfg["K"], cfg["n"]
    sizes = Sizes(K, n, cfg["d"])
    beta = np.asarray(cfg["beta"])
    arrays = {"beta": beta}
    for L in cfg["depths"]:
        M = L + 1
        model = get_model("deep-linear", depth=L)
        lam = beta / (K * n ** (1 / M))  # all λ equal: β = K·n^(1/M)·λ
        for init, lr in cfg["inits"]:
            traj = _run(model, sizes, lam, init, lr, cfg["steps"], args.quiet,
                        f"{NAME} L={L} init {init:g}")
            arrays[f"L{L}_init{init:g}"] = np.asarray(traj.history["objective"][:, -1])
            arrays[f"L{L}_init{init:g}_diverged"] = np.asarray(traj.diverged_at) >= 0
    counts = tuple(cfg["counts"])
    imb = Sizes(len(counts), counts, cfg["d"])
    L = cfg["imbalanced_depth"]
    model = get_model("deep-linear", depth=L)
    lam_bar = np.asarray(cfg["lam_bar"])
    runs = []
    for init, lr in cfg["inits"]:
        traj = _run(model, imb, lam_bar, init, lr, cfg["steps"], args.quiet,
                    f"{NAME} imbalanced init {init:g}")
        runs.append((np.asarray(traj.history["objective"][:, -1]), _class_fit(traj.params, L, imb)))
    best = np.argmin(np.stack([f for f, _ in runs]), axis=0)  # the lower of the two inits
    arrays.update(imb_lam_bar=lam_bar,
                  imb_objective=np.choose(best, [f for f, _ in runs]),
                  imb_t=np.stack([runs[b][1][i] for i, b in enumerate(best)]),
                  imb_init=np.asarray(cfg["inits"])[best, 0])
    return common.finish(args, NAME, arrays, {k: v for k, v in cfg.items()}, plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    K, n, d = cfg["K"], cfg["n"], cfg["d"]
    sizes = Sizes(K, n, d)
    depths = cfg["depths"]
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    axes = axes.ravel()
    grid = np.linspace(0.01, max(a["beta"].max(), 1.05) * 1.02, 500)
    for ax, L in zip(axes, depths):
        M = L + 1
        preds = [theory.layered({k: b / (K * n ** (1 / M)) for k in
                                 ["lam_H1"] + [f"lam_W{l}" for l in range(1, L + 1)]}, sizes, L)
                 for b in grid]
        ax.plot(grid, [p.objective for p in preds], "k-", lw=1.2, label="global minimum (closed form)")
        ax.plot(grid, [np.nan if p.objective_nonzero is None else p.objective_nonzero
                       for p in preds], "k:", lw=1, label="nonzero local-minimum branch")
        for (init, _), mk in zip(cfg["inits"], ("o", "s")):
            ax.plot(a["beta"], a[f"L{L}_init{init:g}"], mk, ms=5, mfc="none",
                    label=f"GD from init std {init:g}")
        ax.axvline(theory.beta_c(M), color="grey", ls="-.", lw=1,
                   label=f"β_c({M}) = {theory.beta_c(M):.4f}" + (" (continuous)" if M == 2 else ": jump"))
        if M > 2:
            ax.axvline(theory.beta_max(M), color="grey", ls=":", lw=1,
                       label=f"β_max({M}) = {theory.beta_max(M):.4f}: local min ends")
        ax.set_xlabel("β = K·(n·λ_H1·Π λ_Wl)^(1/M)   (all λ equal)")
        ax.set_ylabel("final objective")
        ax.set_title(f"L = {L} (M = {M} factors)" + {1: ": Theorem 3.1", 2: ": Theorem 4.1"}.get(L, ""),
                     fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[len(depths)]
    counts = tuple(cfg["counts"])
    L = cfg["imbalanced_depth"]
    M = L + 1
    imb = Sizes(len(counts), counts, d)
    lam_grid = np.logspace(np.log10(a["imb_lam_bar"].min()), np.log10(a["imb_lam_bar"].max()), 400)
    curves = np.array([theory.layered({k: lb for k in ["lam_H1"] + [f"lam_W{l}" for l in
                                                                    range(1, L + 1)]}, imb, L).t
                       for lb in lam_grid])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, n_k in enumerate(counts):
        ax.semilogx(lam_grid, curves[:, k], "-", color=colors[k], lw=1.2,
                    label=f"class {k} (n_k = {n_k}): closed form")
        ax.semilogx(a["imb_lam_bar"], a["imb_t"][:, k], "o", color=colors[k], ms=4, mfc="none")
        drop = theory.beta_c(M) / (sum(counts) * n_k ** (1 / M - 1))  # β_k = β_c
        ax.axvline(drop, color=colors[k], ls=":", lw=0.8)
    ax.set_xlabel("λ̄ = (λ_H1·Π λ_Wl)^(1/M)   (all λ equal; dotted: β_k = β_c)")
    ax.set_ylabel("t_k = class k's own mean logit")
    ax.set_title(f"imbalanced, L = {L}: classes drop out smallest first (GD, lower of two inits)",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    for extra in axes[len(depths) + 1:]:
        extra.axis("off")
    inits = ", ".join(f"std {i:g} (step {lr:g})" for i, lr in cfg["inits"])
    fig.suptitle(f"Deep linear UFM: the jump to zero at β_c(M) for L = 1 … {max(depths)}; K={K}, "
                 f"d={d}, n={n}, plain GD {cfg['steps']} steps from {inits}; imbalanced counts "
                 f"{', '.join(map(str, counts))}  [our setting]", fontsize=11)
    common.tight_layout(fig, rect=(0, 0, 1, 0.95))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
