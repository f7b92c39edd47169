"""Hyperparameter grids as compiled programs: vmap over stacked configurations, in chunks sized to
fit memory, sharded over every device, resumable point by point.

Traced axes (the λ's, `lr`, `init_scale`) vary inside one compiled program; static axes (`depth`,
`K`, `d`, `n`) set shapes, so each static combination is one program of its own (`run_grid`).
Every grid point runs the same single-configuration code as `ufm train` (`optimise.simulate`);
batching comes only from `vmap`, and sharding from `jax.sharding` (the same numbers on one
device or many, up to rounding in some measurements). See docs/architecture.md, "Sweeps".
"""
import contextlib
import functools
import itertools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ufm import limits, optimise, store
from ufm import sessions as sessions_mod
from ufm import spec as spec_mod
from ufm import theory as theory_mod
from ufm import certificate as certificate_mod
from ufm import hessian as hessian_mod
from ufm.certificate import predict
from ufm.config import LAYER_LAMBDA, RUN_LEAVES, check_names, flag
from ufm.files import write_npz
from ufm.models import hyper_specs, tied_specs
from ufm.store import fingerprint, folder_lock, write_sweep  # noqa: F401  (write_sweep: ufm.sweep.write_sweep)

STATIC = ("depth", "K", "d", "n")
BOUND_PREFIX = "bound_input/"  # per-point arrays the global bound is computed from, then dropped
MAX_POINTS = 10 ** 8  # a grid's points are enumerated lazily, but its results live on the host


def traced_names():
    """Every name a traced axis can have: each model's hyperparameters and the umbrella names
    they are tied to (from the registry), lr and init_scale."""
    specs = hyper_specs()
    return tuple(specs) + tuple(k for k in tied_specs() if k not in specs) + RUN_LEAVES


def is_traced(name):
    return name in traced_names() or bool(LAYER_LAMBDA.match(name))


def parse_axis(name, text):
    """A flag value as a 1-D grid: `start:stop:num` (linear), `start:stop:num:log`, `a,b,c`, or
    one number; for a per-class hyperparameter a ';'-separated list of vectors, each one number
    or K joined by ',' (`per_class_axis`). ValueError naming the flag otherwise."""
    text = str(text).strip()
    spec = hyper_specs().get(name)
    if spec is not None and spec.per_class:
        return per_class_axis(name, text)
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


def per_class_axis(name, text):
    """A per-class hyperparameter's grid from its flag: vectors separated by ';', each one
    number (every class) or numbers joined by ','. A list of numbers and lists (their length is
    checked against K, and single numbers spread over the classes, when the sweep is planned)."""
    try:
        rows = [[float(v) for v in part.split(",")] for part in str(text).split(";")]
    except ValueError:
        raise ValueError(f"{flag(name)} is per class: one vector (a number, or K numbers joined "
                         f"by ','), or a grid of them separated by ';', got {text!r}") from None
    if len({len(r) for r in rows if len(r) > 1}) > 1:
        raise ValueError(f"{flag(name)}: the vectors of a grid need one length (K), got {text!r}")
    return [r[0] if len(r) == 1 else r for r in rows]


def _axis_json(values):
    """An axis's values as JSON: floats, or lists of floats for per-class vectors."""
    return [float(v) if np.ndim(v) == 0 else [float(x) for x in np.ravel(v)] for v in values]


def axis_value(v):
    """One value of an axis as `hyper` takes it: a float, or a per-class vector (an array)."""
    return float(v) if np.ndim(v) == 0 else np.asarray(v, np.float64)


