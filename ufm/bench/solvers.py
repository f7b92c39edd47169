"""Time to the optimum (float64): each optimiser to a 1e-10 gap to the closed form, a λ grid by
L-BFGS and by GD, and the time to a certified global optimum (convex solver, L-BFGS, GD,
cvxpy when installed; docs/performance.md)."""
import functools
import time

import jax
import numpy as np

from ufm import convex, optimise, sweep
from ufm.config import hyper_for
from ufm.models import Sizes
from ufm.bench.rates import LR


SOLVER_SIZES = Sizes(4, 50, 20)
SOLVER_LAMBDAS = (1e-2, 1e-3, 1e-4)
SOLVERS = {"gd": 0.1, "momentum": 0.01, "adam": 1e-3, "lbfgs": None}  # name -> step size
GAP = 1e-10


@functools.lru_cache(maxsize=None)
def _program(model, sizes, steps, opt, checked):
    """One compiled run of `opt` on `model` (λ, step size and target are traced, so the program
    is compiled once per model, optimiser and length, not once per λ; compilation is not timed).
    checked: stop at the target objective (records the step it is reached); otherwise a plain scan
    without stopping checks."""
    kw = {"tol": 0.0} if checked else {}
    fn = functools.partial(optimise.simulate, model, sizes, steps=steps, log_every=steps,
                           optimizer=opt, **kw)
    h = optimise.as_hyper(dict({k: 1.0 for k in model.hyper_names}, lr=LR, init_scale=1.0,
                               **({"target": 1.0} if checked else {})))
    return jax.jit(fn).lower(jax.random.PRNGKey(0), h).compile()


