"""Speed, measured side by side in one process, in three sections.

throughput: gradient descent on the bias-free UFM. For each problem size: one configuration as a
compiled scan, a per-step jitted Python loop, a numpy loop with hand-written gradients (and a
PyTorch SGD loop when torch happens to be installed; it is not a dependency), then config-steps
per second for grids of B configurations: a plain vmap, and the formulation `ufm sweep` uses
(cache-sized vmapped groups under lax.map, sharded over devices).
deep: the same for the deep linear UFM at L = 4, K = 10, d = 32: one run, a grid of 256 seeds,
and a PyTorch loop when torch is installed.
solvers (float64): time to a 1e-10 relative gap to the closed form for GD, momentum, Adam and
L-BFGS, as ratios against GD, and a 32×32 λ grid solved by L-BFGS and by GD.
global (float64): time to a certified global optimum (convex solver, L-BFGS, GD, cvxpy).
latency: wall time of whole CLI commands in fresh processes, run three times against an empty
compilation cache (first: compiles and fills it; then: loads from it), beside
`python -c "import jax"` — the time to first result a researcher sees.
hessian: the second-order certificate (float64 whatever the dtype): a Hessian-vector product
against a gradient at K = n = d = 100 (10⁶ parameters), the dense restricted spectrum of a model
with 5,000 parameters, and the 20 extreme restricted eigenvalues (Lanczos) at 10⁶ parameters, each
at the bias-free closed-form optimum, wall time including compilation.
measure: `ufm measure`'s suite on 200,000 × 512 float32 features, K = 100, beside
rhubarbwu/neural-collapse's float32 accumulators and metrics on the same array (when that
library and torch happen to be installed; neither is a dependency): wall time and peak memory
beyond the loaded features, each in a fresh process.
"""
import functools
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ufm import convex, optimise, sweep
from ufm.config import hyper_for
from ufm.models import MODELS, Sizes

SIZES = (Sizes(4, 50, 20), Sizes(10, 100, 64))
SECTIONS = ("throughput", "deep", "solvers", "global", "latency", "measure", "hessian",
            "frontier", "vocabulary")
BATCHES = (1, 64, 1024, 4096)
LAM, LR = 5e-3, 0.1


def _timed(fn, *args):
    """Seconds for fn(*args) once compiled (first call warms up)."""
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def _hyper():
    return optimise.as_hyper(dict(lam_W=LAM, lam_H=LAM, lr=LR, init_scale=1.0))


def scan_rate(sizes, steps):
    run = optimise.compiled_simulation(MODELS["bias-free"], sizes, steps, steps)
    return steps / _timed(run, jax.random.PRNGKey(0), _hyper())


def jitted_loop_rate(sizes, steps):
    model, hyper = MODELS["bias-free"], _hyper()
    grad = jax.grad(model.objective)

    @jax.jit
    def step(params):
        g = grad(params, hyper, sizes)
        return jax.tree.map(lambda p, gp: p - LR * gp, params, g)

    params = jax.block_until_ready(step(model.init(jax.random.PRNGKey(0), hyper, sizes)))
    t0 = time.perf_counter()
    for _ in range(steps):  # the slow path this project replaces, measured on purpose
        params = step(params)
    jax.block_until_ready(params)
    return steps / (time.perf_counter() - t0)


def numpy_loop_rate(sizes, steps):
    K, n, d, N = sizes.K, sizes.n, sizes.d, sizes.N
    rng = np.random.default_rng(0)
    W = rng.standard_normal((K, d)).astype(np.float32)
    H = rng.standard_normal((d, N)).astype(np.float32)
    Y = np.kron(np.eye(K, dtype=np.float32), np.ones((1, n), np.float32))
    t0 = time.perf_counter()
    for _ in range(steps):  # baseline: what people write by hand, measured on purpose
        R = (W @ H - Y) / N
        gW, gH = R @ H.T + LAM * W, W.T @ R + LAM * H
        W, H = W - LR * gW, H - LR * gH
    return steps / (time.perf_counter() - t0)


def torch_loop_rate(sizes, steps):
    try:
        import torch
    except ImportError:
        return None
    K, n, d, N = sizes.K, sizes.n, sizes.d, sizes.N
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(K, d, generator=gen, requires_grad=True)
    H = torch.randn(d, N, generator=gen, requires_grad=True)
    Y = torch.kron(torch.eye(K), torch.ones(1, n))
    opt = torch.optim.SGD([W, H], lr=LR)
    t0 = time.perf_counter()
    for _ in range(steps):  # baseline: today's PyTorch loop, measured on purpose
        opt.zero_grad()
        loss = ((W @ H - Y) ** 2).sum() / (2 * N) + LAM / 2 * (W ** 2).sum() + LAM / 2 * (H ** 2).sum()
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


