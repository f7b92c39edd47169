"""Figure `regularized_bias` — docs/theory.md §3.3: the λ_b transition of the regularized-bias UFM.

For λ_b/(1+λ_b) ≤ c the bias is b = 1/(K(1+λ_b)) and the features keep h̄_G = 0 (ETF); past it the
bias saturates at b = c/(Kλ_b) and the class means gain a global-mean component, the uncentred
Gram moving from a simplex ETF toward an orthogonal frame. A grid of λ_b runs as one vmapped
program; each point is compared with the two-branch closed form.
"""
import jax
import jax.numpy as jnp
import numpy as np

import ufm
from ufm import geometry, metrics, optimise, theory
from ufm.models import Sizes

from experiments import common

NAME = "regularized_bias"
FULL = dict(K=4, n=10, d=8, lam_W=1e-2, lam_H=2e-2, lr=0.1, steps=150000, log_every=5000,
            lam_b=np.logspace(-3, 1, 29))  # GD on b is stable only for lr·λ_b < 2
SMOKE = dict(FULL, steps=300, log_every=100, lam_b=np.logspace(-2, 1, 4))


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    model = ufm.get_model("regularized-bias")
    sizes = Sizes(cfg["K"], cfg["n"], cfg["d"])
    B = len(cfg["lam_b"])
    hyper = optimise.broadcast_hyper(optimise.as_hyper(
        dict(lam_W=cfg["lam_W"], lam_H=cfg["lam_H"], lam_b=0.0, lr=cfg["lr"], init_scale=1.0)), B)
    hyper["lam_b"] = jnp.asarray(cfg["lam_b"], hyper["lam_W"].dtype)
    keys = jnp.broadcast_to(jax.random.PRNGKey(0), (B, 2))  # same init at every λ_b
    update, close = common.progress(cfg["steps"], args.quiet, NAME)
    traj = optimise.simulate(model, sizes, keys, hyper, cfg["steps"],
                            cfg["log_every"], callback=update, batched=True)
    close()
    W, H, b = (np.asarray(traj.params[k]) for k in ("W", "H", "b"))
    align = np.array([np.linalg.norm(W[i] / np.linalg.norm(W[i]) - (lambda m: m.T / np.linalg.norm(m))(
        np.asarray(metrics.class_means(H[i], sizes.K)))) for i in range(B)])
    preds = [theory.plain(dict(lam_W=cfg["lam_W"], lam_H=cfg["lam_H"], lam_b=lb), sizes,
                          "regularized") for lb in cfg["lam_b"]]
    arrays = dict(lam_b=cfg["lam_b"], b_mean=b.mean(1), b_spread=np.ptp(b, 1),
                  objective=np.asarray(traj.history["objective"][:, -1]),
                  diverged=np.asarray(traj.diverged_at) >= 0,
                  nc2_etf_H=np.asarray(traj.history["nc2_etf_H"][:, -1]),
                  nc2_of_H=np.asarray(traj.history["nc2_of_H"][:, -1]),
                  global_mean=np.array([np.linalg.norm(np.asarray(metrics.class_means(H[i], sizes.K)).mean(1))
                                        for i in range(B)]),
                  alignment=align,
                  theory_objective=[p.objective for p in preds], theory_b=[p.b for p in preds],
                  theory_nc2_of_H=[float(geometry.of_distance(p.gram_H)) for p in preds])
    config = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in cfg.items()}
    config["c"] = preds[0].c
    return common.finish(args, NAME, arrays, config, plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    K, c = cfg["K"], cfg["c"]
    lb_star = c / (1 - c)  # where λ_b/(1+λ_b) = c
    fine = np.logspace(np.log10(a["lam_b"][0]), np.log10(a["lam_b"][-1]), 400)
    fig, axes = plt.subplots(1, 4, figsize=(22, 5))
    ax = axes[0]
    ax.loglog(fine, 1 / (K * (1 + fine)), "k--", lw=1, label="b = 1/(K(1+λ_b))  (ETF branch)")
    ax.loglog(fine, c / (K * fine), "k:", lw=1, label="b = c/(Kλ_b)  (saturated branch)")
    ax.loglog(a["lam_b"], a["theory_b"], "-", color="C1", lw=2, alpha=0.5, label="closed form")
    ax.loglog(a["lam_b"], a["b_mean"], "o", color="C0", ms=4, label="GD: mean of b")
    if a["diverged"].any():
        bad = a["lam_b"][a["diverged"]]
        ax.loglog(bad, np.full(bad.shape, 1 / K), "rx", label="GD diverged (lr·λ_b > 2)")
    ax.set_ylim(0.5 * a["theory_b"].min(), 2 / K)
    ax.set_title("final bias against λ_b", fontsize=10)
    ax.set_ylabel("b (log scale)")
    ax = axes[1]
    ax.loglog(a["lam_b"], np.clip(a["nc2_etf_H"], 1e-17, None), "o", ms=4, label="NC2-ETF of centred means M̄ (GD)")
    ax.loglog(a["lam_b"], np.clip(a["nc2_of_H"], 1e-17, None), "s", ms=4, label="NC2-OF of uncentred means H̄ (GD)")
    ax.loglog(a["lam_b"], a["theory_nc2_of_H"], "-", color="C1", lw=1, label="NC2-OF of H̄, closed form")
    ax.set_title("geometry: M̄ stays an ETF, H̄ moves toward an OF", fontsize=10)
    ax.set_ylabel("distance (log scale)")
    ax = axes[2]
    ax.loglog(a["lam_b"], np.clip(a["alignment"], 1e-17, None), "o", ms=4,
              label="‖W/‖W‖ − H̄ᵀ/‖H̄‖‖ (GD)")
    ax.loglog(a["lam_b"], np.clip(a["global_mean"], 1e-17, None), "s", ms=4, label="‖h̄_G‖ (GD)")
    ax.set_title("W aligned with H̄ᵀ; global mean appears past the transition", fontsize=10)
    ax.set_ylabel("value (log scale)")
    ax = axes[3]
    gap = np.abs(a["objective"] - a["theory_objective"]) / a["theory_objective"]
    ax.loglog(a["lam_b"], np.clip(gap, 1e-17, None), "o", ms=4,
              label=f"|f − f*|/f* after {cfg['steps']} GD steps")
    ax.set_title("relative gap to the closed form (slow GD at the transition)", fontsize=10)
    ax.set_ylabel("relative gap (log scale)")
    for ax in axes:
        ax.axvline(lb_star, color="grey", lw=1, ls="-.", label=f"λ_b/(1+λ_b) = c  (λ_b = {lb_star:.3g})")
        ax.set_xlabel("λ_b (log scale)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"docs/theory.md §3.3: regularized-bias UFM across the λ_b transition; K={K}, d={cfg['d']}, "
                 f"n={cfg['n']}, λ_W={cfg['lam_W']:g}, λ_H={cfg['lam_H']:g} (c = {c:.3g}), GD step "
                 f"{cfg['lr']:g} (stable for λ_b < 2/step), {cfg['steps']} steps, N(0,1) init  [our setting]",
                 fontsize=11)
    common.tight_layout(fig, rect=(0, 0, 1, 0.94))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