def parse_static(name, text):
    """A static axis: a comma list of integers (`depth`, `K`, `d`) or of counts (`n`: each one
    count, or per-class counts joined by '/', e.g. 40/10/4/2). A list of one value is no axis.
    ValueError naming the flag otherwise."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if name == "n" and "/" in part:
                values.append(tuple(int(v) for v in part.split("/")))
            else:
                values.append(int(part))
        except ValueError:
            what = ("an integer, or per-class counts joined by '/'" if name == "n"
                    else "an integer")
            raise ValueError(f"{flag(name)} must be a comma list, each value {what}; got "
                             f"{text!r}") from None
    if len(set(values)) != len(values):
        hint = (" (per-class counts in a sweep are joined by '/', e.g. 5/5/5/5)" if name == "n"
                else "")
        raise ValueError(f"{flag(name)} {text!r} repeats a value{hint}")
    return values


def point_function(model, sizes, steps, optimizer, restarts, sessions=None, distill=0.0,
                   tol=None, hessian=None, certificate_tol=None):
    """(key, hyper) -> final measurements of one grid point (best of `restarts`), plus `diverged`
    and the certificate: `grad_norm` (relative, see optimise.certify), `steps_taken`,
    `converged_at` (−1 if the tolerance was not met).

    sessions: class groups of incremental sessions (`steps` each; restarts must be 1).
    tol: stop each point once its relative gradient norm is ≤ tol (`steps` is then the cap).
    hessian: Lanczos steps of the second-order certificate at each point's end
    (ufm.hessian.traced_classifier; None: not computed), stationary below `certificate_tol`.
    """
    classify = None if hessian is None else hessian_mod.traced_classifier(
        model, sizes, hessian, certificate_tol)
    run = functools.partial(optimise.simulate, model, sizes, steps=steps, log_every=steps,
                            optimizer=optimizer, tol=tol)

    def point(key, hyper):
        if sessions is not None:
            state, out, grad_norm = sessions_mod.sessions_final(model, sizes, key, hyper,
                                                                sessions, steps, optimizer,
                                                                distill)
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
        if model.bound_inputs is not None:  # for the global bound, computed on the host
            out.update({BOUND_PREFIX + k: v
                        for k, v in model.bound_inputs(traj.params, sizes).items()})
        if classify is not None:
            out.update(classify(traj.params, hyper))
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
    return 1 if optimizer in ("lbfgs", "convex") else 8


def micro_batch_for(per_device, micro="auto", optimizer="gd"):
    """The group size actually used: `micro` (default: `default_micro_batch(optimizer)`) reduced
    to divide each device's share of a chunk; None for one vmap over the share."""
    micro = default_micro_batch(optimizer) if micro == "auto" else micro
    return None if micro is None else math.gcd(per_device, micro)


@functools.lru_cache(maxsize=None)
def compiled_chunk(model, sizes, steps, optimizer, restarts, n_devices, micro=None,
                   sessions=None, distill=0.0, tol=None, hessian=None, certificate_tol=None):
    """jit of the grid program for one chunk: the configuration axis sharded over `n_devices`
    devices (shard_map), each device running `lax.map(point, batch_size=micro)` over its share
    (micro=None: one vmap over the whole share)."""
    point = point_function(model, sizes, steps, optimizer, restarts, sessions, distill, tol,
                           hessian, certificate_tol)
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


