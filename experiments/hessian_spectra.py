"""Figure `hessian_spectra` — the restricted Hessian spectrum (docs/theory.md §6) at the structured
solutions of the deep linear cross-entropy UFM, each built exactly (theory.deep_ce_constructions:
the logits α·S at the best α, factored with balanced factors) and certified by its dense float64
spectrum on the orthogonal complement of the symmetry orbit.

Panels: K = 4, L = 3 (where the low-rank blocks beat DNC) at DNC and at the low-rank solution;
K = 10, L = 3 at DNC and at the triangular tight frame (rank 4) — at DNC every eigenvalue
predicted (theory.deep_ce_hessian); the bias-free MSE optimum with
its closed-form spectrum drawn (theory.bias_free_hessian: every eigenvalue predicted); and the
deep linear MSE UFM at DNC, Garrod & Keating's setting, with its whole spectrum predicted
(theory.deep_linear_hessian: the outliers, the class-pair blocks, the interfaces). Each spectrum is drawn as a
histogram of |λ| on a log axis, negative eigenvalues in red, with λ_min and the kind. The same for
one point from the command line:
  ufm train deep-linear-ce --depth 3 --K 10 --n 5 --d 16 --lam-H1 0.001953125 \
      --lam-W 0.001953125 --init-from triangular --optimizer lbfgs --x64 --hessian
"""
import numpy as np

from ufm import hessian, theory
from ufm.models import Sizes, get_model

from experiments import common

NAME = "hessian_spectra"
FULL = dict(cases=[[4, 3, "dnc"], [4, 3, "low-rank"], [10, 3, "dnc"], [10, 3, "triangular"]],
            n=5, d=12, lam=2.0 ** -9, bias_free=[4, 5, 6], bias_free_lam=[1e-2, 2e-2],
            deep_linear=[4, 5, 6, 3], deep_linear_lam=[5e-3, 2e-3, 4e-3, 3e-3])
SMOKE = dict(FULL, cases=[[4, 3, "dnc"], [4, 3, "low-rank"]], n=2, d=4, bias_free=[3, 2, 4],
             deep_linear=[3, 2, 4, 2], deep_linear_lam=[5e-3, 2e-3, 4e-3])


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    out, rows = {}, []
    for K, L, name in cfg["cases"]:
        hyper = {"lam_H1": cfg["lam"], **{f"lam_W{l}": cfg["lam"] for l in range(1, L + 1)}}
        sizes = Sizes(K, cfg["n"], max(cfg["d"], K - 1))
        model = get_model("deep-linear-ce", depth=L)
        construction = theory.deep_ce_constructions(hyper, sizes, L)[name]
        params = model.constructions(hyper, sizes)[name]
        so = hessian.classify(model, sizes, hyper, params, method="dense")
        key = f"K{K}_L{L}_{name}"
        out[f"{key}/eigenvalues"] = np.asarray(so.eigenvalues)
        out[f"{key}/objective"] = np.asarray(construction.objective)
        if name == "dnc":  # every eigenvalue predicted (theory.deep_ce_hessian)
            out[f"{key}/predicted"] = np.array(
                [v for v, m in theory.deep_ce_hessian(hyper, sizes, L) for _ in range(m)])
        rows.append(dict(key=key, K=K, L=L, name=name, kind=so.kind, tol=so.tol,
                         min_eigenvalue=so.min_eigenvalue, symmetry_dim=so.symmetry_dim,
                         grad_norm=so.grad_norm, rank=construction.rank,
                         objective=construction.objective, parameters=so.parameters))
    out.update(_bias_free(cfg, rows))
    out.update(_deep_linear(cfg, rows))
    return common.finish(args, NAME, out, dict(cfg, rows=rows), plot)


def _bias_free(cfg, rows):
    """The bias-free MSE optimum (Theorem 3.1's W = a·R, h = β·r_k) with its closed-form spectrum
    (theory.bias_free_hessian): computed and predicted eigenvalues, for the last panel."""
    K, n, d = cfg["bias_free"]
    lam = cfg["bias_free_lam"]
    hyper, sizes = {"lam_W": lam[0], "lam_H": lam[1]}, Sizes(K, n, d)
    params = theory.bias_free_minimiser(hyper, sizes)
    so = hessian.classify(get_model("bias-free"), sizes, hyper, params, method="dense")
    predicted = theory.bias_free_hessian(hyper, sizes)
    rows.append(dict(key="bias_free", K=K, L=1, name="bias-free MSE optimum", kind=so.kind,
                     tol=so.tol, min_eigenvalue=so.min_eigenvalue, symmetry_dim=so.symmetry_dim,
                     grad_norm=so.grad_norm, rank=K, objective=theory.plain(hyper, sizes).objective,
                     parameters=so.parameters))
    return {"bias_free/eigenvalues": np.asarray(so.eigenvalues),
            "bias_free/predicted": np.array([v for v, m in predicted for _ in range(m)])}