def grid_rates(sizes, B, steps):
    """(plain vmap, sweep formulation) config-steps per second for B configurations."""
    model = MODELS["bias-free"]
    hyper = optimise.broadcast_hyper(_hyper(), B)
    hyper["lam_H"] = jnp.linspace(1e-3, 1e-2, B, dtype=hyper["lam_H"].dtype)
    keys = jax.random.split(jax.random.PRNGKey(0), B)
    plain = jax.jit(jax.vmap(lambda k, h: optimise.simulate(model, sizes, k, h, steps, steps)))
    rate_plain = B * steps / _timed(plain, keys, hyper)
    n_dev = jax.local_device_count()
    while B % n_dev:
        n_dev -= 1
    micro = sweep.micro_batch_for(B // n_dev)
    program, sharding = sweep.compiled_chunk(model, sizes, steps, "gd", 1, n_dev, micro)
    args = jax.device_put((keys, hyper), sharding)
    rate_sweep = B * steps / _timed(program, *args)
    return rate_plain, rate_sweep


DEEP = dict(depth=4, sizes=Sizes(10, 10, 32), seeds=256)


def deep_rates(quick=False):
    """The deep linear UFM (L = 4, K = 10, d = 32, n = 10), GD: steps/s of one compiled run, of
    a per-step PyTorch loop (when installed), and config-steps/s of a grid of 256 seeds in the
    `ufm sweep` formulation."""
    from ufm.models import get_model

    model, sizes = get_model("deep-linear", depth=DEEP["depth"]), DEEP["sizes"]
    steps = 2000 if quick else 20000
    hyper = optimise.as_hyper({**{k: LAM for k in model.hyper_names}, "lr": LR,
                               "init_scale": 0.3})
    run = optimise.compiled_simulation(model, sizes, steps, steps)
    one = steps / _timed(run, jax.random.PRNGKey(0), hyper)
    B, g_steps = DEEP["seeds"], steps // 10
    n_dev = jax.local_device_count()
    while B % n_dev:
        n_dev -= 1
    program, sharding = sweep.compiled_chunk(model, sizes, g_steps, "gd", 1, n_dev,
                                             sweep.micro_batch_for(B // n_dev))
    keys = jax.random.split(jax.random.PRNGKey(0), B)
    args = jax.device_put((keys, optimise.broadcast_hyper(hyper, B)), sharding)
    grid = B * g_steps / _timed(program, *args)
    torch = torch_deep_rate(sizes, DEEP["depth"], 200 if quick else 2000)
    return {"depth": DEEP["depth"], "K": sizes.K, "d": sizes.d, "n": sizes.n, "steps": steps,
            "scan_steps_per_s": one, "grid_seeds": B, "grid_config_steps_per_s": grid,
            "torch_loop_steps_per_s": torch,
            "scan_over_torch_loop": None if torch is None else one / torch,
            "grid_over_torch_loop": None if torch is None else grid / torch}


def torch_deep_rate(sizes, depth, steps):
    """A per-step PyTorch SGD loop on the deep linear UFM (None without torch)."""
    try:
        import torch
    except ImportError:
        return None
    gen = torch.Generator().manual_seed(0)
    dtype = torch.float64 if jnp.result_type(float) == jnp.float64 else torch.float32
    blocks = [torch.randn(sizes.d, sizes.N, generator=gen, dtype=dtype) * 0.3]
    blocks += [torch.randn(sizes.d, sizes.d, generator=gen, dtype=dtype) * 0.3
               for _ in range(depth - 1)]
    blocks += [torch.randn(sizes.K, sizes.d, generator=gen, dtype=dtype) * 0.3]
    for b in blocks:
        b.requires_grad_(True)
    Y = torch.kron(torch.eye(sizes.K, dtype=dtype), torch.ones(1, sizes.n, dtype=dtype))
    opt = torch.optim.SGD(blocks, lr=LR)
    t0 = time.perf_counter()
    for _ in range(steps):  # baseline: today's PyTorch loop, measured on purpose
        opt.zero_grad()
        Z = blocks[0]
        for W in blocks[1:]:
            Z = W @ Z
        loss = ((Z - Y) ** 2).sum() / (2 * sizes.N) + sum(LAM / 2 * (b ** 2).sum() for b in blocks)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


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


# --- latency: whole commands, first and second run ----------------------------------------------

LATENCY_SWEEP = ("--lam-H", "1e-3:1e-1:4:log", "--lam-W", "1e-3:1e-1:4:log", "--steps", "2000")


def latency_commands(features):
    """(label, argv) of the commands timed; `features`: an .npz for `ufm measure`."""
    ufm = [sys.executable, "-m", "ufm.cli"]
    return [("python -c 'import jax'", [sys.executable, "-c", "import jax"]),
            ("ufm train bias-free", ufm + ["train", "bias-free"]),
            ("ufm train deep-linear", ufm + ["train", "deep-linear"]),
            ("ufm sweep bias-free (4×4 λ grid)", ufm + ["sweep", "bias-free", *LATENCY_SWEEP]),
            ("ufm proof 3.1", ufm + ["proof", "3.1"]),
            (f"ufm measure {os.path.basename(features)}", ufm + ["measure", features])]


def _measure_file(folder):
    """The committed depthwise-network features when this is a checkout, else a synthetic file of
    the same shape (1740 × 64, two layers, K = 10, W)."""
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "figures",
                        "data", "depthwise_network_features.npz")
    if os.path.isfile(here):
        return here
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 174)
    path = os.path.join(folder, "features.npz")
    np.savez(path, h1=rng.normal(size=(1740, 64)), h2=rng.normal(size=(1740, 64)),
             labels=labels, W=rng.normal(size=(10, 64)))
    return path


def latency_times(repeat=2):
    """Wall seconds of each command in a fresh process, `repeat` times in a row, with the CLI's
    compilation cache in a new empty folder (the first run fills it)."""
    import subprocess
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items()
               if k not in ("UFM_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                            "JAX_COMPILATION_CACHE_DIR")}
        env["UFM_CACHE_DIR"] = os.path.join(folder, "cache")
        for label, argv in latency_commands(_measure_file(folder)):
            out = os.path.join(folder, f"out{len(rows)}")
            argv = argv + (["--out", out] if argv[2:3] == ["ufm.cli"] else [])
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                proc = subprocess.run(argv, capture_output=True, text=True, env=env)
                times.append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
            rows.append({"command": label, "seconds": times})
    return {"rows": rows, "cpus": os.cpu_count()}


def latency_report(lat):
    lines = [f"\ntime to first result: wall seconds in a fresh process ({lat['cpus']} CPUs), "
             f"first run (empty compilation cache), then runs with the cache:"]
    for r in lat["rows"]:
        first, *rest = r["seconds"]
        lines.append(f"  {r['command']:38s} {first:7.2f} s   " +
                     "   ".join(f"{t:7.2f} s" for t in rest))
    return lines


# --- measure: ufm measure beside rhubarbwu/neural-collapse ------------------------------------

MEASURE_SHAPE = (200_000, 512, 100)  # N, d, K
PEER_BATCHES = (8192, 65536)

_MEASURE_CHILD = r"""
import json, sys, time
import numpy as np

def rss(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) * 1024

folder, who, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
X = np.load(folder + "/features.npy")
y = np.load(folder + "/labels.npy")
W, b = np.load(folder + "/W.npy"), np.load(folder + "/b.npy")
if who in ("ufm", "ufm-jax"):
    from ufm import measure
    engine = "jax" if who == "ufm-jax" else "numpy"
    if engine == "jax":
        import jax  # imported before the peak is reset, as the peer's torch is
    run = lambda: measure.measure_arrays(X, y, W, b, engine=engine)["layers"]["features"]
elif who == "ufm-collector":  # the same stream in batches, as a training loop feeds them
    from ufm import measure

    def run():
        collector = measure.Collector(W.shape[0], W, b)
        for _ in range(2):  # the means, then Σ_W and the decisions from the same batches
            for s in range(0, len(y), batch):
                collector.update(X[s:s + batch], y[s:s + batch])
            if collector.phase == 1:
                collector.second_pass()
        return collector.result()["layers"]["features"]
else:
    import torch as pt
    from neural_collapse.accumulate import (CovarAccumulator, DecAccumulator, MeanAccumulator,
                                            VarNormAccumulator)
    from neural_collapse.kernels import kernel_grid, log_kernel
    from neural_collapse.measure import (clf_ncc_agreement, covariance_ratio, mean_norms,
                                         self_duality_error, simplex_etf_error,
                                         variability_cdnv, interference_grid)
    from neural_collapse.util import symm_reduce

    def run():
        K, d = W.shape
        Wt = pt.from_numpy(W).float()
        batches = [(pt.from_numpy(X[s:s + batch]), pt.from_numpy(y[s:s + batch]))
                   for s in range(0, len(y), batch)]  # views: no copy
        means_acc = MeanAccumulator(K, d, "cpu")
        for Xb, yb in batches:
            means_acc.accumulate(Xb, yb)
        M, mG = means_acc.compute()
        var_acc, cov_acc = VarNormAccumulator(K, d, "cpu", M=M), CovarAccumulator(K, d, "cpu", M=M)
        dec_acc = DecAccumulator(K, d, "cpu", M=M, W=Wt)
        for Xb, yb in batches:
            var_acc.accumulate(Xb, yb, M)
            cov_acc.accumulate(Xb, yb, M)
            dec_acc.accumulate(Xb, yb, Wt, M)
        V_norms, _ = var_acc.compute()
        Sigma_W = cov_acc.compute()
        grid = interference_grid(M, mG)
        return {"nc1": covariance_ratio(Sigma_W, M, mG),
                "nc1_cdnv": variability_cdnv(V_norms, M, tile_size=K),
                "equinorm_H": float(mean_norms(M, mG).std() / mean_norms(M, mG).mean()),
                "interference": float(symm_reduce(grid, pt.var)),
                "nc2_etf_H": simplex_etf_error(M, mG),
                "nc3_etf": self_duality_error(Wt, M, mG),
                "hyperspherical_log": float(symm_reduce(kernel_grid(M, mG, log_kernel), pt.var)),
                "nc4_agreement": clf_ncc_agreement(dec_acc)}

base = rss("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak to now
except OSError:
    pass
t0 = time.perf_counter()
values = run()
seconds = time.perf_counter() - t0
peak = rss("VmHWM")
print(json.dumps({"seconds": seconds, "peak_bytes": peak - base, "features_bytes": X.nbytes,
                  "nc1": float(values["nc1"]), "nc2_etf_H": float(values["nc2_etf_H"])}))
"""


def _peer_installed():
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "neural_collapse"))


