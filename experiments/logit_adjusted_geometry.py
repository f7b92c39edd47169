"""Figure `logit_adjusted_geometry` — the λ → 0 geometry of the logit-adjusted cross-entropy
losses under the two-group (R-STEP) imbalance (docs/theory.md §5.4): K₁ majority classes of R
samples, K₂ minority classes of 1, CDT's margin scales Δ_maj = 1, Δ_min = R^-γ (γ = 0 is plain CE
and every LA loss: τ drops out of the limit). For each (R, γ) the margin-scaled UFM-SVM is solved
by ADMM (certified by its duality gap) and the norms and angles of its balanced factors are
measured; the lines are the two-group closed form (`ufm.limit.two_group_geometry`), drawn at
continuous R. Also: γ*(R), where the classifiers' norms are equal across the groups (root of the
closed form, checked on the solver), and the closed form's proof (its largest multiplier)."""
import numpy as np
import scipy.optimize

from ufm import limit, metrics
from ufm.models import Sizes

from experiments import common

NAME = "logit_adjusted_geometry"
FULL = dict(K1=5, K2=5, ratios=[1, 2, 3, 5, 10, 20, 30, 50, 100],
            gammas=[0.0, 0.25, 0.5, 1.0], gamma_star_ratios=[2, 5, 10, 100])
SMOKE = dict(FULL, ratios=[1, 10], gammas=[0.0, 0.5], gamma_star_ratios=[10])
QUANTITIES = ("w_norm_ratio", "h_norm_ratio", "w_cos_min", "h_cos_min", "w_cos_across",
              "h_cos_across")


def scales(K1, K2, R, gamma):
    return np.array([1.0] * K1 + [float(R) ** -gamma] * K2)


def measured(K1, K2, R, gamma):
    """The solved limit's geometry: (quantities as in QUANTITIES, gap, multiplier)."""
    counts = (R,) * K1 + (1,) * K2
    delta = scales(K1, K2, R, gamma)
    sol = limit.solve_svm(counts, delta=delta, tol=1e-12)
    K = K1 + K2
    factors = limit.factors(np.asarray(sol.M), Sizes(K, counts, K))
    W = np.asarray(factors["W"], np.float64)
    Hbar = np.asarray(metrics.class_means(factors["H"], counts), np.float64).T
    out = []
    for X in (W, Hbar):
        G = X @ X.T
        unit = G / np.sqrt(np.outer(np.diag(G), np.diag(G)))
        out.append((np.sqrt(G[K1, K1] / G[0, 0]), unit[K1, K1 + 1], unit[0, K1]))
    (wn, wc, wa), (hn, hc, ha) = out
    return (wn, hn, wc, hc, wa, ha), float(sol.gap), limit.scaled_seli(counts, delta).multiplier


def predicted(K1, K2, R, gamma):
    geo = limit.two_group_geometry(K1, K2, R, 1.0, 1.0, float(R) ** -gamma)
    return (np.sqrt(geo.w_norm2[1] / geo.w_norm2[0]), np.sqrt(geo.h_norm2[1] / geo.h_norm2[0]),
            geo.w_cos[1], geo.h_cos[1], geo.w_cos[2], geo.h_cos[2])


