"""Figure `bias_transition` — the uncentred class means of the regularized-bias UFM move from a
simplex ETF (λ_b → 0: the bias fits the mean, h̄_G = 0) to an orthogonal frame (λ_b → ∞: no
bias, Theorem 3.1), docs/theory.md §3.3. Certified sweeps (`ufm sweep --optimizer lbfgs`, float64:
every point's global certificate) of the mean off-diagonal cosine of the uncentred class means
against λ_b, for K = 3, 5, 10 and two (λ_W, λ_H), drawn over the closed form; the transition is
located where the simulation leaves −1/(K − 1), against λ_b* = c/(1 − c). A second row does the
same for the cross-entropy UFM with a regularized bias (`ce-bias`; no closed form: certified by
its dual bound)."""
import numpy as np

from ufm import sweep, theory
from ufm.models import Sizes

from experiments import common

NAME = "bias_transition"
FULL = dict(Ks=[3, 5, 10], n=5, d=12, lam_pairs=[[1e-2, 2e-2], [1e-3, 5e-3]],
            lam_b=np.logspace(-3, 3, 37).tolist(), steps=3000)
SMOKE = dict(FULL, Ks=[3], lam_pairs=[[1e-2, 2e-2]], lam_b=np.logspace(-2, 2, 5).tolist(),
             steps=500)
DEPART = 1e-6  # the simulation has left the ETF branch once |cos + 1/(K−1)| exceeds this


def closed_form_cosine(lam_W, lam_H, lam_b, K, n, d):
    """Avg_{k≠k'} cos(h̄_k, h̄_k') from the closed form's Gram of the uncentred means."""
    pred = theory.plain(dict(lam_W=lam_W, lam_H=lam_H, lam_b=lam_b), Sizes(K, n, d),
                        "regularized")
    G = np.asarray(pred.gram_H, np.float64)
    norms = np.sqrt(np.diag(G))
    C = G / np.outer(norms, norms)
    return float((C.sum() - np.trace(C)) / (K * (K - 1))), float(pred.c)


def _sweep(model, cfg, lam_W, lam_H, quiet):
    update, close = common.sweep_progress(quiet, f"{NAME} {model}")
    arrays, _ = sweep.run_grid(
        model, {"K": cfg["Ks"], "d": [cfg["d"]], "n": [cfg["n"]]},
        {"lam_W": lam_W, "lam_H": lam_H}, {"lam_b": cfg["lam_b"]}, order=["K", "lam_b"],
        steps=cfg["steps"], optimizer="lbfgs", progress=update)
    close()
    if len(cfg["Ks"]) == 1:  # a static axis of one value is no axis: give it back
        arrays = {k: v[None] if isinstance(v, np.ndarray) and v.ndim else v
                  for k, v in arrays.items()}
    return arrays


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    arrays, rows = {}, []
    for model in ("regularized-bias", "ce-bias"):
        for p, (lam_W, lam_H) in enumerate(cfg["lam_pairs"]):
            a = _sweep(model, cfg, lam_W, lam_H, args.quiet)
            key = f"{model}/{p}"
            for name in ("cos_uncentred_H", "global", "global_gap", "objective", "b_mean",
                         "converged"):
                arrays[f"{key}/{name}"] = a[name]
            if model != "regularized-bias":
                continue
            for i, K in enumerate(cfg["Ks"]):
                forms = [closed_form_cosine(lam_W, lam_H, lb, K, cfg["n"], cfg["d"])
                         for lb in cfg["lam_b"]]
                arrays[f"{key}/theory_cos/K={K}"] = np.array([f[0] for f in forms])
                c = forms[0][1]
                off = np.abs(a["cos_uncentred_H"][i] + 1.0 / (K - 1)) > DEPART
                left = float(np.asarray(cfg["lam_b"])[off][0]) if off.any() else None
                rows.append(dict(model=model, pair=p, K=K, c=c,
                                 transition=c / (1 - c) if c < 1 else None,
                                 departs_at=left))
    arrays["lam_b"] = np.asarray(cfg["lam_b"])
    return common.finish(args, NAME, arrays, dict(cfg, rows=rows), plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    lb = a["lam_b"]
    pairs = cfg["lam_pairs"]
    fig, axes = plt.subplots(2, len(pairs), figsize=(7.5 * len(pairs), 10), squeeze=False)
    for r, model in enumerate(("regularized-bias", "ce-bias")):
        for p, (lam_W, lam_H) in enumerate(pairs):
            ax = axes[r][p]
            key = f"{model}/{p}"
            cos, ok = a[f"{key}/cos_uncentred_H"], a[f"{key}/global"]
            for i, K in enumerate(cfg["Ks"]):
                colour = f"C{i}"
                ax.semilogx(lb[ok[i]], cos[i][ok[i]], "o", color=colour, ms=4,
                            label=f"K = {K}: L-BFGS, certified global")
                if (~ok[i]).any():
                    ax.semilogx(lb[~ok[i]], cos[i][~ok[i]], "x", color=colour, ms=6,
                                label=f"K = {K}: not certified")
                ax.axhline(-1 / (K - 1), color=colour, lw=0.6, ls=":")
                if f"{key}/theory_cos/K={K}" in a:
                    ax.semilogx(lb, a[f"{key}/theory_cos/K={K}"], "-", color=colour, lw=1.2,
                                alpha=0.6, label=f"K = {K}: closed form (§3.3)")
                    row = next(x for x in cfg["rows"] if x["pair"] == p and x["K"] == K)
                    if row["transition"]:
                        ax.axvline(row["transition"], color=colour, lw=0.8, ls="--")
            ax.axhline(0.0, color="k", lw=0.6)
            ax.set(xlabel="λ_b (log scale)", ylabel="mean cos(h̄_k, h̄_k′), uncentred means",
                   title=f"{model}: λ_W = {lam_W:g}, λ_H = {lam_H:g}" + (
                       "; dashed: λ_b* = c/(1 − c)" if model == "regularized-bias" else
                       "; no closed form"))
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"The bias transition: uncentred class means from a simplex ETF (cos = −1/(K−1),"
                 f" dotted) to an orthogonal frame (cos = 0); n = {cfg['n']}, d = {cfg['d']}, "
                 f"float64, every point certified by its dual bound  [our settings]", fontsize=11)
    common.tight_layout(fig, rect=(0, 0, 1, 0.95))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