def measure_times(quick=False, shape=MEASURE_SHAPE, engines=("numpy", "jax"), repeat=None):
    """Wall seconds and peak bytes (beyond the loaded features) of measuring one float32
    feature array: `ufm measure`'s whole suite (float64 accumulators, default budget) with the
    numpy engine and with the JAX engine (on JAX's default device), and
    rhubarbwu/neural-collapse's float32 accumulators and metrics at two batch sizes when it is
    installed. Each in a fresh process (peak resident memory reset after loading), `repeat`
    rounds (default 3; 1 with `quick`) with the runs of a round one after another, so that each
    round compares runs made under the same load: a row gives the median and every run."""
    import json
    import subprocess
    import tempfile

    N, d, K = shape
    if quick:
        N //= 10
    repeat = repeat or (1 if quick else 3)
    rng = np.random.default_rng(0)
    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        labels = rng.integers(0, K, N)
        centres = rng.normal(size=(K, d)).astype(np.float32)
        X = centres[labels]
        for start in range(0, N, 65536):  # noise a slice at a time: the parent stays small
            X[start:start + 65536] += rng.normal(size=(min(65536, N - start), d)).astype(np.float32)
        np.save(os.path.join(folder, "features.npy"), X)
        np.save(os.path.join(folder, "labels.npy"), labels)
        np.save(os.path.join(folder, "W.npy"), centres.astype(np.float64))
        np.save(os.path.join(folder, "b.npy"), np.zeros(K))
        del X
        who = [{"numpy": ("ufm", 0), "jax": ("ufm-jax", 0)}[e] for e in engines]
        who += [("ufm-collector", batch) for batch in PEER_BATCHES]
        if _peer_installed():
            who += [("neural_collapse", batch) for batch in PEER_BATCHES]
        for _ in range(repeat):
            for name, batch in who:
                proc = subprocess.run([sys.executable, "-c", _MEASURE_CHILD, folder, name,
                                       str(batch)], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"measuring with {name} failed:\n{proc.stderr[-2000:]}")
                label = {"ufm": "ufm", "ufm-jax": f"ufm --engine jax ({jax.default_backend()})",
                         "ufm-collector": f"ufm Collector (batch {batch:,})"
                         }.get(name, f"{name} (batch {batch:,})")
                runs.setdefault(label, []).append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rows = {label: dict(r[0], seconds=float(np.median([x["seconds"] for x in r])),
                        peak_bytes=int(np.median([x["peak_bytes"] for x in r])),
                        runs_seconds=[x["seconds"] for x in r],
                        runs_peak_bytes=[x["peak_bytes"] for x in r])
            for label, r in runs.items()}
    peers = [label for label in rows if not label.startswith("ufm")]
    out = {"N": N, "d": d, "K": K, "repeat": repeat, "rows": rows, "peer_installed": bool(peers)}
    if peers:  # per round: ufm against the faster peer configuration of that round
        fastest = np.min([rows[p]["runs_seconds"] for p in peers], axis=0)
        least = np.min([rows[p]["runs_peak_bytes"] for p in peers], axis=0)
        out["time_ratios"] = list(np.asarray(rows["ufm"]["runs_seconds"]) / fastest)
        out["memory_ratios"] = list(np.asarray(rows["ufm"]["runs_peak_bytes"]) / least)
        out["collector_ratios"] = {}  # the Collector against the peer fed the same batches
        for batch in PEER_BATCHES:
            mine, theirs = (rows[f"ufm Collector (batch {batch:,})"],
                            rows[f"neural_collapse (batch {batch:,})"])
            out["collector_ratios"][batch] = (
                list(np.asarray(mine["runs_seconds"]) / np.asarray(theirs["runs_seconds"])),
                list(np.asarray(mine["runs_peak_bytes"]) / np.asarray(theirs["runs_peak_bytes"])))
    return out


