"""Figure `thresholds` — where the solution becomes zero. Plain bias-free UFM across c = 1
(continuous: f* = c − c²/2 → 1/2, ‖W‖ → 0) and the three-factor (linear extended) model across
K·a = 2^(−4/3) (a jump: s goes from 1/2 to 0), from a small and a large initialisation. Each grid is
one vmapped program; simulation points sit on the closed-form curves, and the three-factor panel
also draws the nonzero local-minimum branch, which exists up to K·a = 3·4^(−4/3)."""
import jax
import jax.numpy as jnp
import numpy as np

import ufm
from ufm import optimise, theory
from ufm.models import Sizes

from experiments import common

NAME = "thresholds"
FULL = dict(K=4, n=10, d=8, lr=0.1, steps=100000, log_every=100000,
            c=np.linspace(0.1, 1.9, 19), Ka=np.linspace(0.05, 0.6, 23), inits=[0.1, 1.0])
SMOKE = dict(FULL, steps=300, log_every=300, c=np.array([0.5, 1.5]), Ka=np.array([0.2, 0.5]))


def _grid(model, sizes, lams, cfg, init, args, desc):
    B = len(next(iter(lams.values())))
    hyper = optimise.broadcast_hyper(optimise.as_hyper(
        {**{k: 0.0 for k in lams}, "lr": cfg["lr"], "init_scale": init}), B)
    hyper.update({k: jnp.asarray(v, hyper["lr"].dtype) for k, v in lams.items()})
    keys = jnp.broadcast_to(jax.random.PRNGKey(1), (B, 2))
    update, close = common.progress(cfg["steps"], args.quiet, desc)
    traj = optimise.simulate(model, sizes, keys, hyper, cfg["steps"],
                            cfg["log_every"], callback=update, batched=True)
    close()
    return (np.asarray(traj.history["objective"][:, -1]), np.asarray(traj.history["norm_W"][:, -1]),
            np.asarray(traj.diverged_at) >= 0)


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    K, n = cfg["K"], cfg["n"]
    sizes = Sizes(K, n, cfg["d"])
    arrays = {"c": cfg["c"], "Ka": cfg["Ka"]}
    lam = cfg["c"] / (K * np.sqrt(n))  # λ_W = λ_H = λ gives c = K√n·λ
    f, w, bad = _grid(ufm.get_model("bias-free"), sizes, {"lam_W": lam, "lam_H": lam}, cfg, 1.0,
                      args, "thresholds bias-free")
    arrays.update(plain_objective=f, plain_norm_W=w, plain_diverged=bad)
    lam3 = cfg["Ka"] / (K * n ** (1 / 3))  # λ_H1 = λ_W1 = λ_W2 = λ gives K·a = K·n^(1/3)·λ
    for init in cfg["inits"]:
        f, w, bad = _grid(ufm.get_model("linear-extended"), sizes,
                          {"lam_H1": lam3, "lam_W1": lam3, "lam_W2": lam3}, cfg, init, args,
                          f"thresholds linear-extended init {init:g}")
        arrays.update({f"ext_objective_{init:g}": f, f"ext_norm_W_{init:g}": w,
                       f"ext_diverged_{init:g}": bad})
    return common.finish(args, NAME, arrays, {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                              for k, v in cfg.items()}, plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    K, n, d = cfg["K"], cfg["n"], cfg["d"]
    sizes = Sizes(K, n, d)
    fig, axes = plt.subplots(1, 4, figsize=(22, 5))
    cs = np.linspace(0.02, a["c"].max() * 1.02, 400)
    plain = [theory.plain({"lam_W": c / (K * np.sqrt(n)), "lam_H": c / (K * np.sqrt(n))}, sizes) for c in cs]
    axes[0].plot(cs, [p.objective for p in plain], "k-", lw=1, label="closed form f* = c − c²/2, then 1/2")
    axes[0].plot(a["c"], a["plain_objective"], "o", ms=5, label="GD (final)")
    axes[0].set_ylabel("final objective")
    axes[1].plot(cs, [np.sqrt(np.trace(p.gram_W)) for p in plain], "k-", lw=1, label="closed form ‖W‖_F")
    axes[1].plot(a["c"], a["plain_norm_W"], "o", ms=5, label="GD (final)")
    axes[1].set_ylabel("‖W‖_F")
    for ax in axes[:2]:
        ax.axvline(1.0, color="grey", ls="-.", lw=1, label="c = 1")
        ax.set_xlabel("c = K·√(n λ_W λ_H)   (λ_W = λ_H)")
        ax.set_title("Theorem 3.1: bias-free UFM across c = 1 (continuous)", fontsize=10)
    kas = np.linspace(0.01, a["Ka"].max() * 1.02, 500)
    lam_of = lambda ka: ka / (K * n ** (1 / 3))
    ext = [theory.layered({k: lam_of(ka) for k in ("lam_H1", "lam_W1", "lam_W2")}, sizes) for ka in kas]
    f_nz = np.array([np.nan if p.objective_nonzero is None else p.objective_nonzero for p in ext])
    axes[2].plot(kas, [p.objective for p in ext], "k-", lw=1, label="global minimum (closed form)")
    axes[2].plot(kas, f_nz, "k:", lw=1, label="nonzero local-minimum branch")
    axes[3].plot(kas, [np.sqrt(K * p.rho_W) for p in ext], "k-", lw=1, label="global minimum ‖W2‖_F")
    # ‖W2‖ on the local branch: λ_W2·σ² = a·t² with t = s^(1/3)
    w_branch = [np.nan if p.s_nonzero is None else
                np.sqrt(K * (p.Ka / K) * p.s_nonzero ** (2 / 3) / lam_of(p.Ka)) for p in ext]
    axes[3].plot(kas, w_branch, "k:", lw=1, label="nonzero local-minimum branch")
    for init, mk in zip(cfg["inits"], ("o", "s")):
        axes[2].plot(a["Ka"], a[f"ext_objective_{init:g}"], mk, ms=5, mfc="none",
                     label=f"GD from init std {init:g}")
        axes[3].plot(a["Ka"], a[f"ext_norm_W_{init:g}"], mk, ms=5, mfc="none",
                     label=f"GD from init std {init:g}")
    axes[2].set_ylabel("final objective")
    axes[3].set_ylabel("‖W2‖_F")
    for ax in axes[2:]:
        ax.axvline(theory.THREE_FACTOR_THRESHOLD, color="grey", ls="-.", lw=1, label="K·a = 2^(−4/3): jump")
        ax.axvline(theory.THREE_FACTOR_LOCAL_LIMIT, color="grey", ls=":", lw=1,
                   label="K·a = 3·4^(−4/3): local min ends")
        ax.set_xlabel("K·a,  a = (n λ_H1 λ_W1 λ_W2)^(1/3)   (all λ equal)")
        ax.set_title("Theorem 4.1: three-factor model across K·a = 2^(−4/3) (a jump)", fontsize=10)
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Where the solution becomes zero: K={K}, d={d}, n={n}, GD step {cfg['lr']:g}, "
                 f"{cfg['steps']} steps; plain model init N(0,1)  [our setting]", fontsize=11)
    common.tight_layout(fig, rect=(0, 0, 1, 0.94))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
