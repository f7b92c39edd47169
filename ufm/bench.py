"""Throughput of gradient descent on the bias-free UFM, measured side by side in one process.

For each problem size: one configuration as a compiled scan, a per-step jitted Python loop, a numpy
loop with hand-written gradients (and a PyTorch SGD loop when torch happens to be installed; it is
not a dependency), then config-steps per second for grids of B configurations: a plain vmap, and the
formulation `ufm sweep` uses (cache-sized vmapped groups under lax.map, sharded over devices).
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from ufm import optimise, sweep
from ufm.models import MODELS, Sizes

SIZES = (Sizes(4, 50, 20), Sizes(10, 100, 64))
SECTIONS = ("throughput", "deep", "solvers")
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

    params = jax.block_until_ready(step(model.init(jax.random.PRNGKey(0), sizes, 1.0)))
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


def run(quick=False, batches=BATCHES, sizes=SIZES, sections=("throughput",)):
    """All measurements as a JSON-ready dict."""
    out = {"device": f"{jax.local_device_count()} × {jax.devices()[0].device_kind}",
           "backend": jax.default_backend(), "jax": jax.__version__,
           "dtype": str(jnp.result_type(float)), "sizes": []}
    for sz in sizes:
        flops = 6 * sz.K * sz.d * sz.N  # three K×d×N products per step
        budget = (2e10 if not quick else 2e9) / flops  # config-steps per measurement
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
    lines = [f"ufm bench — bias-free UFM, GD step {LR}, {res['dtype']}, {res['device']} "
             f"(jax {res['jax']})"]
    for r in res["sizes"]:
        lines += [f"\nK={r['K']}, d={r['d']}, n={r['n']}: gradient steps per second, one configuration",
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