def measure_report(m):
    lines = [f"\nmeasuring {m['N']:,} × {m['d']} float32 features, K = {m['K']} (fresh process "
             f"each, median of {m['repeat']} round{'s' * (m['repeat'] > 1)}; peak memory beyond "
             f"the loaded {m['rows']['ufm']['features_bytes'] / 2 ** 20:,.0f} MB of features):"]
    ufm = m["rows"]["ufm"]
    for name, r in m["rows"].items():
        ratio = "" if name.startswith("ufm") else (
            f"   ufm: {ufm['seconds'] / r['seconds']:.2f}× the time, "
            f"{ufm['peak_bytes'] / r['peak_bytes']:.2f}× the memory")
        lines.append(f"  {name:34s} {r['seconds']:7.2f} s  {r['peak_bytes'] / 2 ** 20:8,.0f} MB  "
                     f"nc1 {r['nc1']:.6e}{ratio}")
    if not m["peer_installed"]:
        lines.append("  rhubarbwu/neural-collapse not installed (with torch): no side-by-side run")
    else:
        t, mem = m["time_ratios"], m["memory_ratios"]
        lines.append(f"  round by round, ufm against the faster peer run of the round: "
                     f"{', '.join(f'{x:.2f}' for x in t)}× the time, "
                     f"{', '.join(f'{x:.2f}' for x in mem)}× the memory of the leaner one")
        for batch, (t, mem) in m["collector_ratios"].items():
            lines.append(f"  the Collector against the peer's accumulators on the same batches of "
                         f"{batch:,}, round by round: {', '.join(f'{x:.2f}' for x in t)}× the "
                         f"time, {', '.join(f'{x:.2f}' for x in mem)}× the memory")
    return lines


