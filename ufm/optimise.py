"""Optimisation of a UFM as one jit-compiled program (nested `lax.scan`, or `lax.while_loop` when a
run stops at a tolerance).

The outer loop runs one logging interval per iteration, the inner scan `log_every` optimiser steps;
the objective and every measurement are recorded at step 0, after each interval and at the end.
A configuration is `hyper`: a dict of scalar leaves (the model's λ's, `lr`, `init_scale`, and
optionally `target`), so a new value never recompiles and `vmap` over stacked dicts runs a grid.

Optimisers: plain gradient descent (the papers' method and the default), heavy-ball momentum, Adam
(optax), and L-BFGS with optax's zoom line search (`lbfgs`, for the unconstrained models). Every
run ends with a convergence certificate: the gradient norm relative to the objective at the final
point. With a tolerance `tol` a run stops once that criterion is met (or the objective reaches
`hyper['target']`); under `vmap` the loop ends when every point has stopped, and stopped points
stay frozen bit for bit. See docs/architecture.md.
"""
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ufm.models import FIXED_BLOCKS

FIRST_ORDER = ("gd", "momentum", "adam")
OPTIMIZERS = FIRST_ORDER + ("lbfgs",)
OBJECTIVE_FLOOR = 1e-6  # the relative gradient norm is ‖∇f‖ / max(|f|, OBJECTIVE_FLOOR)
# `converged` in the certificate: relative gradient norm ≤ tol, this tol unless one is given.
CERTIFICATE_TOL = {"float32": 1e-3, "float64": 1e-6}
# L-BFGS stops at this tol unless one is given (about round-off: its steps after convergence are
# failed line searches). First-order methods run every step unless a tol is given.
LBFGS_TOL = {"float32": 1e-6, "float64": 1e-10}


class State(NamedTuple):
    params: Any  # dict of arrays (model-specific blocks)
    opt_state: Any
    step: jax.Array  # [] int: optimiser updates applied
    diverged_at: jax.Array  # [] int: first step whose objective or update was non-finite, −1 if none
    converged_at: jax.Array  # [] int: step at which the stopping criterion was met, −1 if not


class Trajectory(NamedTuple):
    params: Any  # final parameters
    steps: jax.Array  # [T] step of each record; −1 marks a record after the run stopped (tol)
    history: dict  # name -> [T]; 'objective' and every measurement of the model
    diverged_at: jax.Array  # [] int, −1 if the run stayed finite
    converged_at: jax.Array = None  # [] int, step where the tolerance was met, −1 if not
    grad_norm: jax.Array = None  # [] ‖∇f‖ / max(|f|, OBJECTIVE_FLOOR) at the final parameters


class Method(NamedTuple):
    """An optimiser as two pure functions.

    init(params) -> opt_state; step(params, opt_state, want_value) -> (params', opt_state', value,
    grads), value and grads taken at `params` (value None when not wanted and not free).
    """

    init: Callable
    step: Callable


def optimizer(name, lr):
    """Plain GD (`gd`), heavy-ball momentum 0.9 (`momentum`) or Adam (`adam`), with step size lr."""
    if name == "gd":
        return optax.sgd(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=0.9)
    if name == "adam":
        return optax.adam(lr)
    raise ValueError(f"optimizer must be one of {', '.join(FIRST_ORDER)}, got {name!r}")


def method(model, sizes, hyper, name):
    """The optimiser `name` on the objective of `model` at `hyper` (projected for constrained
    models). L-BFGS uses optax's zoom line search and needs no step size."""
    objective = lambda p: model.objective(p, hyper, sizes)
    if name == "lbfgs":
        return _lbfgs(model, sizes, hyper, objective)
    tx = optimizer(name, hyper["lr"])

    def step(params, opt_state, want_value):
        if want_value:
            value, grads = jax.value_and_grad(objective)(params)
        else:
            value, grads = None, jax.grad(objective)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if model.project is not None:  # projected gradient descent onto the constraint set
            params = model.project(params, hyper, sizes)
        return params, opt_state, value, grads

    return Method(tx.init, step)