def auto_chunk(model, sizes, restarts, n_points, n_devices, optimizer="gd", budget_bytes=None):
    """Configurations per chunk: at most 4096 per device and, where a whole share is one vmap
    (accelerators), what fits half the device's memory; a multiple of the device count."""
    micro = default_micro_batch(optimizer)
    per_point = limits.run_bytes(model, sizes, optimizer, restarts)
    if budget_bytes is None:
        budget_bytes = limits.machine_memory()[0] // 2
    per_device = 4096 if micro is not None else max(1, min(4096, budget_bytes // per_point))
    chunk = min(per_device * n_devices, n_points)
    unit = n_devices * (micro or 1)
    return max(n_devices, -(-chunk // unit) * unit if chunk >= unit
               else -(-chunk // n_devices) * n_devices)


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


class Grid:
    """The flattened grid of traced `axes` (name -> 1-D values, in order) and S seeds, the seed
    axis varying fastest; points are enumerated lazily, a block at a time."""

    def __init__(self, axes, seeds):
        self.axes = {k: np.asarray(v, np.float64) for k, v in axes.items()}
        self.seeds = seeds
        self.shape = tuple(len(v) for v in self.axes.values()) + ((seeds,) if seeds else ())
        self.size = math.prod(self.shape)

    def block(self, index):
        """(values by axis name [B], seed offsets [B]) of the points `index` [B]."""
        coords = np.unravel_index(np.asarray(index), self.shape) if self.shape else ()
        values = {k: v[c] for (k, v), c in zip(self.axes.items(), coords)}
        seeds = coords[-1] if self.seeds else np.zeros(len(index), np.int64)
        return values, seeds


# --- one static combination ---------------------------------------------------------------------

def _check_axes(model, axes):
    for name, values in axes.items():
        if not is_traced(name):
            sweepable = [n for n in traced_names() if not LAYER_LAMBDA.match(n)]
            raise ValueError(f"{flag(name)} cannot be a grid axis; sweepable: "
                             f"{', '.join(flag(s) for s in sweepable)} and --lam-W<l>")
        check_names(model, [name])
        if len(values) == 0:
            raise ValueError(f"{flag(name)} is an empty grid")


def run_sweep(model, sizes, base, axes, *, steps, seed=0, seeds=0, optimizer="gd", restarts=1,
              chunk=None, out=None, progress=None, allow_small_d=False, n_devices=None,
              micro="auto", sessions=None, distill=0.0, tol=None, hessian=None):
    """Run the grid `axes` (name -> 1-D values, in the order given) around `base` hyper values,
    for one static combination (`model`, `sizes`): one compiled program.

    seeds > 0 adds a last axis: point s uses PRNGKey(seed + s); otherwise every point uses
    PRNGKey(seed), as `ufm train --seed` does. optimizer/tol as in `runner.train`; every point
    carries the certificate (`grad_norm`, `steps_taken`, `converged_at`, and `converged` against
    the tolerance). With `out`, the folder is locked while the sweep runs, finished chunks are
    stored in out/chunks/ (each with its configuration's fingerprint and point indices), and a
    rerun with the same configuration resumes from the points they hold, whatever --chunk either
    run used. sessions/distill: class-incremental sessions of `steps` steps each at every point
    (fixed classifiers only; see `runner.session_groups`).
    Returns (arrays, config): results shaped like the grid, and the full configuration, whose
    `work` says how many points and config-steps this call computed (not loaded).
    """
    kw = dict(steps=steps, seed=seed, seeds=seeds, optimizer=optimizer, restarts=restarts,
              chunk=chunk, allow_small_d=allow_small_d, n_devices=n_devices, micro=micro,
              sessions=sessions, distill=distill, tol=tol, hessian=hessian)
    plan = _plan(_base_spec(model, sizes, base, **kw), axes, **kw)
    with (folder_lock(out) if out else contextlib.nullcontext()):
        return _execute(plan, out and os.path.join(out, "chunks"), progress)


def point_lams(model, base, values):
    """The λ's of one point: `base`'s, with the traced `values` (name -> value) applied; an axis
    over an umbrella name (`lam_W` of a deep model, `Hyper.tied`) sets every member that has no
    axis of its own."""
    lams = {k: v for k, v in base.items() if k not in RUN_LEAVES}
    for name, v in values.items():
        if name in RUN_LEAVES:
            continue
        if name in model.tied_names and name not in model.hyper_names:
            for k in model.tied_to(name):
                if k not in values:
                    lams[k] = v
        else:
            lams[name] = v
    return lams


def _per_class_grid(model, name, values, K):
    """A per-class hyperparameter's axis as [P, K] (a number given to every class); other axes
    unchanged. ValueError naming the flag for a vector of another length than K."""
    spec = next((h for h in model.hypers if h.name == name), None)
    if spec is None or not spec.per_class:
        return values
    rows = [np.full(K, float(v)) if np.ndim(v) == 0 else np.asarray(v, np.float64)
            for v in values]
    bad = [len(r) for r in rows if r.shape != (K,)]
    if bad:
        raise ValueError(f"{flag(name)} is per class: each vector of its grid needs one value or "
                         f"K={K}, got one of {bad[0]}")
    return np.stack(rows)


def _base_spec(model, sizes, base, *, steps, seed, optimizer, restarts, allow_small_d, sessions,
               distill, tol, **_):
    """The checked RunSpec of a sweep's base point (ufm.spec.build: a single run's checks, in
    their order); `base` the full hyper dict (λ's, lr, init_scale)."""
    return spec_mod.build(model, K=sizes.K, n=sizes.n, d=sizes.d, steps=steps, log_every=steps,
                          seed=seed, lr=base["lr"], init_scale=base["init_scale"],
                          restarts=restarts, optimizer=optimizer, allow_small_d=allow_small_d,
                          sessions=sessions, distill=distill, tol=tol,
                          **{k: v for k, v in base.items() if k not in RUN_LEAVES})


def _plan(run, axes, *, seeds, chunk, n_devices, micro, hessian=None, **_):
    """Every check of one static combination, before anything is computed or written: the plan
    `_execute` runs (a dict). `run` is the base point's checked RunSpec; the grid's checks
    follow."""
    steps, seed, restarts = run.steps, run.seed, run.restarts
    base = dict(run.hyper)
    model, sizes, groups, stop = run.model, run.sizes, run.sessions, run.stop
    optimizer = run.optimizer.name
    if hessian is not None:
        if isinstance(hessian, bool) or not isinstance(hessian, (int, np.integer)) or hessian < 1:
            raise ValueError(f"hessian (--hessian) must be a number of Lanczos steps >= 1, got "
                             f"{hessian!r}")
        hessian_mod.check_smooth(model)
        if groups is not None:
            raise ValueError("hessian (--hessian) classifies a single run's point; with "
                             "--sessions each session solves another problem")
    _check_axes(model, axes)
    axes = {k: _per_class_grid(model, k, v, sizes.K) for k, v in axes.items()}
    grid = Grid(axes, seeds)
    if grid.size > MAX_POINTS:
        raise ValueError(f"the grid has {grid.size:,} points; at most {MAX_POINTS:,} fit (its "
                         f"results are kept on the host): split it")
    limits.check_seed(seed, count=max(seeds, 1))
    limits.check_fits(limits.result_bytes(model, sizes, grid.size),
                      f"this grid's results ({grid.size:,} points, kept on the host)")
    # Each value of each axis, with the others at their base values, must be a valid
    # configuration; the checks are per value, so this covers every point.
    for name, values in axes.items():
        for v in values:
            hyper = point_lams(model, base, {name: axis_value(v)})
            if name in RUN_LEAVES:
                hyper[name] = float(v)
            run.with_hyper(hyper)
    n_devices = n_devices or jax.device_count()  # all devices of all processes
    chunk = chunk or auto_chunk(model, sizes, restarts, grid.size, n_devices, optimizer)
    if chunk % n_devices:
        raise ValueError(f"chunk (--chunk) must be a multiple of the {n_devices} devices, "
                         f"got {chunk}")
    micro = micro_batch_for(chunk // n_devices, micro, optimizer)
    together = micro or chunk // n_devices  # configurations in memory at once per device
    limits.check_fits(limits.run_bytes(model, sizes, optimizer, restarts * together),
                      f"a chunk ({together} configuration{'s' * (together != 1)} in memory "
                      f"together per device, {restarts} restart{'s' * (restarts != 1)} each, "
                      f"K={sizes.K}, d={sizes.d})")
    config = dict(model=model.name, K=sizes.K, n=sizes.n, d=sizes.d, steps=steps, seed=seed,
                  seeds=seeds, optimizer=optimizer, tol=stop,
                  certificate_tol=run.certificate_tol,
                  global_tol=certificate_mod.GLOBAL_TOL[str(jnp.result_type(float))],
                  restarts=restarts, base=base,
                  axes={k: _axis_json(v) for k, v in axes.items()},
                  shape=list(grid.shape), chunk=chunk, dtype=str(jnp.result_type(float)),
                  allow_small_d=run.allow_small_d,
                  sessions=None if groups is None else [list(g) for g in groups],
                  distill=run.distill)
    if hessian is not None:  # (absent otherwise: the fingerprints of earlier sweeps still match)
        config["hessian"] = int(hessian)
    return dict(model=model, sizes=sizes, base=base, axes=axes, grid=grid, config=config,
                n_devices=n_devices, micro=micro, groups=groups, stop=stop)


def _execute(plan, chunk_dir, progress):
    """Run a plan of `_plan`: compute the points no chunk in `chunk_dir` holds yet."""
    model, sizes, base, axes, grid, config = (plan[k] for k in ("model", "sizes", "base", "axes",
                                                                  "grid", "config"))
    steps, seed, seeds, chunk = (config[k] for k in ("steps", "seed", "seeds", "chunk"))
    # the point layout too: axes in their order (a point's index depends on it; json sorts dicts)
    tag = fingerprint(dict({k: v for k, v in config.items() if k != "chunk"},
                           layout=[[k, _axis_json(v)]
                                   for k, v in axes.items()]))
    done, results = (store.load_done(chunk_dir, tag, grid.size) if chunk_dir
                     else (np.zeros(grid.size, bool), None))
    todo = np.flatnonzero(~done)
    run, sharding = compiled_chunk(model, sizes, steps, config["optimizer"], config["restarts"],
                                   plan["n_devices"], plan["micro"], plan["groups"],
                                   config["distill"], plan["stop"], config.get("hessian"),
                                   config["certificate_tol"])
    n_chunks = -(-len(todo) // chunk)
    computed_steps = 0
    for c in range(n_chunks):
        index = todo[c * chunk:(c + 1) * chunk]
        padded = np.concatenate([index, np.repeat(index[-1:], chunk - len(index))])
        values, seed_offsets = grid.block(padded)
        stacked = _stack_hyper(model, base, values, len(padded))
        keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seed + seed_offsets, jnp.uint32))
        stacked, keys = (jax.tree.map(lambda x: _global(x, sharding), t) for t in (stacked, keys))
        part = {k: _gather(v)[: len(index)] for k, v in run(keys, stacked).items()}
        computed_steps += int(np.sum(part["steps_taken"]))
        if chunk_dir and jax.process_index() == 0:
            write_npz(os.path.join(chunk_dir, f"chunk_{index[0]:09d}_{index[-1]:09d}.npz"),
                      dict(part, index=index, fingerprint=np.array(tag)))
        if results is None:
            results = {k: np.empty((grid.size,) + v.shape[1:], v.dtype) for k, v in part.items()}
        for k, v in part.items():
            results[k][index] = v
        if progress:
            progress(c + 1, n_chunks)
    bound = _global_arrays(model, sizes, base, grid, results, config)
    arrays = {k: v.reshape(grid.shape) for k, v in results.items()
              if not k.startswith(BOUND_PREFIX)}
    arrays.update({k: v.reshape(grid.shape) for k, v in bound.items()})
    arrays.update(_theory_arrays(model, sizes, base, grid, arrays["objective"]))
    arrays["converged"] = (arrays["grad_norm"] <= config["certificate_tol"]) & ~arrays["diverged"]
    if "second_order_kind" in arrays:  # codes → names (hessian.KINDS)
        arrays["second_order_kind"] = hessian_mod.kind_names(arrays["second_order_kind"])
    arrays.update({k: np.asarray(v) for k, v in axes.items()})
    if seeds:
        arrays["seed"] = seed + np.arange(seeds)
    config["work"] = {"computed_points": int(len(todo)), "loaded_points": int(done.sum()),
                      "computed_config_steps": computed_steps}
    return arrays, config


def _global_arrays(model, sizes, base, grid, results, config):
    """`lower_bound`, `global_gap` and `global` at every point (docs/theory.md §5; NaN / False for
    a model without a convex reformulation or with sessions), from the bound inputs each point
    returned; the flat arrays [P]."""
    P = grid.size
    lower = np.full(P, np.nan)
    if model.bound_inputs is not None and config.get("sessions") is None:
        values, _ = grid.block(np.arange(P))
        names = [k for k in results if k.startswith(BOUND_PREFIX)]
        for i in range(P):  # on the host, per point: K×K float64 linear algebra
            hyper = dict(base, **point_lams(model, base, {k: axis_value(v[i]) for k, v in
                                                          values.items()}))
            inputs = {k[len(BOUND_PREFIX):]: results[k][i] for k in names}
            if all(np.all(np.isfinite(v)) for v in inputs.values()):  # not a diverged point
                with np.errstate(all="ignore"):
                    lower[i] = model.lower_bound(inputs, hyper, sizes)
    objective = results["objective"].astype(np.float64)
    gap = objective - lower
    tol = certificate_mod.GLOBAL_TOL[config["dtype"]]
    scale = np.maximum(np.abs(objective), optimise.OBJECTIVE_FLOOR)
    error = certificate_mod.evaluation_error(objective, lower, sizes, config["dtype"])
    with np.errstate(invalid="ignore"):  # as certificate.global_certificate, every point at once
        reached = np.isfinite(gap) & (gap <= tol * scale) & (gap >= -error)
    return {"lower_bound": lower, "global_gap": gap, "global": reached}


def _stack_hyper(model, base, values, B):
    """The stacked hyper [B] of a block of points: base values with the axes' values applied
    (see `point_lams`)."""
    lams = point_lams(model, {k: np.broadcast_to(v, (B,) + np.shape(v)).copy()
                              for k, v in base.items() if k not in RUN_LEAVES}, values)
    hyper = dict(lams)
    for k in RUN_LEAVES:
        if k in values:
            hyper[k] = values[k]
        elif isinstance(base[k], dict):  # a std per block
            hyper[k] = {b: np.full(B, v) for b, v in base[k].items()}
        else:
            hyper[k] = np.full(B, base[k])
    return optimise.as_hyper(hyper)


def _theory_arrays(model, sizes, base, grid, objective):
    """The closed form at every point (`theory_objective`, NaN where none applies; for deep ReLU
    the DNC value) and where each run landed against reference values (deep CE: `reached`,
    `excess`; deep ReLU: `below_dnc`, `dnc_gap`; see theory.landing). Predictions are made once
    per λ combination (the seed axis repeats them)."""
    shape = grid.shape[:-1] if grid.seeds else grid.shape
    cells = math.prod(shape)
    values, _ = Grid(grid.axes, 0).block(np.arange(cells))
    preds = [predict(model, sizes, dict(base, **point_lams(
        model, base, {k: axis_value(v[i]) for k, v in values.items()}))) for i in range(cells)]
    per_point = [p for p in preds for _ in range(max(grid.seeds, 1))]
    out = {"theory_objective": np.array([np.nan if p is None else p.objective
                                         for p in per_point]).reshape(grid.shape)}
    # where the closed form changes regime (ufm plot draws the level-1 curves): c/threshold (the
    # solution is zero from 1 on) and c/bias threshold (the bias saturates below 1)
    for key, attr in (("theory_c_ratio", "threshold"), ("theory_bias_ratio", "bias_threshold")):
        ratios = [getattr(p, "c", None) / getattr(p, attr) if p is not None and getattr(
            p, "c", None) is not None and getattr(p, attr, None) else np.nan for p in per_point]
        if np.isfinite(ratios).any():
            out[key] = np.array(ratios, np.float64).reshape(grid.shape)
    docs = [theory_mod.landing(p, float(f)) for p, f in zip(per_point, objective.ravel())]
    for k in sorted({k for d in docs if d for k in d if k != "gaps"}):
        vals = [None if d is None else d.get(k) for d in docs]
        if k == "reached":
            col = np.array(["" if v is None else v for v in vals])
        elif k == "below_dnc":
            col = np.array([bool(v) for v in vals])
        else:
            col = np.array([np.nan if v is None else v for v in vals], np.float64)
        out[k] = col.reshape(grid.shape)
    return out


# --- static axes: one program per combination ---------------------------------------------------

def run_grid(model_name, static, lams, axes, *, order, steps, lr=0.1, init_scale=None,
             loss=None, alpha=None, mask_softmax=False, options=None, out=None, progress=None,
             **kw):
    """A sweep over static axes too: every combination of `static` (name -> list of values for
    depth, K, d, n; a list of one value is no axis) is one compiled program, resumable on its own
    under out/chunks/<combination>/. The results make one set of arrays with every axis in
    `order` (the command line's), the seed axis last; a measurement that exists only at some
    combinations (nc1_H4 needs depth ≥ 4) is NaN (−1 for integers) at the others.

    lams: the λ flags as given (a tied `lam_W` for deep models), axes: traced grids; kw: as
    `run_sweep`. With `out`, the finished sweep is written there (sweep.npz, sweep.json) before
    the folder's lock is released. A folder holding the finished sweep of the same configuration
    is loaded, not recomputed (its axes put in the order asked for); one holding another
    configuration's, finished or in partial chunks, is refused.
    Returns (arrays, config) as `run_sweep`, config['combinations'] listing each one's.
    """
    kw = dict(dict(seed=0, seeds=0, optimizer="gd", restarts=1, chunk=None, allow_small_d=False,
                   n_devices=None, micro="auto", sessions=None, distill=0.0, tol=None,
                   hessian=None), **kw)
    kw.pop("progress", None)
    plans = []
    for combo in itertools.product(*static.values()):  # validate every one before computing
        values = dict(zip(static, combo))
        run = spec_mod.build(
            model_name, K=values["K"], n=values["n"], d=values["d"], steps=steps,
            log_every=steps, seed=kw["seed"], lr=lr, init_scale=init_scale,
            restarts=kw["restarts"], optimizer=kw["optimizer"],
            allow_small_d=kw["allow_small_d"], loss=loss, alpha=alpha, mask_softmax=mask_softmax,
            depth=values.get("depth"), options=options, sessions=kw["sessions"],
            distill=kw["distill"], tol=kw["tol"],
            **{k: v for k, v in lams.items() if k not in axes})  # an axis sets its own
        plans.append((values, _plan(run, axes, **kw)))
    if len(plans) > 1:  # each combination fits on its own; their results are held together
        total = sum(limits.result_bytes(p["model"], p["sizes"], p["grid"].size) for _, p in plans)
        limits.check_fits(2 * total, f"this sweep's results ({len(plans)} static combinations × "
                                     f"{plans[0][1]['grid'].size:,} points, kept on the host "
                                     f"and assembled into one set of arrays)")
    # file-valued options by their content (the model holds them converted), never their path:
    # a changed file is another configuration, for a finished sweep and for resumed chunks alike
    content = {k: v for k, v in plans[0][1]["model"].options if k in (options or {})}
    mark = sweep_fingerprint(model_name, static, lams, axes, steps, lr, init_scale,
                             (loss, alpha, mask_softmax, *sorted(content.items())), kw)
    parts, configs = [], []
    with (folder_lock(out) if out else contextlib.nullcontext()):
        finished = out and store.finished(out, mark)
        if finished:
            return _reordered(*finished, order)
        if out and jax.process_index() == 0:  # another configuration's chunks: refused
            store.claim_chunks(out, mark, [",".join(f"{k}={_label(v)}" for k, v in values.items())
                                           for values, _ in plans])
        for i, (values, plan) in enumerate(plans):
            tag = ",".join(f"{k}={_label(v)}" for k, v in values.items())
            report = None if progress is None else (
                lambda done, n, i=i: progress(i + done / n, len(plans)))
            arrays, config = _execute(plan, out and os.path.join(out, "chunks", tag), report)
            parts.append(arrays)
            configs.append(dict(config, combination={k: _json_value(v) for k, v in values.items()}))
        arrays, config = _assemble(parts, static, axes, order, kw["seeds"], configs)
        config["fingerprint"] = mark
        if content:
            config["options"] = content  # e.g. the targets matrix itself, not the file's name
        if out:  # written, and chunks/ removed, before the lock is released
            write_sweep(arrays, config, out)
    return arrays, config


def _reordered(arrays, config, order):
    """A finished sweep's arrays with their axes in `order` (then the others, the seed axis last),
    as a rerun naming the same axes in another order asks for."""
    have = list(config.get("axes_order") or [])
    seeds = bool(have) and have[-1] == "seed"
    current = have[:-1] if seeds else have
    wanted = [k for k in order if k in current] + [k for k in current if k not in order]
    if wanted == current:
        return arrays, config
    perm = [current.index(k) for k in wanted]
    n = len(current)
    out = {k: (np.transpose(v, perm + list(range(n, v.ndim)))
               if v.ndim >= n and v.shape[:n] == tuple(config["shape"][:n]) and k not in current
               else v) for k, v in arrays.items()}
    config = dict(config, axes_order=wanted + (["seed"] if seeds else []),
                  shape=[config["shape"][i] for i in perm] + config["shape"][n:])
    return out, config


def _label(v):
    return "/".join(map(str, v)) if isinstance(v, tuple) else str(v)


def _json_value(v):
    return list(v) if isinstance(v, tuple) else v


def _assemble(parts, static, axes, order, seeds, configs):
    """One set of arrays from the combinations' results, axes in `order`, the seed axis last."""
    static_axes = [k for k, v in static.items() if len(v) > 1]
    static_shape = tuple(len(static[k]) for k in static_axes)
    traced = list(axes)
    keys = []
    for p in parts:
        keys += [k for k in p if k not in keys and k not in traced and k != "seed"]
    arrays = {}
    for k in keys:
        sample = next(p[k] for p in parts if k in p)
        if sample.dtype.kind == "U":  # as wide as the widest part's strings
            dtype, fill = max((p[k].dtype for p in parts if k in p), key=lambda t: t.itemsize), ""
        elif sample.dtype == bool:
            dtype, fill = bool, False
        elif np.issubdtype(sample.dtype, np.integer):
            dtype, fill = sample.dtype, -1
        else:
            dtype, fill = sample.dtype, np.nan
        arrays[k] = np.stack([p[k].astype(dtype) if k in p else np.full(sample.shape, fill, dtype)
                              for p in parts]).reshape(static_shape + sample.shape)
    # axes in the order given on the command line, the seed axis last
    current = static_axes + traced
    wanted = [k for k in order if k in current] + [k for k in current if k not in order]
    perm = [current.index(k) for k in wanted]
    for k, v in arrays.items():
        arrays[k] = np.transpose(v, perm + list(range(len(perm), v.ndim)))
    for k in static_axes:
        vals = static[k]
        arrays[k] = (np.array([_label(v) for v in vals]) if any(isinstance(v, tuple) for v in vals)
                     else np.asarray(vals))
    for k, v in axes.items():  # a per-class axis mixing numbers and vectors: as planned, [P, K]
        try:
            arrays[k] = np.asarray(v, np.float64)
        except ValueError:
            arrays[k] = parts[0][k]
    if seeds:
        arrays["seed"] = parts[0]["seed"]
    first = configs[0]
    config = {k: v for k, v in first.items()
              if k not in ("work", "combination", "K", "n", "d", "shape", "base", "chunk")}
    config.update(static={k: [_json_value(v) for v in vals] for k, vals in static.items()},
                  axes_order=wanted + (["seed"] if seeds else []),
                  shape=list(arrays["objective"].shape),
                  combinations=[{k: c[k] for k in ("combination", "chunk", "base")}
                                for c in configs],
                  work={k: sum(c["work"][k] for c in configs) for k in first["work"]})
    for name, vals in static.items():
        if len(vals) == 1:
            config[name] = _json_value(vals[0])
    if len(configs) == 1:
        config["base"] = first["base"]
    return arrays, config


def sweep_fingerprint(model_name, static, lams, axes, steps, lr, init_scale, variant, kw):
    """What identifies a sweep's results (not --chunk, not where it runs)."""
    return fingerprint(dict(model=model_name, variant=list(variant),
                            static={k: [_json_value(v) for v in vals] for k, vals in static.items()},
                            lams=lams, lr=lr, init_scale=init_scale,
                            axes={k: _axis_json(v) for k, v in axes.items()},
                            steps=steps, dtype=str(jnp.result_type(float)),
                            **{k: v for k, v in kw.items() if k not in ("chunk", "n_devices",
                                                                          "micro")
                               and not (k == "hessian" and v is None)}))


