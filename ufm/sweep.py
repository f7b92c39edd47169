"""Hyperparameter grids as one compiled program: vmap over stacked configurations, in chunks
sized to fit memory, sharded over every local device, resumable chunk by chunk.

Every grid point runs the same single-configuration code as `ufm train` (`optimise.simulate`);
batching comes only from `vmap`, and sharding from `jax.sharding` (identical numbers on one
device or many).
"""
import functools
import hashlib
import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ufm import optimise
from ufm.runner import (_json_safe, atomic_write, certificate_tol, check_config, check_sessions,
                        check_tol, flag, hyper_for, predict, stopping_tol)

SWEEPABLE = ("lam_W", "lam_H", "lam_b", "lam_W1", "lam_W2", "lam_H1", "E_H", "E_W", "lr",
             "init_scale")


def parse_axis(name, text):
    """A flag value as a 1-D grid: `start:stop:num` (linear), `start:stop:num:log`, `a,b,c`, or
    one number. ValueError naming the flag otherwise."""
    text = str(text).strip()
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "log"):
                raise ValueError
            start, stop, num = float(parts[0]), float(parts[1]), int(parts[2])
            if num < 1:
                raise ValueError
            if len(parts) == 4:
                if start <= 0 or stop <= 0:
                    raise ValueError
                return np.logspace(math.log10(start), math.log10(stop), num)
            return np.linspace(start, stop, num)
        return np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise ValueError(f"{flag(name)} must be a number, a comma list, start:stop:num or "
                         f"start:stop:num:log (positive ends), got {text!r}") from None


def point_function(model, sizes, steps, opt_name, restarts, sessions=None, distill=0.0,
                   tol=None):
    """(key, hyper) -> final measurements of one grid point (best of `restarts`), plus `diverged`
    and the certificate: `grad_norm` (relative, see optimise.certify), `steps_taken`,
    `converged_at` (−1 if the tolerance was not met).

    sessions: class groups of incremental sessions (`steps` each; restarts must be 1).
    tol: stop each point once its relative gradient norm is ≤ tol (`steps` is then the cap).
    """
    run = functools.partial(optimise.simulate, model, sizes, steps=steps, log_every=steps,
                            opt_name=opt_name, tol=tol)

    def point(key, hyper):
        if sessions is not None:
            state, out, grad_norm = optimise.sessions_final(model, sizes, key, hyper, sessions,
                                                            steps, opt_name, distill)
            return dict(out, diverged=state.diverged_at >= 0, grad_norm=grad_norm,
                        steps_taken=state.step, converged_at=state.converged_at)
        if restarts == 1:
            traj = run(key, hyper)
        else:
            trajs = jax.vmap(run, in_axes=(0, None))(jax.random.split(key, restarts), hyper)
            final = _final_objective(trajs)
            best = jnp.argmin(jnp.where(jnp.isfinite(final), final, jnp.inf))
            traj = jax.tree.map(lambda v: v[best], trajs)
        last = _last_record(traj.steps)
        out = {k: v[last] for k, v in traj.history.items()}
        out.update(diverged=traj.diverged_at >= 0, grad_norm=traj.grad_norm,
                   steps_taken=traj.steps[last], converged_at=traj.converged_at)
        return out

    return point


def _last_record(steps):
    """Index of the last record a run made (records after a stop carry step −1)  []."""
    return jnp.argmax(jnp.where(steps >= 0, jnp.arange(steps.shape[-1]), -1), axis=-1)


def _final_objective(trajs):
    """The last recorded objective of every restart of a vmapped Trajectory  [R]."""
    last = _last_record(trajs.steps)
    return jnp.take_along_axis(trajs.history["objective"], last[:, None], axis=1)[:, 0]


def default_micro_batch(optimizer="gd"):
    """Configurations vmapped together inside each device's share of a chunk.

    On CPU a wide vmap of the paper-size problem outgrows the cache and runs slower per
    configuration than one configuration alone; groups of 8 (scanned one after another) stay in
    cache and run faster per configuration than one alone. L-BFGS runs one configuration at a
    time on CPU: under vmap every point waits for the slowest line search and the slowest
    convergence of its group (3× slower on a 32×32 grid). Accelerators want the widest vmap.
    """
    if jax.default_backend() != "cpu":
        return None
    return 1 if optimizer == "lbfgs" else 8


def micro_batch_for(per_device, micro="auto", optimizer="gd"):
    """The group size actually used: `micro` (default: `default_micro_batch(optimizer)`) reduced
    to divide each device's share of a chunk; None for one vmap over the share."""
    micro = default_micro_batch(optimizer) if micro == "auto" else micro
    return None if micro is None else math.gcd(per_device, micro)