def check_optimizer(model, name):
    """ValueError unless `name` is an optimiser that can run `model`."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer (--optimizer) must be one of {', '.join(OPTIMIZERS)}, "
                         f"got {name!r}")
    if name == "lbfgs" and model.project is not None:
        raise ValueError(f"optimizer (--optimizer) lbfgs is for the unconstrained models; "
                         f"{model.name!r} keeps its features on a constraint set, which L-BFGS's "
                         f"line search does not respect: use gd, momentum or adam")


def block_scales(params, hyper):
    """1/√λ_X for every block X with a penalty λ_X/2‖X‖² (hyper key `lam_X`, λ_X > 0), else 1."""
    def scale(name):
        lam = hyper.get(f"lam_{name}")
        if lam is None:
            return jnp.ones((), jnp.result_type(float))
        return jnp.where(lam > 0, 1 / jnp.sqrt(jnp.where(lam > 0, lam, 1)), 1)

    return {k: scale(k) for k in params}


def _lbfgs(model, sizes, hyper, objective):
    """optax's L-BFGS with its zoom line search, run in the variables X' = √λ_X·X.

    The change of variables turns every penalty into ½‖X'‖², so blocks with very different λ's
    are equally scaled (at λ_W = 0.1, λ_H = 1e-5 it cuts the iterations about fivefold); the
    minimiser is the same point. The state holds X'; `step` maps to and from the model's X.
    """
    check_optimizer(model, "lbfgs")
    tx = optax.lbfgs()
    scales = lambda p: block_scales(p, hyper)
    to_model = lambda q: {k: v * scales(q)[k] for k, v in q.items()}
    scaled = lambda q: objective(to_model(q))

    def init(params):
        q = {k: v / scales(params)[k] for k, v in params.items()}
        # The line search stores f and ∇f at the accepted point for the next step; seed them at
        # the start, so no step re-evaluates them (optax's helper would, under a cond that vmap
        # turns into running both branches).
        value, grads = jax.value_and_grad(scaled)(q)
        return optax.tree.set(tx.init(q), value=value, grad=grads)

    def step(params, opt_state, want_value):
        s = scales(params)
        q = {k: v / s[k] for k, v in params.items()}
        value, grads = optax.tree.get(opt_state, "value"), optax.tree.get(opt_state, "grad")
        updates, opt_state = tx.update(grads, opt_state, q, value=value, grad=grads,
                                       value_fn=scaled)
        model_grads = {k: g / s[k] for k, g in grads.items()}  # ∂f/∂X = (∂f/∂X')/scale
        return to_model(optax.apply_updates(q, updates)), opt_state, value, model_grads

    return Method(init, step)


def record(model, sizes, params, hyper):
    """The objective and the model's measurements at `params` (a dict of scalars)."""
    out = {"objective": model.objective(params, hyper, sizes)}
    out.update(model.measure(params, sizes, hyper))
    return out


def gradient_norm(model, sizes, params, grads, hyper):
    """‖∇f‖ over the free blocks; for a constrained model the norm of the projected-gradient step
    ‖p − Π(p − lr·∇f)‖/lr, which is zero exactly at a constrained stationary point."""
    free = [k for k in grads if k not in FIXED_BLOCKS]
    if model.project is None:
        return optax.tree.norm({k: grads[k] for k in free})
    moved = model.project(jax.tree.map(lambda p, g: p - hyper["lr"] * g, params, grads), hyper,
                          sizes)
    return optax.tree.norm({k: (params[k] - moved[k]) / hyper["lr"] for k in free})


def relative_gradient(model, sizes, params, value, grads, hyper):
    """The certificate's measure: gradient_norm / max(|f|, OBJECTIVE_FLOOR)."""
    scale = jnp.maximum(jnp.abs(value), OBJECTIVE_FLOOR)
    return gradient_norm(model, sizes, params, grads, hyper) / scale


def certify(model, sizes, params, hyper):
    """relative_gradient at `params` (one objective-and-gradient evaluation)  []."""
    value, grads = jax.value_and_grad(model.objective)(params, hyper, sizes)
    return jnp.where(jnp.isfinite(value),
                     relative_gradient(model, sizes, params, value, grads, hyper), jnp.inf)


