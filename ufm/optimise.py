"""Gradient descent on a UFM as one jit-compiled program (nested `lax.scan`).

The outer scan runs one logging interval per iteration, the inner scan `log_every` gradient steps;
the objective and every measurement are recorded at step 0, after each interval and at the end.
A configuration is `hyper`: a dict of scalar leaves (the model's λ's, `lr`, `init_scale`), so a new
value never recompiles and `vmap` over stacked dicts runs a grid.
"""
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

OPTIMIZERS = ("gd", "momentum", "adam")


class State(NamedTuple):
    params: Any  # dict of arrays (model-specific blocks)
    opt_state: Any
    step: jax.Array  # [] int: gradient steps taken
    diverged_at: jax.Array  # [] int: first step whose objective was non-finite, −1 if none


class Trajectory(NamedTuple):
    params: Any  # final parameters
    steps: jax.Array  # [T] step of each record
    history: dict  # name -> [T]; 'objective' and every measurement of the model
    diverged_at: jax.Array  # [] int, −1 if the run stayed finite


def optimizer(name, lr):
    """Plain GD (`gd`), heavy-ball momentum 0.9 (`momentum`) or Adam (`adam`), with step size lr."""
    if name == "gd":
        return optax.sgd(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=0.9)
    if name == "adam":
        return optax.adam(lr)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def record(model, sizes, params, hyper):
    """The objective and the model's measurements at `params` (a dict of scalars)."""
    out = {"objective": model.objective(params, hyper, sizes)}
    out.update(model.measure(params, sizes, hyper))
    return out


def init_state(model, sizes, key, hyper, opt_name="gd"):
    """Gaussian initialisation with std hyper['init_scale'] (a scalar or a dict per block)."""
    params = model.init(key, sizes, hyper["init_scale"])
    if model.project is not None:  # start feasible
        params = model.project(params, hyper, sizes)
    opt_state = optimizer(opt_name, hyper["lr"]).init(params)
    return State(params, opt_state, jnp.zeros((), jnp.int32), -jnp.ones((), jnp.int32))


def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(tree)]))


def gd_steps(model, sizes, state, hyper, num, opt_name="gd", check=False, unroll=4):
    """`num` optimiser steps as one `lax.scan`.

    check=True also evaluates the objective at every step and notes in `diverged_at` the first step
    whose objective, or whose update, is non-finite (used only to replay a diverged interval).
    """
    opt = optimizer(opt_name, hyper["lr"])

    def step(s, _):
        if check:
            loss, grads = jax.value_and_grad(model.objective)(s.params, hyper, sizes)
        else:
            grads = jax.grad(model.objective)(s.params, hyper, sizes)
        updates, opt_state = opt.update(grads, s.opt_state, s.params)
        params = optax.apply_updates(s.params, updates)
        if model.project is not None:  # projected gradient descent onto the constraint set
            params = model.project(params, hyper, sizes)
        diverged_at = s.diverged_at
        if check:
            bad = (diverged_at < 0) & ~(jnp.isfinite(loss) & _all_finite(params))
            diverged_at = jnp.where(bad, s.step, diverged_at)
        return State(params, opt_state, s.step + 1, diverged_at), None

    return jax.lax.scan(step, state, None, length=num, unroll=min(unroll, num))[0]


def advance(model, sizes, state, hyper, num, opt_name="gd"):
    """`num` steps with divergence detection at no per-step cost.

    Non-finite parameters stay non-finite under these optimisers (inf − x is inf or NaN), so a
    finiteness check after the block finds whether it diverged; only then is the block replayed
    with per-step checks to find the exact step.
    """
    new = gd_steps(model, sizes, state, hyper, num, opt_name)
    fresh = (state.diverged_at < 0) & ~_all_finite(new.params)
    replay = lambda s, h: gd_steps(model, sizes, s, h, num, opt_name, check=True).diverged_at
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


def logged_steps(model, sizes, state, hyper, intervals, log_every, opt_name="gd"):
    """`intervals` × `log_every` steps (nested scan), recording after each interval  [intervals]."""

    def interval(s, _):
        s = advance(model, sizes, s, hyper, log_every, opt_name)
        return s, (s.step, record(model, sizes, s.params, hyper))

    return jax.lax.scan(interval, state, None, length=intervals)


def simulate(model, sizes, key, hyper, steps, log_every, opt_name="gd"):
    """A whole run for one configuration: init, `steps` steps, records every `log_every` steps.

    Pure and traceable: jit it, vmap it over keys (restarts) or over stacked hyper (grids).
    """
    state = init_state(model, sizes, key, hyper, opt_name)
    first = (state.step[None], jax.tree.map(lambda v: v[None], record(model, sizes, state.params, hyper)))
    state, (steps_log, hist) = logged_steps(model, sizes, state, hyper, steps // log_every,
                                            log_every, opt_name)
    parts = [first, (steps_log, hist)]
    if steps % log_every:
        state = advance(model, sizes, state, hyper, steps % log_every, opt_name)
        last = record(model, sizes, state.params, hyper)
        parts.append((state.step[None], jax.tree.map(lambda v: v[None], last)))
    step_arr = jnp.concatenate([p[0] for p in parts])
    history = jax.tree.map(lambda *xs: jnp.concatenate(xs), *[p[1] for p in parts])
    return Trajectory(state.params, step_arr, history, state.diverged_at)