@functools.lru_cache(maxsize=None)
def compiled_chunk(model, sizes, steps, opt_name, restarts, n_devices, micro=None, sessions=None,
                   distill=0.0, tol=None):
    """jit of the grid program for one chunk: the configuration axis sharded over `n_devices`
    devices (shard_map), each device running `lax.map(point, batch_size=micro)` over its share
    (micro=None: one vmap over the whole share)."""
    point = point_function(model, sizes, steps, opt_name, restarts, sessions, distill, tol)
    mesh = Mesh(np.array(jax.devices()[:n_devices]), ("grid",))
    spec = PartitionSpec("grid")

    def local(keys, hyper):
        if micro is None:
            return jax.vmap(point)(keys, hyper)
        return jax.lax.map(lambda kh: point(*kh), (keys, hyper), batch_size=micro)

    # every value is per-device (no collectives), so the varying-axes type check adds nothing
    program = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec), out_specs=spec,
                            check_vma=False)
    return jax.jit(program), NamedSharding(mesh, spec)


def auto_chunk(model, sizes, restarts, n_points, n_devices, budget_bytes=None):
    """Configurations per chunk: what fits a memory budget (default 1 GiB per device, or half
    the device's memory where JAX reports it), rounded to a multiple of the device count."""
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), sizes, 1.0))
    per_point = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
    per_point *= 8 * restarts * jnp.dtype(jnp.result_type(float)).itemsize  # params, grads, opt, temps
    if budget_bytes is None:
        stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
        limit = (stats or {}).get("bytes_limit")
        budget_bytes = limit // 2 if limit else 1 << 30
    per_device = max(1, min(4096, budget_bytes // per_point))
    chunk = min(per_device * n_devices, n_points)
    unit = n_devices * (default_micro_batch() or 1)
    return max(n_devices, -(-chunk // unit) * unit if chunk >= unit else -(-chunk // n_devices) * n_devices)


def _global(x, sharding):
    """A host array (identical in every process) as one array sharded over all devices."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _gather(x):
    """A sharded result as a numpy array in every process (a no-op copy on one host)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def grid_points(axes, seeds):
    """Flattened grid: list of (values by axis name, seed index); the seed axis varies fastest."""
    names = list(axes)
    for combo in itertools.product(*[range(len(axes[n])) for n in names], range(max(seeds, 1))):
        yield {n: float(axes[n][i]) for n, i in zip(names, combo[:-1])}, combo[-1]


def fingerprint(config):
    return hashlib.sha256(json.dumps(_json_safe(config), sort_keys=True).encode()).hexdigest()[:16]


def run_sweep(model, sizes, base, axes, *, steps, seed=0, seeds=0, optimizer="gd", restarts=1,
              chunk=None, out=None, progress=None, allow_small_d=False, n_devices=None,
              micro="auto", sessions=None, distill=0.0, tol=None):
    """Run the grid `axes` (name -> 1-D values, in the order given) around `base` hyper values.

    seeds > 0 adds a last axis: point s uses PRNGKey(seed + s); otherwise every point uses
    PRNGKey(seed), as `ufm train --seed` does. optimizer/tol as in `runner.train`; every point
    carries the certificate (`grad_norm`, `steps_taken`, `converged_at`, and `converged` against
    the tolerance). With `out`, finished chunks are stored in
    out/chunks/ and a rerun with the same configuration resumes from them.
    sessions/distill: class-incremental sessions of `steps` steps each at every point (fixed
    classifiers only; see `runner.session_groups`).
    Returns (arrays, config): results shaped like the grid, and the full configuration.
    """
    groups = check_sessions(model, sessions, distill, sizes.K, restarts)
    optimise.check_optimizer(model, optimizer)
    check_tol(tol)
    if groups is not None and tol is not None:
        raise ValueError("tol (--tol) does not apply with --sessions: each session runs its "
                         "--steps")
    stop = stopping_tol(optimizer, tol)
    for name, values in axes.items():
        if name not in SWEEPABLE:
            raise ValueError(f"{flag(name)} cannot be a grid axis; sweepable: "
                             f"{', '.join(flag(s) for s in SWEEPABLE)}")
        if name != "lr" and name != "init_scale" and name not in model.hyper_names:
            raise ValueError(f"{flag(name)} does not apply to model {model.name!r} "
                             f"(it takes: {', '.join(flag(k) for k in model.hyper_names)})")
    points = list(grid_points(axes, seeds))
    hypers = []
    for values, _ in points:
        hyper = {**base, **values}
        check_config(model, sizes, hyper, steps, 1, restarts, allow_small_d)
        hypers.append(hyper)
    n_devices = n_devices or jax.device_count()  # all devices of all processes
    chunk = chunk or auto_chunk(model, sizes, restarts, len(points), n_devices)
    if chunk % n_devices:
        raise ValueError(f"chunk (--chunk) must be a multiple of the {n_devices} local devices, "
                         f"got {chunk}")
    shape = tuple(len(v) for v in axes.values()) + ((seeds,) if seeds else ())
    config = dict(model=model.name, K=sizes.K, n=sizes.n, d=sizes.d, steps=steps, seed=seed,
                  seeds=seeds, optimizer=optimizer, tol=stop,
                  certificate_tol=certificate_tol(tol), restarts=restarts, base=base,
                  axes={k: list(map(float, v)) for k, v in axes.items()}, shape=list(shape),
                  chunk=chunk, dtype=str(jnp.result_type(float)), allow_small_d=allow_small_d,
                  sessions=None if groups is None else [list(g) for g in groups],
                  distill=float(distill))
    key_cfg = {k: v for k, v in config.items() if k != "chunk"}
    chunk_dir = None
    if out:
        chunk_dir = os.path.join(out, "chunks")  # on a shared file system for several hosts
        os.makedirs(chunk_dir, exist_ok=True)
        tag_path = os.path.join(chunk_dir, "config.json")
        tag = fingerprint(key_cfg)
        if os.path.exists(tag_path):
            with open(tag_path) as fh:
                if json.load(fh).get("fingerprint") != tag:
                    raise ValueError(f"{out} holds chunks of a different sweep; use another --out "
                                     f"or delete {chunk_dir}")
        elif jax.process_index() == 0:
            doc = json.dumps({"fingerprint": tag, "config": _json_safe(key_cfg)}).encode()
            atomic_write(tag_path, lambda fh: fh.write(doc))
    micro = micro_batch_for(chunk // n_devices, micro, optimizer)
    run, sharding = compiled_chunk(model, sizes, steps, optimizer, restarts, n_devices, micro,
                                   groups, float(distill), stop)
    names = list(hypers[0])
    results = None
    n_chunks = -(-len(points) // chunk)
    for c in range(n_chunks):
        lo, hi = c * chunk, min((c + 1) * chunk, len(points))
        path = chunk_dir and os.path.join(chunk_dir, f"chunk_{lo:08d}_{hi:08d}.npz")
        if path and os.path.exists(path):
            with np.load(path) as f:
                part = {k: f[k] for k in f.files}
        else:
            idx = list(range(lo, hi)) + [hi - 1] * (chunk - (hi - lo))  # pad the last chunk
            stacked = optimise.as_hyper({n: np.array([hypers[i][n] for i in idx]) for n in names})
            keys = jnp.stack([jax.random.PRNGKey(seed + (points[i][1] if seeds else 0)) for i in idx])
            stacked, keys = (jax.tree.map(lambda x: _global(x, sharding), t) for t in (stacked, keys))
            part = {k: _gather(v)[: hi - lo] for k, v in run(keys, stacked).items()}
            if path and jax.process_index() == 0:
                atomic_write(path, lambda fh: np.savez(fh, **part))
        if results is None:
            results = {k: np.empty((len(points),), v.dtype) for k, v in part.items()}
        for k, v in part.items():
            results[k][lo:hi] = v
        if progress:
            progress(c + 1, n_chunks)
    preds = [predict(model, sizes, h) for h in hypers]
    results["theory_objective"] = np.array([np.nan if p is None else p.objective for p in preds])
    results["converged"] = results["grad_norm"] <= config["certificate_tol"]
    arrays = {k: v.reshape(shape) for k, v in results.items()}
    arrays.update({k: np.asarray(v) for k, v in axes.items()})
    if seeds:
        arrays["seed"] = seed + np.arange(seeds)
    return arrays, config


def write_sweep(arrays, config, out):
    """out/sweep.npz and out/sweep.json, atomically (by process 0 only, on several hosts)."""
    if jax.process_index() != 0:
        return
    atomic_write(os.path.join(out, "sweep.npz"), lambda fh: np.savez(fh, **arrays))
    doc = json.dumps(_json_safe(config), indent=1).encode()
    atomic_write(os.path.join(out, "sweep.json"), lambda fh: fh.write(doc))


def base_hyper(model, lams, lr, init_scale):
    """The non-swept values: the model's λ's (defaults filled), lr, init_scale."""
    return hyper_for(model, lams, lr, init_scale)