HESSIAN_DENSE = Sizes(10, 49, 10)  # P = Kd + dN = 5,000
HESSIAN_LARGE = Sizes(100, 100, 100)  # P = 1,010,000


def _closed_form_optimum(sizes, lam):
    """The bias-free minimiser at (λ_W, λ_H) = (lam, lam) (theory.bias_free_minimiser)."""
    from ufm import theory

    hyper = {"lam_W": lam, "lam_H": lam}
    return hyper, theory.bias_free_minimiser(hyper, sizes)


def hessian_times(quick=False):
    """Seconds for a gradient and a Hessian-vector product (compiled, warm), the dense restricted
    spectrum at P = 5,000 and 20 extreme eigenvalues by Lanczos at P ≈ 10⁶ (both cold: what
    `ufm hessian` costs, compilation included)."""
    from ufm import hessian
    from ufm.models import get_model

    model = get_model("bias-free")
    dense_sz = Sizes(4, 10, 8) if quick else HESSIAN_DENSE
    large_sz = Sizes(10, 10, 10) if quick else HESSIAN_LARGE
    lam = 1e-3 / large_sz.K  # below the threshold: a nonzero optimum
    hyper, params = _closed_form_optimum(large_sz, lam)
    with hessian.x64():
        point = hessian.flat_point(model, large_sz, hyper, params)
        grad = jax.jit(jax.grad(point.f))
        hvp = jax.jit(lambda x, v: jax.jvp(jax.grad(point.f), (x,), (v,))[1])
        v = jnp.ones_like(point.x)
        t_grad, t_hvp = _timed(grad, point.x), _timed(hvp, point.x, v)
    out = {"P_large": int(point.x.shape[0]), "gradient_s": t_grad, "hvp_s": t_hvp,
           "hvp_over_gradient": t_hvp / t_grad}
    t0 = time.perf_counter()
    so = hessian.classify(model, large_sz, hyper, params, method="lanczos", k=10)
    out.update(lanczos_s=time.perf_counter() - t0, lanczos_kind=so.kind,
               lanczos_min=so.min_eigenvalue, lanczos_residual=so.residual)
    hyper, params = _closed_form_optimum(dense_sz, 1e-3 / dense_sz.K)
    t0 = time.perf_counter()
    so = hessian.classify(model, dense_sz, hyper, params, method="dense")
    out.update(P_dense=so.parameters, dense_s=time.perf_counter() - t0, dense_kind=so.kind)
    return out