def as_hyper(values, dtype=None):
    """A (nested) dict of Python floats as scalar arrays in the default float dtype."""
    dtype = dtype or jnp.result_type(float)
    return jax.tree.map(lambda v: jnp.asarray(v, dtype), values)


@functools.lru_cache(maxsize=None)
def compiled_simulation(model, sizes, steps, log_every, opt_name="gd", restarts=1):
    """jit(simulate) for fixed static sizes; with restarts > 1, vmapped over R PRNG keys.

    Cached: the same (model, sizes, steps, log_every, optimiser) reuse one compiled program, and a
    new `hyper` value never retraces.
    """
    run = functools.partial(simulate, model, sizes, steps=steps, log_every=log_every,
                            opt_name=opt_name)
    if restarts == 1:
        return jax.jit(run)
    return jax.jit(lambda key, hyper: jax.vmap(run, in_axes=(0, None))(
        jax.random.split(key, restarts), hyper))


@functools.lru_cache(maxsize=None)
def _compiled_pieces(model, sizes, log_every, opt_name, batched):
    def start(key, hyper):
        s = init_state(model, sizes, key, hyper, opt_name)
        return s, record(model, sizes, s.params, hyper)

    def chunk(s, hyper, intervals):
        return logged_steps(model, sizes, s, hyper, intervals, log_every, opt_name)

    def tail(s, hyper, num):
        s = advance(model, sizes, s, hyper, num, opt_name)
        return s, record(model, sizes, s.params, hyper)

    if batched:  # one leading axis on keys, state and every hyper leaf
        start, chunk, tail = jax.vmap(start), jax.vmap(chunk, (0, 0, None)), jax.vmap(tail, (0, 0, None))
    return jax.jit(start), jax.jit(chunk, static_argnums=2), jax.jit(tail, static_argnums=2)


def simulate_with_progress(model, sizes, key, hyper, steps, log_every, opt_name="gd",
                           progress=None, chunks=20, batched=False):
    """Same result as `simulate`, run as compiled chunks of the scan with `progress(steps_done)`
    called between them (never a per-step host callback).

    batched=True: `key` is [B, 2] and every leaf of `hyper` is [B] (B configurations or restarts
    run together under vmap); the Trajectory then has a leading axis B.
    """
    start, chunk, tail = _compiled_pieces(model, sizes, log_every, opt_name, batched)
    ax = 1 if batched else 0  # the time axis of records
    expand = lambda v: np.expand_dims(np.asarray(v), ax)
    state, rec = start(key, hyper)
    steps_log = [np.zeros(1, np.int32)]
    hist = [jax.tree.map(expand, rec)]
    intervals = steps // log_every
    per_chunk = _divisor_near(intervals, max(1, intervals // chunks))
    done = 0
    for _ in range(intervals // per_chunk if intervals else 0):
        state, (s_log, h) = chunk(state, hyper, per_chunk)
        done += per_chunk * log_every
        steps_log.append(np.arange(done - (per_chunk - 1) * log_every, done + 1, log_every))
        hist.append(jax.tree.map(np.asarray, h))  # [intervals], or [B, intervals] under vmap
        if progress:
            progress(done)
    if steps % log_every:
        state, rec = tail(state, hyper, steps % log_every)
        steps_log.append(np.array([steps]))
        hist.append(jax.tree.map(expand, rec))
        if progress:
            progress(steps)
    history = jax.tree.map(lambda *xs: np.concatenate(xs, axis=ax), *hist)
    steps_arr = np.concatenate(steps_log)
    if batched:  # as under vmap: a leading axis on every leaf
        steps_arr = np.broadcast_to(steps_arr, (np.shape(state.step)[0],) + steps_arr.shape)
    return Trajectory(state.params, steps_arr, history, state.diverged_at)


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
    final = np.asarray(trajs.history["objective"][:, -1], dtype=np.float64)
    return int(np.argmin(np.where(np.isfinite(final), final, np.inf)))


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


def _fresh_optimiser(state, hyper, opt_name):
    """A session starts with the optimiser state of step 0 (no momentum carried over)."""
    return state._replace(opt_state=optimizer(opt_name, hyper["lr"]).init(state.params))


def _start_sessions(model, sizes, key, hyper, first_group, opt_name, distill):
    """The initial state, projected onto the first session's constraint set, and that session's
    hyper (its anchor the features before the projection)."""
    state = init_state(model, sizes, key, hyper, opt_name)
    h = session_hyper(hyper, sizes, first_group, state.params["H"], distill)
    return state._replace(params=model.project(state.params, h, sizes)), h


def sessions_final(model, sizes, key, hyper, groups, steps, opt_name="gd", distill=0.0):
    """`simulate_sessions` without records, pure and traceable (for grids): the final state and
    the measurements at the end of the last session."""
    state, h = _start_sessions(model, sizes, key, hyper, groups[0], opt_name, distill)
    for group in groups:  # over sessions (static, few), each one scan
        h = session_hyper(hyper, sizes, group, state.params["H"], distill)
        state = advance(model, sizes, _fresh_optimiser(state, h, opt_name), h, steps, opt_name)
    return state, record(model, sizes, state.params, h)


@functools.lru_cache(maxsize=None)
def _compiled_session(model, sizes, steps, log_every, opt_name):
    def run(state, hyper):
        state = _fresh_optimiser(state, hyper, opt_name)
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
    traj = Trajectory(state.params, np.concatenate(steps_log), history, state.diverged_at)
    return traj, Sessions(tuple(tuple(g) for g in groups), np.stack(features), records, ends)