def time_to_gap(model, sizes, hyper, opt, cap, init_scale, key=None, f_star=None):
    """Time for `opt` to bring `model` within a relative GAP of its optimum f_star (default: its
    closed form), float64.

    One compiled run stops at the target f*(1 + GAP) or at `cap` steps. L-BFGS is timed as it
    runs. A first-order method's time is its steps to the target × its time per step in a plain
    compiled scan without stopping checks (the fastest it runs those steps); when it does not get
    there within the cap, the time of the cap is a lower bound.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    f_star = model.theory(hyper, sizes).objective if f_star is None else f_star
    h = optimise.as_hyper(dict(hyper, lr=SOLVERS[opt] or LR, init_scale=init_scale,
                               target=f_star * (1 + GAP)))
    run = _program(model, sizes, cap, opt, True)
    t0 = time.perf_counter()
    traj = jax.block_until_ready(run(key, h))
    wall = time.perf_counter() - t0
    reached = int(traj.converged_at) >= 0
    steps = int(traj.converged_at) if reached else cap
    if opt == "lbfgs":
        seconds = wall
    else:  # per-step time of the plain scan
        probe = min(cap, 20000)
        plain = _program(model, sizes, probe, opt, False)
        h_plain = {k: v for k, v in h.items() if k != "target"}
        jax.block_until_ready(plain(key, h_plain))
        t0 = time.perf_counter()
        jax.block_until_ready(plain(key, h_plain))
        seconds = steps * (time.perf_counter() - t0) / probe
    return {"reached": reached, "steps": steps, "seconds": seconds}


def solver_times(quick=False):
    """Time to a 1e-10 relative gap per optimiser, model and λ, and the 32×32 grid."""
    from ufm.models import get_model

    cap = 20000 if quick else 1_000_000
    rows = []
    for name, init in (("bias-free", 1.0), ("linear-extended", 0.5)):
        model = get_model(name)
        for lam in SOLVER_LAMBDAS[:2] if quick else SOLVER_LAMBDAS:
            hyper = {k: lam for k in model.hyper_names}
            row = {"model": name, "lam": lam}
            for opt in SOLVERS:
                row[opt] = time_to_gap(model, SOLVER_SIZES, hyper, opt, cap, init)
            gd = row["gd"]["seconds"]
            for opt in SOLVERS:
                row[opt]["gd_over"] = gd / row[opt]["seconds"]
                row[opt]["gd_over_bound"] = ratio_bound(row["gd"]["reached"],
                                                        row[opt]["reached"])
            rows.append(row)
    return {"sizes": dict(SOLVER_SIZES._asdict()), "gap": GAP, "cap": cap, "rows": rows,
            "grid": grid_solve(16 if quick else 32, 2000 if quick else 20000)}


def ratio_bound(gd_reached, opt_reached):
    """What GD's time over an optimiser's time is when either stopped at the cap: "exact" (both
    reached the gap), "lower" (only this optimiser did: GD's time is a lower bound), "upper" (only
    GD did) or "unknown" (neither: two lower bounds)."""
    return {(True, True): "exact", (False, True): "lower", (True, False): "upper",
            (False, False): "unknown"}[(bool(gd_reached), bool(opt_reached))]


def grid_solve(points, gd_steps):
    """A points × points grid over λ_W, λ_H ∈ [1e-5, 1e-1] (bias-free, float64): L-BFGS to its
    default tolerance, and GD for `gd_steps` steps; time (compiled once, then timed) and how many
    points end within GAP of the closed form, counting apart those within 5% of the threshold."""
    from ufm.models import get_model

    model = get_model("bias-free")
    lams = np.logspace(-5, -1, points)
    base = hyper_for(model, {}, LR, 1.0)
    axes = {"lam_W": lams, "lam_H": lams}
    out = {"points": points * points}
    for opt, steps in (("lbfgs", 20000), ("gd", gd_steps)):
        chunk = sweep.auto_chunk(model, SOLVER_SIZES, 1, points * points, jax.device_count(), opt)
        sweep.run_sweep(model, SOLVER_SIZES, base, {"lam_W": lams[:1], "lam_H": lams[:1]},
                        steps=steps, optimizer=opt, chunk=chunk)  # compile the chunk program
        t0 = time.perf_counter()
        arrays, _ = sweep.run_sweep(model, SOLVER_SIZES, base, axes, steps=steps, optimizer=opt,
                                    chunk=chunk)
        seconds = time.perf_counter() - t0
        gap = np.abs(arrays["objective"] - arrays["theory_objective"]) / arrays["theory_objective"]
        c = SOLVER_SIZES.K * np.sqrt(SOLVER_SIZES.n * np.outer(lams, lams))
        near = np.abs(c - 1) <= 0.05
        out[opt] = {"seconds": seconds, "steps": steps,
                    "within_gap": int((gap <= GAP).sum()),
                    "within_gap_away_from_threshold": int((gap[~near] <= GAP).sum()),
                    "away_from_threshold": int((~near).sum()),
                    "max_gap_away_from_threshold": float(gap[~near].max())}
    return out


GLOBAL_CASES = (("ce", (20, 20, 2, 2), 8, 1e-3), ("unregularized-bias", (20, 20, 2, 2), 8, 1e-3),
                ("ce", (50,) * 5 + (5,) * 5, 12, 1e-4))


def global_times(quick=False):
    """Time to a 1e-10 relative gap to the certified global minimum (imbalanced counts, no closed
    form; float64): the convex solver (its own duality gap), L-BFGS and GD (to the target
    f*(1 + GAP), f* the solver's certified optimum), and a points × points grid over λ_W, λ_H ∈
    [1e-4, 1e-1] of imbalanced CE: convex solver against L-BFGS, time and points certified global."""
    from ufm.models import get_model

    cap = 20000 if quick else 200000
    rows = []
    for name, counts, d, lam in GLOBAL_CASES[:2] if quick else GLOBAL_CASES:
        model, sizes = get_model(name), Sizes(len(counts), counts, d)
        hyper = optimise.as_hyper(dict(lam_W=lam, lam_H=lam, lr=LR, init_scale=0.5))
        solve = jax.jit(lambda h: convex.solve(model, sizes, h, cap, GAP))
        jax.block_until_ready(solve(hyper))
        t0 = time.perf_counter()
        params, iters, gap = jax.block_until_ready(solve(hyper))
        seconds = time.perf_counter() - t0
        f_star = float(model.objective(params, hyper, sizes))
        row = {"model": name, "counts": list(counts), "d": d, "lam": lam, "optimum": f_star,
               "convex": {"reached": bool(gap <= GAP), "steps": int(iters), "seconds": seconds,
                          "gap": float(gap)}}
        for opt in ("lbfgs", "gd"):
            row[opt] = time_to_gap(model, sizes, dict(lam_W=lam, lam_H=lam), opt, cap, 0.5,
                                   f_star=f_star)
        row["cvxpy"] = cvxpy_time(name, counts, lam, f_star)
        rows.append(row)
    return {"gap": GAP, "cap": cap, "rows": rows, "grid": global_grid(8 if quick else 32)}


def cvxpy_time(name, counts, lam, f_star):
    """The same reduced K×K problem in cvxpy (Clarabel: exponential and semidefinite cones), when
    cvxpy happens to be installed (it is not a dependency): seconds (problem built outside the
    timing, solve timed) and its objective's relative difference from f_star; None without cvxpy."""
    try:
        import cvxpy as cp
    except ImportError:
        return None
    K = len(counts)
    n = np.asarray(counts, np.float64)
    N = n.sum()
    A = cp.Variable((K, K))
    M = A @ np.diag(1 / np.sqrt(n))
    if name == "ce":
        loss = sum(n[k] / N * (cp.log_sum_exp(M[:, k]) - M[k, k]) for k in range(K))
    else:  # unregularized-bias (MSE with a free bias)
        b = cp.Variable(K)
        loss = sum(n[k] / (2 * N) * cp.sum_squares(M[:, k] + b - np.eye(K)[:, k])
                   for k in range(K))
    problem = cp.Problem(cp.Minimize(loss + lam * cp.normNuc(A)))  # μ = √(λ·λ) = λ
    t0 = time.perf_counter()
    problem.solve(solver=cp.CLARABEL)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "status": problem.status, "version": cp.__version__,
            "relative_difference": float((problem.value - f_star) / f_star)}


