"""Figure `seli_path` — the regularisation path of the imbalanced cross-entropy UFM toward its
λ → 0 limit (docs/theory.md §5.4): at every μ = √(λ_Wλ_H) from 1e-1 down to 1e-8 the certified
optimum (Newton's path, `ufm.path`, and the convex solver where a collapsed or zero optimum
leaves Newton uncertified; the dual gap closed at every point), its class logits' alignment with the UFM-SVM
direction (`--limit`, whose centred logits are SELI's (I − 11ᵀ/K)), and the growth of its norm,
for imbalance ratios R = 1, 10, 100 (two majority classes of 5R samples, two minority of 5).
Alignment is the cosine of A = M·D^½ (M the class logits, D the counts): the logit matrices'
inner product over samples."""
import numpy as np

from ufm import limit, metrics, path, runner

from experiments import common

NAME = "seli_path"
FULL = dict(ratios=[1, 10, 100], minority=5, mu=np.logspace(-1, -8, 36).tolist(), d=4,
            steps=200000)
ZERO = 1e-6  # logits below this norm: the zero optimum
SMOKE = dict(FULL, ratios=[1, 10], mu=np.logspace(-1, -5, 3).tolist(), steps=20000)


def counts_for(R, minority):
    return (R * minority, R * minority, minority, minority)


def weighted(M, counts):
    """A = M·D^½: the class logits weighted so that ⟨A, A′⟩ = ⟨Z, Z′⟩ over samples."""
    return np.asarray(M, np.float64) * np.sqrt(np.asarray(counts, np.float64))[None, :]


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    K = 4
    arrays = {"mu": np.asarray(cfg["mu"])}
    update, close = common.progress(len(cfg["ratios"]) * len(cfg["mu"]), args.quiet, NAME)
    done = 0
    for R in cfg["ratios"]:
        counts = counts_for(R, cfg["minority"])
        svm = limit.solve_svm(counts, max_iter=cfg["steps"], tol=1e-12)
        A_lim = weighted(svm.M, counts)
        newton = path.certified_path(counts, np.asarray(cfg["mu"]))
        cos, norm, gap, certified, by_newton = [], [], [], [], []
        for i, mu in enumerate(cfg["mu"]):
            if newton["certified"][i]:
                M, g, ok = newton["M"][i], newton["gap"][i], True
            else:  # a collapsed or zero optimum: the convex solver (FISTA)
                r = runner.train("ce", K=K, n=counts, d=cfg["d"], optimizer="convex",
                                 steps=cfg["steps"], lam_W=mu, lam_H=mu)
                M = np.asarray(r.params["W"]) @ np.asarray(metrics.class_means(r.params["H"],
                                                                               counts))
                g = r.certificate["global_gap"] / abs(r.final["objective"])
                ok = bool(r.certificate["global"])
            A = weighted(M, counts)
            # the zero optimum (Newton's reaches it as logits of size ~1e-11) has no direction
            cos.append(float(np.sum(A * A_lim) / (np.linalg.norm(A) * np.linalg.norm(A_lim)))
                       if np.linalg.norm(A) > ZERO else np.nan)
            norm.append(float(np.linalg.norm(A)))
            gap.append(float(g))
            certified.append(ok)
            by_newton.append(bool(newton["certified"][i]))
            done += 1
            if update:
                update(done)
        arrays.update({f"R={R}/cos": np.array(cos), f"R={R}/norm": np.array(norm),
                       f"R={R}/gap": np.array(gap), f"R={R}/global": np.array(certified),
                       f"R={R}/newton": np.array(by_newton),
                       f"R={R}/limit_value": np.float64(svm.value),
                       f"R={R}/limit_gap": np.float64(svm.gap),
                       f"R={R}/seli_error": np.float64(limit.seli_error(np.asarray(svm.M)))})
    close()
    return common.finish(args, NAME, arrays, dict(cfg, K=K), plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    mu = a["mu"]
    fig, axes = plt.subplots(1, 3, figsize=(21, 5.5))
    ax0_draw, ax1_draw = (lambda ax: ax.loglog), (lambda ax: ax.semilogx)
    for i, R in enumerate(cfg["ratios"]):
        colour = f"C{i}"
        ok = a[f"R={R}/global"]
        one_minus = np.clip(1 - a[f"R={R}/cos"], 1e-17, None)
        for ax, values, draw in ((axes[0], one_minus, ax0_draw), (axes[1], a[f"R={R}/norm"],
                                                                   ax1_draw)):
            draw(ax)(mu, values, "-", color=colour, lw=1)
            draw(ax)(mu[ok], values[ok], "o", color=colour, ms=4, label=f"R = {R}")
            if (~ok).any():
                draw(ax)(mu[~ok], values[~ok], "o", mfc="none", color=colour, ms=6,
                         label=f"R = {R}: not certified")
        nt = a[f"R={R}/newton"]
        axes[2].loglog(mu[nt], np.clip(np.abs(a[f"R={R}/gap"][nt]), 1e-17, None), "o",
                       color=colour, ms=4, label=f"R = {R}: Newton, {int(nt.sum())} points")
        if (~nt).any():
            axes[2].loglog(mu[~nt], np.clip(np.abs(a[f"R={R}/gap"][~nt]), 1e-17, None), "s",
                           mfc="none", color=colour, ms=6,
                           label=f"R = {R}: convex solver, {int((~nt).sum())} points "
                                 f"({int(ok.sum())}/{ok.size} certified in all)")
    axes[0].set(title="1 − cos(A(μ), A_SVM): the optimum's logits turn toward the limit (SELI)",
                ylabel="1 − cosine (log)")
    axes[1].set(title="‖A(μ)‖ = ‖Z‖_F of the optimum: grows like log(1/μ)",
                ylabel="norm of the logits")
    axes[2].set(title="certificate: (objective − dual bound)/objective at every point",
                ylabel="relative gap (log; 1e-17 floor)")
    for ax in axes:
        ax.set_xlabel("μ = √(λ_Wλ_H) (log)")
        ax.invert_xaxis()
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"The regularisation path of cross-entropy toward SELI: K = {cfg['K']}, counts "
                 f"(5R, 5R, 5, 5), d = {cfg['d']}, Newton's path and the convex solver (float64), the "
                 f"UFM-SVM limit by ADMM  [our setting]", fontsize=11)
    common.tight_layout(fig, rect=(0, 0, 1, 0.93))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