def hessian_report(h):
    return ["\nsecond-order certificate (float64, bias-free optimum):",
            f"  Hessian-vector product / gradient at P = {h['P_large']:,}: "
            f"{h['hvp_s'] * 1e3:.1f} / {h['gradient_s'] * 1e3:.1f} ms = "
            f"{h['hvp_over_gradient']:.2f}×",
            f"  dense restricted spectrum, P = {h['P_dense']:,}: {h['dense_s']:.1f} s "
            f"({h['dense_kind']}, compilation included)",
            f"  20 extreme eigenvalues by Lanczos, P = {h['P_large']:,}: {h['lanczos_s']:.1f} s "
            f"({h['lanczos_kind']}, λ_min {h['lanczos_min']:.4g}, residual "
            f"{h['lanczos_residual']:.1e})"]


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


# --- vocabulary: the Collector at a language model's vocabulary ------------------------------

VOCABULARY = (50257, 1024, 1_000_000, 8192)  # K, d, N, batch: GPT-2's vocabulary, Zipf labels
ZIPF = 1.07  # the exponent of the labels' distribution (word frequencies)

_VOCABULARY_CHILD = r"""
import json, sys, time
import numpy as np
from ufm.measure import Collector

K, d, N, B, shards = (int(v) for v in sys.argv[1:6])
zipf, folder = float(sys.argv[6]), sys.argv[7]
p = 1.0 / np.arange(1, K + 1) ** zipf
p /= p.sum()
means = np.random.default_rng(0).normal(size=(K, d)).astype(np.float32)

def batch(i):  # the same rows every time they are asked for: a stream replayed, never stored
    r = np.random.default_rng(1000 + i)
    n = min(B, N - i * B)
    y = r.choice(K, size=n, p=p)
    return means[y] + 2.0 * r.normal(size=(n, d)).astype(np.float32), y

def rss(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) * 1024

count = -(-N // B)
if shards == 1:
    c, times = Collector(K), {}
    t0 = time.perf_counter()
    for i in range(count):
        c.update(*batch(i))
    times["pass1"] = time.perf_counter() - t0
    c.second_pass()
    t0 = time.perf_counter()
    for i in range(count):
        c.update(*batch(i))
    times["pass2"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = c.result()
    times["result"] = time.perf_counter() - t0
    f = r["layers"]["features"]
    print(json.dumps(dict(times, peak_bytes=rss("VmHWM"), present=r["K"],
                          empty=len(r["empty_classes"]), nc1=f["nc1"],
                          ncc=f.get("ncc_accuracy"), values={k: v for k, v in f.items()
                                                             if isinstance(v, float)})))
else:  # shards: each its quarter of the batches, states saved and merged as across machines
    parts = np.array_split(np.arange(count), shards)
    for s, part in enumerate(parts):
        c = Collector(K)
        for i in part:
            c.update(*batch(i))
        c.save(f"{folder}/first_{s}.npz")
    merged = Collector.load(f"{folder}/first_0.npz")
    for s in range(1, shards):
        merged.merge(Collector.load(f"{folder}/first_{s}.npz"))
    merged.save(f"{folder}/merged.npz")
    for s, part in enumerate(parts):
        c = Collector.load(f"{folder}/merged.npz")
        c.second_pass()
        for i in part:
            c.update(*batch(i))
        c.save(f"{folder}/second_{s}.npz")
    total = Collector.load(f"{folder}/second_0.npz")
    for s in range(1, shards):
        total.merge(Collector.load(f"{folder}/second_{s}.npz"))
    f = total.result()["layers"]["features"]
    print(json.dumps({"values": {k: v for k, v in f.items() if isinstance(v, float)}}))
"""