def check_simulation(model, sizes, hyper, steps, log_every, opt_name):
    """ValueError for what `simulate` cannot run (checked while tracing: all of it is static)."""
    if not all(hasattr(model, a) for a in ("init", "objective", "measure", "hyper_names")):
        raise ValueError(f"model must be a ufm Model (see ufm.get_model), got {model!r}")
    if not all(hasattr(sizes, a) for a in ("K", "n", "d", "N")):
        raise ValueError(f"sizes must be ufm.models.Sizes(K, n, d), got {sizes!r}")
    for name, value in (("K", sizes.K), ("d", sizes.d), ("steps", steps),
                        ("log_every", log_every)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if sizes.K < 2:
        raise ValueError(f"K must be >= 2, got {sizes.K}")
    if not isinstance(hyper, dict):
        raise ValueError(f"hyper must be a dict of the model's λ's, lr and init_scale, got "
                         f"{type(hyper).__name__}")
    missing = [k for k in (*model.hyper_names, "lr", "init_scale") if k not in hyper]
    if missing:
        raise ValueError(f"hyper lacks {missing} (needed by {model.name}: "
                         f"{list(model.hyper_names) + ['lr', 'init_scale']})")
    check_optimizer(model, opt_name)


def init_state(model, sizes, key, hyper, opt_name="gd"):
    """Gaussian initialisation with std hyper['init_scale'] (a scalar or a dict per block)."""
    params = model.init(key, sizes, hyper["init_scale"])
    if model.project is not None:  # start feasible
        params = model.project(params, hyper, sizes)
    opt_state = method(model, sizes, hyper, opt_name).init(params)
    minus_one = -jnp.ones((), jnp.int32)
    return State(params, opt_state, jnp.zeros((), jnp.int32), minus_one, minus_one)


def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(tree)]))


def stopped(state):
    """Whether a run has stopped: converged (with a tolerance) or diverged  [] bool."""
    return (state.converged_at >= 0) | (state.diverged_at >= 0)


def gd_steps(model, sizes, state, hyper, num, opt_name="gd", check=False, tol=None, unroll=4):
    """`num` optimiser steps as one `lax.scan` (with a tolerance, a `lax.while_loop`).

    check=True also evaluates the objective at every step and notes in `diverged_at` the first step
    whose objective, or whose update, is non-finite (used only to replay a diverged interval).
    tol (a float): at every step, stop once ‖∇f‖/max(|f|, floor) ≤ tol or f ≤ hyper['target']
    (when given): the state is then frozen and `converged_at` notes the step; a non-finite
    objective or update stops the run too, noted in `diverged_at`. The loop ends after `num` steps
    or once the run has stopped (under vmap: once every run has; the others stay frozen).
    """
    m = method(model, sizes, hyper, opt_name)
    if tol is None:
        def step(s, _):
            params, opt_state, value, grads = m.step(s.params, s.opt_state, check)
            diverged_at = s.diverged_at
            if check:
                bad = (diverged_at < 0) & ~(jnp.isfinite(value) & _all_finite(params))
                diverged_at = jnp.where(bad, s.step, diverged_at)
            return State(params, opt_state, s.step + 1, diverged_at, s.converged_at), None

        if opt_name == "lbfgs":  # a large body (the line search): unrolling only slows compiling
            unroll = 1
        return jax.lax.scan(step, state, None, length=num, unroll=min(unroll, num))[0]

    target = hyper.get("target")

    def body(carry):
        i, s = carry
        params, opt_state, value, grads = m.step(s.params, s.opt_state, True)
        met = relative_gradient(model, sizes, s.params, value, grads, hyper) <= tol
        if target is not None:
            met = met | (value <= target)
        met = jnp.isfinite(value) & met
        bad = ~met & ~(jnp.isfinite(value) & _all_finite(params))
        params, opt_state = jax.tree.map(lambda old, new: jnp.where(met, old, new),
                                         (s.params, s.opt_state), (params, opt_state))
        return i + 1, State(params, opt_state, s.step + jnp.where(met, 0, 1).astype(s.step.dtype),
                            jnp.where(bad, s.step, s.diverged_at),
                            jnp.where(met, s.step, s.converged_at))

    def cond(carry):
        i, s = carry
        return (i < num) & ~stopped(s)

    return jax.lax.while_loop(cond, body, (0, state))[1]


