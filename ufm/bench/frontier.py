"""The convex frontier (float64): the CE regularisation path by the convex solver and by
Newton, and the UFM-SVM (docs/performance.md)."""
import time

import jax
import numpy as np


FRONTIER_K = 10  # the λ path: K classes with counts from 5,000 down to 50 (geometric)
FRONTIER_SVM_K = 100  # the UFM-SVM: counts from 1,000 down to 10


def frontier_times(quick=False):
    """The convex frontier (docs/theory.md §5.4): a 64-point path of certified CE optima in one
    vmapped program (`ufm sweep ce --optimizer convex`), μ from 1e-1 to 1e-4 and to 1e-8; the
    same path to 1e-8 by Newton (ufm.path) with the convex solver for the points it leaves; and
    the UFM-SVM (`--limit`) at K = 100; seconds, compilation included, with how many points the
    dual gap certified."""
    from ufm import limit, path, sweep

    K, points = (4, 8) if quick else (FRONTIER_K, 64)
    counts = tuple(int(c) for c in np.round(np.geomspace(5000, 50, K)))
    out = {"K": K, "counts": list(counts), "points": points, "paths": []}
    for low in (1e-4, 1e-8):
        mu = np.logspace(-1, np.log10(low), points)
        t0 = time.perf_counter()
        arrays, _ = sweep.run_grid("ce", {"K": [K], "d": [K], "n": [counts]}, {"lam_H": 1.0},
                                   {"lam_W": mu ** 2}, order=["lam_W"], steps=100000,
                                   optimizer="convex")
        out["paths"].append({"mu_low": low, "seconds": time.perf_counter() - t0,
                             "certified": int(arrays["global"].sum())})
    # Newton on the smooth reduced problem (ufm.path), the convex solver for what it leaves
    mu = np.logspace(-1, -8, points)
    t0 = time.perf_counter()
    newton = path.certified_path(counts, mu)
    rest = mu[~newton["certified"]]
    fallback = 0
    if rest.size:
        arrays, _ = sweep.run_grid("ce", {"K": [K], "d": [K], "n": [counts]}, {"lam_H": 1.0},
                                   {"lam_W": rest ** 2}, order=["lam_W"], steps=100000,
                                   optimizer="convex")
        fallback = int(arrays["global"].sum())
    out["newton"] = {"seconds": time.perf_counter() - t0, "newton": int(newton["certified"].sum()),
                     "fallback": fallback, "worst_gap": float(newton["gap"][newton["certified"]]
                                                              .max())}
    svm_K = 10 if quick else FRONTIER_SVM_K
    svm_counts = tuple(int(c) for c in np.round(np.geomspace(1000, 10, svm_K)))
    t0 = time.perf_counter()
    sol = jax.jit(lambda: limit.solve_svm(svm_counts, max_iter=50000, tol=1e-10))()
    gap = float(sol.gap)
    out["svm"] = {"K": svm_K, "seconds": time.perf_counter() - t0, "gap": gap,
                  "iterations": int(sol.iterations)}
    return out


def frontier_report(f):
    lines = [f"\nconvex frontier (float64): K = {f['K']}, counts {f['counts'][0]:,} … "
             f"{f['counts'][-1]:,}"]
    for p in f["paths"]:
        lines.append(f"  {f['points']}-point path of certified CE optima, μ from 1e-1 to "
                     f"{p['mu_low']:.0e}, one vmapped program: {p['seconds']:.1f} s "
                     f"({p['certified']}/{f['points']} certified)")
    n = f["newton"]
    lines.append(f"  {f['points']}-point path, μ from 1e-1 to 1e-8, by Newton (ufm.path) and the "
                 f"convex solver for the points Newton leaves: {n['seconds']:.1f} s "
                 f"({n['newton']} certified by Newton, worst gap {n['worst_gap']:.0e}; "
                 f"{n['fallback']}/{f['points'] - n['newton']} by the convex solver)")
    s = f["svm"]
    lines.append(f"  UFM-SVM (--limit), K = {s['K']}: {s['seconds']:.2f} s, relative gap "
                 f"{s['gap']:.1e} after {s['iterations']} iterations")
    return lines