def vocabulary_times(quick=False, shape=VOCABULARY, merge_rows=100_000):
    """The Collector on a stream at vocabulary scale (docs/performance.md, "Vocabulary scale"):
    K classes with Zipf-distributed labels, features = class mean + noise in float32, batches
    generated on the fly and replayed for the second pass; each phase's seconds and the peak
    resident memory of a fresh process. Then 4 shards (save, merge, second passes, merge) on the
    first `merge_rows` rows against one collector on the same rows: the largest relative
    difference of every reported value."""
    import json
    import subprocess
    import tempfile

    K, d, N, B = (2000, 64, 20000, 1024) if quick else shape
    rows = min(N, 8192 if quick else merge_rows)

    def child(n, shards, folder):
        out = subprocess.run([sys.executable, "-c", _VOCABULARY_CHILD, str(K), str(d), str(n),
                              str(B), str(shards), str(ZIPF), folder], capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory() as folder:
        full = child(N, 1, folder)
        one, four = child(rows, 1, folder), child(rows, 4, folder)
    worst = 0.0
    for key, v in one["values"].items():
        w = four["values"].get(key)
        if w is not None and math.isfinite(v) and math.isfinite(w):
            worst = max(worst, abs(w - v) / max(abs(v), 1e-300))
    return dict(K=K, d=d, N=N, batch=B, zipf=ZIPF, merge_rows=rows, merge_worst=worst,
                **{k: full[k] for k in ("pass1", "pass2", "result", "peak_bytes", "present",
                                        "empty", "nc1")})


def vocabulary_report(v):
    total = v["pass1"] + v["pass2"] + v["result"]
    return [f"\nvocabulary scale: K = {v['K']:,} classes (Zipf {v['zipf']} labels: {v['present']:,} "
            f"seen, {v['empty']:,} empty), d = {v['d']:,}, N = {v['N']:,} rows in batches of "
            f"{v['batch']:,}, the Collector in a fresh process:",
            f"  pass 1 {v['pass1']:.1f} s, pass 2 (Σ_W, spreads, nearest-centre decisions) "
            f"{v['pass2']:.1f} s, result (every measure, class pairs included) {v['result']:.1f} s"
            f" — {total / 60:.1f} min; peak memory {v['peak_bytes'] / 2 ** 30:.2f} GiB",
            f"  4 shards saved, merged, second passes merged, on {v['merge_rows']:,} rows: every "
            f"value within {v['merge_worst']:.1e} (relative) of one collector's"]


def run(quick=False, batches=BATCHES, sizes=SIZES, sections=SECTIONS):
    """All measurements of the chosen sections as a JSON-ready dict."""
    out = {"device": f"{jax.local_device_count()} × {jax.devices()[0].device_kind}",
           "backend": jax.default_backend(), "jax": jax.__version__,
           "dtype": str(jnp.result_type(float)), "sizes": []}
    if "deep" in sections:
        out["deep"] = deep_rates(quick)
    if "solvers" in sections:
        out["solvers"] = solver_times(quick) if out["dtype"] == "float64" else None
    if "global" in sections:
        out["global"] = global_times(quick) if out["dtype"] == "float64" else None
    if "latency" in sections:
        out["latency"] = latency_times(repeat=3)
    if "measure" in sections:
        out["measure"] = measure_times(quick)
    if "hessian" in sections:
        out["hessian"] = hessian_times(quick)
    if "frontier" in sections:
        out["frontier"] = frontier_times(quick) if out["dtype"] == "float64" else None
    if "vocabulary" in sections:
        out["vocabulary"] = vocabulary_times(quick)
    if "throughput" not in sections:
        return out
    for sz in sizes:
        flops = 6 * sz.K * sz.d * sz.N  # three K×d×N products per step
        budget = (2e10 if not quick else 2e8) / flops  # config-steps per measurement
        steps = int(min(20000, max(200, budget)))
        loop_steps = int(min(3000, max(100, budget / 20)))
        row = {"K": sz.K, "d": sz.d, "n": sz.n, "scan_steps_per_s": scan_rate(sz, steps),
               "jitted_loop_steps_per_s": jitted_loop_rate(sz, loop_steps),
               "numpy_loop_steps_per_s": numpy_loop_rate(sz, loop_steps),
               "torch_loop_steps_per_s": torch_loop_rate(sz, loop_steps)}
        for k in ("jitted_loop", "numpy_loop", "torch_loop"):
            other = row[f"{k}_steps_per_s"]
            row[f"scan_over_{k}"] = None if other is None else row["scan_steps_per_s"] / other
        row["grid"] = []
        for B in batches:  # enough steps that set-up and the final records are negligible
            g_steps = int(min(steps, max(100 if flops < 1e6 else 10, 20 * budget / B)))
            plain, fast = grid_rates(sz, B, g_steps)
            row["grid"].append({"B": B, "steps": g_steps, "vmap_config_steps_per_s": plain,
                                "sweep_config_steps_per_s": fast})
        out["sizes"].append(row)
    return out


def report(res):
    """The measurements as a plain-text table."""
    fmt = lambda v: "n/a" if v is None else f"{v:,.0f}"
    ratio = lambda v: "n/a" if v is None else f"{v:.1f}×"
    lines = [f"ufm bench — {res['dtype']}, {res['device']} (jax {res['jax']})"]
    deep = res.get("deep")
    if deep:
        lines += [f"\ndeep linear UFM, L={deep['depth']}, K={deep['K']}, d={deep['d']}, "
                  f"n={deep['n']}, GD step {LR}:",
                  f"  one run, compiled lax.scan       {fmt(deep['scan_steps_per_s']):>14} steps/s",
                  f"  PyTorch SGD loop (if installed)  {fmt(deep['torch_loop_steps_per_s']):>14} "
                  f"steps/s   scan is {ratio(deep['scan_over_torch_loop'])}",
                  f"  grid of {deep['grid_seeds']} seeds (ufm sweep) {fmt(deep['grid_config_steps_per_s']):>14} "
                  f"config-steps/s   {ratio(deep['grid_over_torch_loop'])} the PyTorch loop"]
    if "solvers" in res:
        lines += solver_report(res["solvers"])
    if "global" in res:
        lines += global_report(res["global"])
    if res.get("latency"):
        lines += latency_report(res["latency"])
    if res.get("measure"):
        lines += measure_report(res["measure"])
    if res.get("hessian"):
        lines += hessian_report(res["hessian"])
    if res.get("frontier"):
        lines += frontier_report(res["frontier"])
    if res.get("vocabulary"):
        lines += vocabulary_report(res["vocabulary"])
    if not res["sizes"]:
        return "\n".join(lines)
    lines.append(f"\nbias-free UFM, GD step {LR}:")
    for r in res["sizes"]:
        lines += [f"K={r['K']}, d={r['d']}, n={r['n']}: gradient steps per second, one configuration",
                  f"  compiled lax.scan (ufm)        {fmt(r['scan_steps_per_s']):>14}",
                  f"  per-step jitted Python loop    {fmt(r['jitted_loop_steps_per_s']):>14}   "
                  f"scan is {ratio(r['scan_over_jitted_loop'])}",
                  f"  numpy loop, hand-written grads {fmt(r['numpy_loop_steps_per_s']):>14}   "
                  f"scan is {ratio(r['scan_over_numpy_loop'])}",
                  f"  PyTorch SGD loop (if installed){fmt(r['torch_loop_steps_per_s']):>14}   "
                  f"scan is {ratio(r['scan_over_torch_loop'])}",
                  "  grids: config-steps per second      plain vmap    ufm sweep formulation"]
        for g in r["grid"]:
            lines.append(f"    B = {g['B']:>5}                  {fmt(g['vmap_config_steps_per_s']):>14}"
                         f"   {fmt(g['sweep_config_steps_per_s']):>14}")
    return "\n".join(lines)


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