def global_grid(points):
    """Imbalanced CE (counts 20, 20, 2, 2; d = 8) over a points × points λ grid: the convex
    solver and L-BFGS (one seed), each compiled once then timed, and how many points each
    certifies global (gap to the dual bound ≤ GLOBAL_TOL)."""
    lams = np.logspace(-4, -1, points)
    static = {"K": [4], "d": [8], "n": [(20, 20, 2, 2)]}
    out = {"points": points * points}
    from ufm.models import get_model

    model, sizes = get_model("ce"), Sizes(4, (20, 20, 2, 2), 8)
    for opt, steps in (("convex", 200000), ("lbfgs", 20000)):
        chunk = sweep.auto_chunk(model, sizes, 1, points * points, jax.device_count(), opt)
        kw = dict(order=["lam_W", "lam_H"], steps=steps, optimizer=opt, init_scale=0.5,
                  chunk=chunk)  # the same chunk for both calls: compiled once, then timed
        sweep.run_grid("ce", static, {}, {"lam_W": lams[:2], "lam_H": lams[:2]}, **kw)
        t0 = time.perf_counter()
        arrays, _ = sweep.run_grid("ce", static, {}, {"lam_W": lams, "lam_H": lams}, **kw)
        out[opt] = {"seconds": time.perf_counter() - t0, "global": int(arrays["global"].sum()),
                    "max_gap": float(np.nanmax(arrays["global_gap"]))}
    return out




def solver_report(sol):
    """The solvers section as text."""
    if sol is None:
        return ["\nsolvers: needs float64 (a 1e-10 gap is below float32's precision): "
                "ufm bench --x64 --only solvers"]
    sz = sol["sizes"]
    lines = [f"\ntime to a {sol['gap']:g} relative gap to the closed form, K={sz['K']}, "
             f"d={sz['d']}, n={sz['n']}, float64 (first-order methods capped at "
             f"{sol['cap']:,} steps; '>' = not reached, a lower bound):",
             f"  {'model':16s} {'λ':>7s}   " + "   ".join(f"{o:>22s}" for o in SOLVERS)]
    for row in sol["rows"]:
        cells = []
        for o in SOLVERS:
            r = row[o]
            t = f"{'' if r['reached'] else '>'}{r['seconds']:.3g} s"
            bound = r["gd_over_bound"]
            x = "?" if bound == "unknown" and o != "gd" else (
                f"{dict(lower='≥', upper='≤').get(bound, '')}{r['gd_over']:.3g}×")
            cells.append(f"{t:>10s} ({x:>9s})")
        lines.append(f"  {row['model']:16s} {row['lam']:7.0e}   " + "   ".join(cells))
    lines.append("  (in brackets: GD's time over this optimiser's, how many times faster; ≥/≤ where "
                 "one of them stopped at the cap, ? where both did)")
    g = sol["grid"]
    for o in ("lbfgs", "gd"):
        r = g[o]
        lines.append(f"  {int(g['points'] ** 0.5)}×{int(g['points'] ** 0.5)} λ grid, bias-free, "
                     f"{o:5s} ({r['steps']:,} steps cap): {r['seconds']:.1f} s; within the gap: "
                     f"{r['within_gap']}/{g['points']}, {r['within_gap_away_from_threshold']}/"
                     f"{r['away_from_threshold']} away from c = 1 ± 5% (worst there "
                     f"{r['max_gap_away_from_threshold']:.1e})")
    return lines


def global_report(glob):
    """The global section as text."""
    if glob is None:
        return ["\nglobal: needs float64: ufm bench --x64 --only global"]
    lines = [f"\ntime to a {glob['gap']:g} relative gap to the certified global minimum "
             f"(imbalanced counts, no closed form; float64; L-BFGS and GD capped at "
             f"{glob['cap']:,} steps, '>' = not reached):"]
    for row in glob["rows"]:
        cells = []
        for o in ("convex", "lbfgs", "gd"):
            r = row[o]
            cells.append(f"{o} {'' if r['reached'] else '>'}{r['seconds']:.3g} s "
                         f"({r['steps']:,} it.)")
        cv = row.get("cvxpy")
        if cv is not None:
            cells.append(f"cvxpy {cv['version']} (Clarabel) {cv['seconds']:.3g} s, "
                         f"{cv['status']}, objective {cv['relative_difference']:+.1e} rel.")
        counts = "/".join(map(str, row["counts"]))
        lines.append(f"  {row['model']:18s} n={counts:14s} d={row['d']:<3d} λ={row['lam']:.0e}  "
                     + "   ".join(cells))
    g = glob["grid"]
    side = int(round(g["points"] ** 0.5))
    for o in ("convex", "lbfgs"):
        r = g[o]
        lines.append(f"  {side}×{side} λ grid, ce 20/20/2/2, {o:6s}: {r['seconds']:.1f} s, "
                     f"certified global at {r['global']}/{g['points']} points (largest gap "
                     f"{r['max_gap']:.1e})")
    return lines
