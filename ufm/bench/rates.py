"""Throughput: GD steps per second on the bias-free UFM (a compiled scan against a jitted
Python loop, a numpy loop and a PyTorch loop when torch is installed) and grids of
configurations; the deep linear UFM's line (docs/performance.md)."""
import time

import jax
import jax.numpy as jnp
import numpy as np

from ufm import optimise, sweep
from ufm.models import MODELS, Sizes


SIZES = (Sizes(4, 50, 20), Sizes(10, 100, 64))
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