def _deep_linear(cfg, rows):
    """The deep linear MSE UFM at DNC (Garrod & Keating's setting; a λ of its own for every
    factor) with every eigenvalue predicted (theory.deep_linear_hessian, docs/theory.md §6.4)."""
    K, n, d, L = cfg["deep_linear"]
    lam = cfg["deep_linear_lam"]
    hyper = {"lam_H1": lam[0], **{f"lam_W{l}": lam[l] for l in range(1, L + 1)}}
    sizes = Sizes(K, n, d)
    params = theory.deep_linear_dnc(hyper, sizes, L)
    so = hessian.classify(get_model("deep-linear", depth=L), sizes, hyper, params,
                          method="dense")
    predicted = theory.deep_linear_hessian(hyper, sizes, L)
    rows.append(dict(key="deep_linear", K=K, L=L, name="deep linear MSE at DNC", kind=so.kind,
                     tol=so.tol, min_eigenvalue=so.min_eigenvalue, symmetry_dim=so.symmetry_dim,
                     grad_norm=so.grad_norm, rank=K,
                     objective=theory.layered(hyper, sizes, L).objective,
                     parameters=so.parameters))
    return {"deep_linear/eigenvalues": np.asarray(so.eigenvalues),
            "deep_linear/predicted": np.array([v for v, m in predicted for _ in range(m)])}


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    rows = cfg["rows"]
    cols = min(3, len(rows))
    grid = -(-len(rows) // cols)
    fig, axes = plt.subplots(grid, cols, figsize=(5.2 * cols, 4.2 * grid), squeeze=False)
    for ax in axes.ravel()[len(rows):]:
        ax.axis("off")
    for ax, row in zip(axes.ravel(), rows):
        ev = a[f"{row['key']}/eigenvalues"]
        mags = np.abs(ev[ev != 0])
        bins = np.logspace(np.log10(max(mags.min(), 1e-16)), np.log10(mags.max()) + 0.1, 50)
        ax.hist(np.abs(ev[ev > 0]), bins=bins, color="#1f77b4", label="λ > 0")
        if (ev < 0).any():
            ax.hist(np.abs(ev[ev < 0]), bins=bins, color="#d62728", label="λ < 0 (|λ|)")
        ax.axvline(abs(row["min_eigenvalue"]), color="k", ls="--", lw=1,
                   label=f"|λ_min| = {abs(row['min_eigenvalue']):.3g}")
        ax.plot([], [], " ", label=f"tol {row['tol']:.1g} (λ_min > tol: strict)")
        if f"{row['key']}/predicted" in a:  # the closed form (docs/theory.md §6.4)
            for i, v in enumerate(np.unique(np.round(a[f"{row['key']}/predicted"], 12))):
                ax.axvline(v, color="#d62728", ls="--", lw=0.8,
                           label="closed form" if i == 0 else None)
        ax.set_xscale("log")
        ax.set_xlim(mags.min() / 2, mags.max() * 2)
        ax.set_yscale("log")
        ax.set_xlabel("|eigenvalue| of the restricted Hessian")
        ax.set_ylabel("count")
        ax.set_title(f"K = {row['K']}, L = {row['L']}, {row['name']} (rank {row['rank']}): "
                     f"f = {row['objective']:.6f}\n{row['kind']}; {row['symmetry_dim']} symmetry "
                     f"directions removed of {row['parameters']}", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"Restricted Hessian spectra (dense, float64): the deep linear CE constructions "
                 f"(n = {cfg['n']}, d = {cfg['d']}, every λ = {cfg['lam']:g}; DNC against its "
                 f"closed form), the bias-free MSE optimum and the deep linear MSE UFM at DNC "
                 f"against theirs  [our setting]", fontsize=10)
    common.tight_layout(fig, rect=(0, 0, 1, 0.92))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