def gamma_star(K1, K2, R):
    """The γ at which the classifiers' norms are equal across the groups (closed form's root)."""
    return scipy.optimize.brentq(lambda g: predicted(K1, K2, R, g)[0] - 1.0, 0.0, 4.0,
                                 xtol=1e-14)


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    K1, K2 = cfg["K1"], cfg["K2"]
    arrays = {"R": np.asarray(cfg["ratios"], float), "gamma": np.asarray(cfg["gammas"])}
    update, close = common.progress(len(cfg["ratios"]) * len(cfg["gammas"]), args.quiet, NAME)
    done = 0
    for gamma in cfg["gammas"]:
        rows, gaps, mult, pred = [], [], [], []
        for R in cfg["ratios"]:
            values, gap, m = measured(K1, K2, R, gamma)
            rows.append(values)
            gaps.append(gap)
            mult.append(m)
            pred.append(predicted(K1, K2, R, gamma))
            done += 1
            if update:
                update(done)
        for i, q in enumerate(QUANTITIES):
            arrays[f"g={gamma}/{q}"] = np.array([r[i] for r in rows])
            arrays[f"g={gamma}/{q}/closed"] = np.array([p[i] for p in pred])
        arrays[f"g={gamma}/gap"], arrays[f"g={gamma}/multiplier"] = np.array(gaps), np.array(mult)
    close()
    star = [gamma_star(K1, K2, R) for R in cfg["gamma_star_ratios"]]
    arrays["star/R"] = np.asarray(cfg["gamma_star_ratios"], float)
    arrays["star/gamma"] = np.array(star)
    arrays["star/w_norm_ratio"] = np.array([measured(K1, K2, R, g)[0][0]
                                            for R, g in zip(cfg["gamma_star_ratios"], star)])
    return common.finish(args, NAME, arrays, cfg, plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    K1, K2 = cfg["K1"], cfg["K2"]
    R = a["R"]
    fine = np.logspace(0, np.log10(R.max()), 200)
    fig, axes = plt.subplots(2, 4, figsize=(24, 10))
    titles = {"w_norm_ratio": "‖w_min‖/‖w_maj‖ (classifiers)",
              "h_norm_ratio": "‖h_min‖/‖h_maj‖ (class means)",
              "w_cos_min": "cos between two minority classifiers",
              "h_cos_min": "cos between two minority class means",
              "w_cos_across": "cos majority–minority classifier",
              "h_cos_across": "cos majority–minority class mean"}
    spots = {"w_norm_ratio": (0, 0), "w_cos_min": (0, 1), "w_cos_across": (0, 2),
             "h_norm_ratio": (1, 0), "h_cos_min": (1, 1), "h_cos_across": (1, 2)}
    for i, gamma in enumerate(cfg["gammas"]):
        colour = f"C{i}"
        curves = np.array([predicted(K1, K2, r, gamma) for r in fine])
        for j, q in enumerate(QUANTITIES):
            ax = axes[spots[q]]
            ax.semilogx(fine, curves[:, j], "-", color=colour, lw=1.2,
                        label=f"γ = {gamma} closed form" + (" (CE, LA)" if gamma == 0 else ""))
            ax.semilogx(R, a[f"g={gamma}/{q}"], "o", color=colour, ms=5, mfc="none",
                        label=f"γ = {gamma} ADMM limit")
            ax.set_title(titles[q], fontsize=10)
    ax = axes[0, 3]
    ratios = np.logspace(np.log10(1.5), np.log10(max(100.0, R.max())), 60)
    ax.semilogx(ratios, [gamma_star(K1, K2, r) for r in ratios], "-", color="k", lw=1.2,
                label="closed form's root")
    ax.semilogx(a["star/R"], a["star/gamma"], "o", color="C3", ms=6,
                label="on the solver: ‖w_min‖/‖w_maj‖ = "
                      + ", ".join(f"{v:.9f}" for v in a["star/w_norm_ratio"]))
    ax.set(title="γ*(R): CDT's exponent with equal classifier norms", ylabel="γ*")
    ax = axes[1, 3]
    for i, gamma in enumerate(cfg["gammas"]):
        ax.semilogx(R, np.clip(a[f"g={gamma}/gap"], 1e-17, None), "o", color=f"C{i}", ms=4,
                    label=f"γ = {gamma}: ADMM relative gap")
        ax.semilogx(R, np.abs(a[f"g={gamma}/multiplier"]), "x", color=f"C{i}", ms=5,
                    label=f"γ = {gamma}: |largest multiplier| (≤ 0 proves the closed form)")
    ax.set_yscale("log")
    ax.set(title="certificates", ylabel="log scale")
    for ax in axes.flat:
        ax.set_xlabel("imbalance ratio R = n_maj/n_min (log)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"λ → 0 geometry of logit-adjusted CE: K₁ = {K1} majority classes of R samples, "
                 f"K₂ = {K2} minority of 1, CDT scales Δ_min = R^-γ; at γ = ½ the class means "
                 f"are the classifiers over √n  [our derivation, docs/theory.md §5.4]",
                 fontsize=11)
    common.tight_layout(fig, rect=(0, 0, 1, 0.95))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
