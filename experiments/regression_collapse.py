"""Figure `regression_collapse` — neural regression collapse in the regression UFM (docs/theory.md
§3.13): targets Y [m = 3, N = 60] with correlated outputs, d = 8, a free bias; a certified-by-
closed-form L-BFGS sweep over λ_W at λ_H = 0.01. NRC1 (features outside their top-m principal
span), NRC2 (outside W's row space) and NRC3 (W Wᵀ against √(λ_H/λ_W)(√N Σ^½ − Nμ I)₊) are at
round-off wherever the solution is not zero, the rank drops as the thresholds Nμ = σ_i pass, and
at λ = 0 (interpolation) nothing collapses: NRC1 keeps the random start's share."""
import numpy as np

from ufm import runner, sweep

from experiments import common

NAME = "regression_collapse"
FULL = dict(m=3, N=60, d=8, lam=np.logspace(-6, 2, 41).tolist(), lam_H=1e-2, steps=3000,
            seeds=4)
SMOKE = dict(FULL, lam=np.logspace(-4, 1, 5).tolist(), steps=500, seeds=2)


def targets(m, N, seed=0):
    """Correlated outputs with a non-zero mean: Y = A·Z + c, Z standard normal."""
    rng = np.random.default_rng(seed)
    A = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.3, -0.2, 0.4]])[:m, :m]
    return A @ rng.normal(size=(m, N)) + np.array([1.0, -0.5, 2.0])[:m, None]


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    m, N, d = cfg["m"], cfg["N"], cfg["d"]
    Y = targets(m, N)
    options = dict(targets=tuple(map(tuple, Y)), bias=True)
    counts = tuple(np.diff(np.linspace(0, N, m + 1).astype(int)))  # N as K = m "counts"
    lam = np.asarray(cfg["lam"])
    update, close = common.sweep_progress(args.quiet, NAME)
    a, _ = sweep.run_grid("regression", {"K": [m], "d": [d], "n": [counts]},
                          {"lam_H": cfg["lam_H"]}, {"lam_W": lam}, order=["lam_W"],
                          steps=cfg["steps"], optimizer="lbfgs", options=options,
                          progress=update)
    close()
    pick = lambda k: a[k]
    zero = [runner.train("regression", K=m, n=counts, d=d, steps=cfg["steps"],
                         optimizer="lbfgs", lam_W=0.0, lam_H=0.0, seed=s, options=options)
            for s in range(cfg["seeds"])]
    Yc = Y - Y.mean(axis=1, keepdims=True)
    arrays = dict(lam=lam, objective=pick("objective"), theory=pick("theory_objective"),
                  nrc1=pick("nrc1"), nrc2=pick("nrc2"), nrc3=pick("nrc3"),
                  converged=pick("converged"), mse=pick("mse"),
                  sigma=np.linalg.svd(Yc, compute_uv=False),
                  zero_nrc1=np.array([r.final["nrc1"] for r in zero]),
                  zero_nrc2=np.array([r.final["nrc2"] for r in zero]),
                  zero_objective=np.array([r.final["objective"] for r in zero]))
    return common.finish(args, NAME, arrays, dict(cfg, counts=list(counts)), plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    lam, N = a["lam"], cfg["N"]
    fig, axes = plt.subplots(1, 3, figsize=(21, 5.5))
    thresholds = (a["sigma"] / N) ** 2 / cfg["lam_H"]  # σ_i = Nμ, μ = √(λ_Wλ_H)
    ax = axes[0]
    ax.loglog(lam, a["theory"], "-", color="C1", lw=2, alpha=0.5, label="closed form f*")
    ax.loglog(lam, a["objective"], "o", ms=4, label="L-BFGS")
    ax.set(title="objective against the closed form", ylabel="objective (log)")
    ax = axes[1]
    for k, marker in (("nrc1", "o"), ("nrc2", "s"), ("nrc3", "^")):
        v = a[k]
        ok = np.isfinite(v)
        ax.loglog(lam[ok], np.clip(v[ok], 1e-17, None), marker, ms=4, label=k)
    ax.set(title="NRC1–3 at the optimum (NaN at the zero solution: not drawn)",
           ylabel="value (log; 1e-17 floor)")
    ax = axes[2]
    ax.bar(["λ = 0, NRC1", "λ = 0, NRC2"], [a["zero_nrc1"].mean(), a["zero_nrc2"].mean()],
           yerr=[a["zero_nrc1"].std(), a["zero_nrc2"].std()], color=["C0", "C1"])
    ax.set(title=f"no regularisation: interpolation (f ≤ {a['zero_objective'].max():.1e}), "
                 f"no collapse ({len(a['zero_nrc1'])} seeds)", ylabel="share of feature energy")
    for ax in axes[:2]:
        for t in thresholds:
            ax.axvline(t, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(f"λ_W (log), λ_H = {cfg['lam_H']:g}; dashed: σ_i(Ỹ) = Nμ, a rank drops")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Neural regression collapse in the regression UFM: m = {cfg['m']} correlated "
                 f"targets, N = {N}, d = {cfg['d']}, free bias, float64 L-BFGS  [our setting]",
                 fontsize=11)
    common.tight_layout(fig, rect=(0, 0, 1, 0.93))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