def advance(model, sizes, state, hyper, num, opt_name="gd", tol=None):
    """`num` steps with divergence detection at no per-step cost.

    Non-finite parameters stay non-finite under these optimisers (inf − x is inf or NaN), so a
    finiteness check of the parameters and the objective after the block finds whether it
    diverged; only then is the block replayed with per-step checks to find the exact step (or, if
    every step's objective and update were finite, the step after the block, whose objective is
    the first non-finite one). With a tolerance, and for L-BFGS, whose line search evaluates the
    objective anyway, every step is checked as it runs.
    """
    if tol is not None:
        return gd_steps(model, sizes, state, hyper, num, opt_name, tol=tol)
    if opt_name == "lbfgs":  # its line search evaluates f at every step: check it there
        new = gd_steps(model, sizes, state, hyper, num, opt_name, check=True)
        end_bad = (new.diverged_at < 0) & ~jnp.isfinite(optax.tree.get(new.opt_state, "value"))
        return new._replace(diverged_at=jnp.where(end_bad, new.step, new.diverged_at))
    new = gd_steps(model, sizes, state, hyper, num, opt_name)
    end_value = model.objective(new.params, hyper, sizes)
    fresh = (state.diverged_at < 0) & ~(_all_finite(new.params) & jnp.isfinite(end_value))

    def replay(s, h):
        first = gd_steps(model, sizes, s, h, num, opt_name, check=True).diverged_at
        return jnp.where(first < 0, s.step + num, first)

    return new._replace(diverged_at=_replay_where(replay)(fresh, state, hyper))


def _replay_where(replay):
    """f(fresh, state, hyper) -> replay(state, hyper) where `fresh`, else state.diverged_at.

    Under vmap a `lax.cond` on a batched predicate becomes a select that runs both branches, i.e.
    the replay on every interval. The custom batching rule keeps one real `cond` on any(fresh)
    instead, recursively for nested vmaps (restarts inside a grid).
    """
    @jax.custom_batching.custom_vmap
    def where_fresh(fresh, state, hyper):
        return jax.lax.cond(jnp.any(fresh),
                            lambda: jnp.where(fresh, replay(state, hyper), state.diverged_at),
                            lambda: state.diverged_at)

    @where_fresh.def_vmap
    def batched(axis_size, in_batched, fresh, state, hyper):
        def lift(x, b):
            return x if b else jnp.broadcast_to(x, (axis_size,) + jnp.shape(x))

        args = jax.tree.map(lift, (fresh, state, hyper), tuple(in_batched))
        return _replay_where(jax.vmap(replay))(*args), True

    return where_fresh


def logged_steps(model, sizes, state, hyper, intervals, log_every, opt_name="gd", tol=None):
    """`intervals` × `log_every` steps, recording after each interval  [intervals].

    Without a tolerance a nested scan. With one a `while_loop` over intervals that ends as soon
    as the run has stopped (under vmap: once every run has); the records of intervals it did not
    run keep step −1 (and NaN values).
    """
    if tol is None:
        def interval(s, _):
            s = advance(model, sizes, s, hyper, log_every, opt_name)
            return s, (s.step, record(model, sizes, s.params, hyper))

        return jax.lax.scan(interval, state, None, length=intervals)

    shapes = jax.eval_shape(lambda p: record(model, sizes, p, hyper), state.params)
    hist = jax.tree.map(lambda v: jnp.full((intervals,) + v.shape, _missing(v.dtype), v.dtype),
                        shapes)
    steps_log = -jnp.ones((intervals,), state.step.dtype)

    def body(carry):
        i, s, steps_log, hist = carry
        s = advance(model, sizes, s, hyper, log_every, opt_name, tol)
        rec = record(model, sizes, s.params, hyper)
        hist = jax.tree.map(lambda h, v: h.at[i].set(v), hist, rec)
        return i + 1, s, steps_log.at[i].set(s.step), hist

    def cond(carry):
        i, s = carry[0], carry[1]
        return (i < intervals) & ~stopped(s)

    _, state, steps_log, hist = jax.lax.while_loop(cond, body, (0, state, steps_log, hist))
    return state, (steps_log, hist)


def _missing(dtype):
    """The fill of a record not made: NaN, or −1 for integer measurements (ranks)."""
    return -1 if jnp.issubdtype(dtype, jnp.integer) else jnp.nan


def _tail(model, sizes, state, hyper, num, opt_name, tol):
    """The last `num` (< log_every) steps and their record; step −1 if the run had stopped."""
    was = stopped(state) if tol is not None else False
    state = advance(model, sizes, state, hyper, num, opt_name, tol)
    return state, jnp.where(was, -1, state.step), record(model, sizes, state.params, hyper)


def simulate(model, sizes, key, hyper, steps, log_every, opt_name="gd", tol=None):
    """A whole run for one configuration: init, `steps` steps (a cap, with a tolerance), records
    every `log_every` steps, and the certificate at the end.

    Pure and traceable: jit it, vmap it over keys (restarts) or over stacked hyper (grids).
    """
    check_simulation(model, sizes, hyper, steps, log_every, opt_name)
    state = init_state(model, sizes, key, hyper, opt_name)
    first = (state.step[None], jax.tree.map(lambda v: v[None], record(model, sizes, state.params, hyper)))
    state, (steps_log, hist) = logged_steps(model, sizes, state, hyper, steps // log_every,
                                            log_every, opt_name, tol)
    parts = [first, (steps_log, hist)]
    if steps % log_every:
        state, at, last = _tail(model, sizes, state, hyper, steps % log_every, opt_name, tol)
        parts.append((at[None], jax.tree.map(lambda v: v[None], last)))
    step_arr = jnp.concatenate([p[0] for p in parts])
    history = jax.tree.map(lambda *xs: jnp.concatenate(xs), *[p[1] for p in parts])
    return Trajectory(state.params, step_arr, history, state.diverged_at, state.converged_at,
                      certify(model, sizes, state.params, hyper))


def trim(traj):
    """A single run's Trajectory without the records marked −1 (intervals after it stopped)."""
    keep = np.asarray(traj.steps) >= 0
    if keep.all():
        return traj
    return traj._replace(steps=np.asarray(traj.steps)[keep],
                         history={k: np.asarray(v)[keep] for k, v in traj.history.items()})


def as_hyper(values, dtype=None):
    """A (nested) dict of Python floats as scalar arrays in the default float dtype."""
    dtype = dtype or jnp.result_type(float)
    return jax.tree.map(lambda v: jnp.asarray(v, dtype), values)


@functools.lru_cache(maxsize=None)
def compiled_simulation(model, sizes, steps, log_every, opt_name="gd", restarts=1, tol=None):
    """jit(simulate) for fixed static sizes; with restarts > 1, vmapped over R PRNG keys.

    Cached: the same (model, sizes, steps, log_every, optimiser, tol) reuse one compiled program,
    and a new `hyper` value never retraces.
    """
    run = functools.partial(simulate, model, sizes, steps=steps, log_every=log_every,
                            opt_name=opt_name, tol=tol)
    if restarts == 1:
        return jax.jit(run)
    return jax.jit(lambda key, hyper: jax.vmap(run, in_axes=(0, None))(
        jax.random.split(key, restarts), hyper))


@functools.lru_cache(maxsize=None)
def _compiled_pieces(model, sizes, log_every, opt_name, batched, tol):
    def start(key, hyper):
        s = init_state(model, sizes, key, hyper, opt_name)
        return s, record(model, sizes, s.params, hyper)

    def chunk(s, hyper, intervals):
        return logged_steps(model, sizes, s, hyper, intervals, log_every, opt_name, tol)

    def tail(s, hyper, num):
        return _tail(model, sizes, s, hyper, num, opt_name, tol)

    def finish(s, hyper):
        return certify(model, sizes, s.params, hyper)

    if batched:  # one leading axis on keys, state and every hyper leaf
        start, finish = jax.vmap(start), jax.vmap(finish)
        chunk, tail = jax.vmap(chunk, (0, 0, None)), jax.vmap(tail, (0, 0, None))
    return (jax.jit(start), jax.jit(chunk, static_argnums=2), jax.jit(tail, static_argnums=2),
            jax.jit(finish))


def simulate_with_progress(model, sizes, key, hyper, steps, log_every, opt_name="gd",
                           progress=None, chunks=20, batched=False, tol=None):
    """Same result as `simulate`, run as compiled chunks of the outer loop with
    `progress(steps_done)` called between them (never a per-step host callback); with a tolerance
    it stops after the chunk in which every run has stopped.

    batched=True: `key` is [B, 2] and every leaf of `hyper` is [B] (B configurations or restarts
    run together under vmap); the Trajectory then has a leading axis B.
    """
    start, chunk, tail, finish = _compiled_pieces(model, sizes, log_every, opt_name, batched, tol)
    ax = 1 if batched else 0  # the time axis of records
    expand = lambda v: np.expand_dims(np.asarray(v), ax)
    state, rec = start(key, hyper)
    steps_log = [expand(state.step)]
    hist = [jax.tree.map(expand, rec)]
    intervals = steps // log_every
    per_chunk = _divisor_near(intervals, max(1, intervals // chunks))
    done = 0
    for _ in range(intervals // per_chunk if intervals else 0):
        state, (s_log, h) = chunk(state, hyper, per_chunk)
        done += per_chunk * log_every
        steps_log.append(np.asarray(s_log))
        hist.append(jax.tree.map(np.asarray, h))  # [intervals], or [B, intervals] under vmap
        if progress:
            progress(done)
        if tol is not None and bool(np.all(np.asarray(stopped(state)))):
            break
    else:
        if steps % log_every:
            state, at, rec = tail(state, hyper, steps % log_every)
            steps_log.append(expand(at))
            hist.append(jax.tree.map(expand, rec))
    if progress:
        progress(steps)
    history = jax.tree.map(lambda *xs: np.concatenate(xs, axis=ax), *hist)
    return Trajectory(state.params, np.concatenate(steps_log, axis=ax), history,
                      state.diverged_at, state.converged_at, finish(state, hyper))


def broadcast_hyper(hyper, B):
    """Every (scalar) leaf of `hyper` broadcast to a leading axis of length B."""
    return jax.tree.map(lambda v: jnp.broadcast_to(jnp.asarray(v), (B,)), hyper)


def _divisor_near(n, target):
    """The largest divisor of n not above target (so every chunk has the same compiled size)."""
    for m in range(min(target, n), 0, -1):
        if n % m == 0:
            return m
    return 1


def best_restart(trajs):
    """Index of the restart with the lowest final objective (non-finite counts as +inf)."""
    final = np.asarray(final_objectives(trajs), dtype=np.float64)
    return int(np.argmin(np.where(np.isfinite(final), final, np.inf)))


def final_objectives(trajs):
    """The last recorded objective of every restart  [R] (records after a stop are skipped)."""
    steps = np.asarray(trajs.steps)
    last = np.argmax(np.where(steps >= 0, np.arange(steps.shape[-1]), -1), axis=-1)
    return np.take_along_axis(np.asarray(trajs.history["objective"]), last[:, None], 1)[:, 0]


def pick(trajs, index):
    """Restart `index` of a vmapped Trajectory."""
    return jax.tree.map(lambda v: v[index], trajs)



class Sessions(NamedTuple):
    """Class-incremental sessions (`simulate_sessions`): what each session ended with."""

    groups: tuple  # the classes of each session
    features: np.ndarray  # H at the end of each session  [T, d, N]
    records: list  # the measurements at the end of each session (dicts of floats)
    ends: list  # the global step at which each session ended


def session_hyper(hyper, sizes, group, anchor=None, distill=0.0):
    """hyper for one session: only `group`'s samples active, its classes in the softmax mask, and
    with distill > 0 the features tied to `anchor` (their values when the session starts)."""
    from ufm.metrics import class_labels

    dtype = jnp.result_type(float)
    labels = class_labels(sizes.counts, sizes.N)
    h = dict(hyper, active=jnp.asarray(np.isin(labels, group), dtype),
             logit_mask=jnp.asarray(np.isin(np.arange(sizes.K), group), dtype))
    if distill > 0:
        h.update(anchor=anchor, distill=jnp.asarray(distill, dtype))
    return h


def _fresh_optimiser(model, sizes, state, hyper, opt_name):
    """A session starts with the optimiser state of step 0 (no momentum carried over)."""
    return state._replace(opt_state=method(model, sizes, hyper, opt_name).init(state.params))


def _start_sessions(model, sizes, key, hyper, first_group, opt_name, distill):
    """The initial state, projected onto the first session's constraint set, and that session's
    hyper (its anchor the features before the projection)."""
    state = init_state(model, sizes, key, hyper, opt_name)
    h = session_hyper(hyper, sizes, first_group, state.params["H"], distill)
    return state._replace(params=model.project(state.params, h, sizes)), h


def sessions_final(model, sizes, key, hyper, groups, steps, opt_name="gd", distill=0.0):
    """`simulate_sessions` without records, pure and traceable (for grids): the final state, the
    measurements at the end of the last session and its certificate (see `certify`)."""
    state, h = _start_sessions(model, sizes, key, hyper, groups[0], opt_name, distill)
    for group in groups:  # over sessions (static, few), each one scan
        h = session_hyper(hyper, sizes, group, state.params["H"], distill)
        state = advance(model, sizes, _fresh_optimiser(model, sizes, state, h, opt_name), h, steps,
                        opt_name)
    return state, record(model, sizes, state.params, h), certify(model, sizes, state.params, h)


@functools.lru_cache(maxsize=None)
def _compiled_session(model, sizes, steps, log_every, opt_name):
    def run(state, hyper):
        state = _fresh_optimiser(model, sizes, state, hyper, opt_name)
        state, (steps_log, hist) = logged_steps(model, sizes, state, hyper, steps // log_every,
                                                log_every, opt_name)
        if steps % log_every:
            state = advance(model, sizes, state, hyper, steps % log_every, opt_name)
            last = record(model, sizes, state.params, hyper)
            steps_log = jnp.concatenate([steps_log, state.step[None]])
            hist = jax.tree.map(lambda h, v: jnp.concatenate([h, v[None]]), hist, last)
        return state, steps_log, hist

    return jax.jit(run)


def simulate_sessions(model, sizes, key, hyper, groups, steps, log_every, opt_name="gd",
                      distill=0.0, progress=None):
    """Class-incremental training (Yang et al.'s Neural Collapse Terminus, seed 000): session t
    runs `steps` optimiser steps on the features of the classes in groups[t] only (the others
    frozen: their loss is not counted), with the classifier fixed throughout.

    Each session is one compiled scan (the same program for every session: the masks are
    arrays); the Python loop is over sessions. Returns (Trajectory over all sessions, Sessions).
    """
    state, first = jax.jit(functools.partial(_start_sessions, model, sizes, opt_name=opt_name,
                                             distill=distill, first_group=groups[0]))(key, hyper)
    run = _compiled_session(model, sizes, steps, log_every, opt_name)
    steps_log = [np.zeros(1, np.int64)]
    hist = [jax.tree.map(lambda v: np.asarray(v)[None], jax.jit(functools.partial(
        record, model, sizes))(state.params, first))]
    features, records, ends = [], [], []
    for t, group in enumerate(groups):
        h = session_hyper(hyper, sizes, group, state.params["H"], distill)
        state, s_log, s_hist = run(state, h)
        steps_log.append(np.asarray(s_log))
        hist.append(jax.tree.map(np.asarray, s_hist))
        features.append(np.asarray(state.params["H"]))
        records.append({k: float(v[-1]) for k, v in s_hist.items()})
        ends.append(int(state.step))
        if progress:
            progress((t + 1) * steps)
    history = jax.tree.map(lambda *xs: np.concatenate(xs), *hist)
    grad_norm = jax.jit(functools.partial(certify, model, sizes))(state.params, h)
    traj = Trajectory(state.params, np.concatenate(steps_log), history, state.diverged_at,
                      state.converged_at, grad_norm)
    return traj, Sessions(tuple(tuple(g) for g in groups), np.stack(features), records, ends)
