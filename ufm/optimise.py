"""Optimisation of a UFM as one jit-compiled program (nested `lax.scan`, or `lax.while_loop` when a
run stops at a tolerance), driven by one function, `simulate` (docs/architecture.md, "A run").

The outer loop runs one logging interval per iteration, the inner scan `log_every` optimiser steps;
the objective and every measurement are recorded at step 0, after each interval and at the end.
A configuration is `hyper`: a dict of scalar leaves (the model's λ's, `lr`, `init_scale`, and
optionally `target`), so a new value never recompiles and `vmap` over stacked dicts runs a grid.

Optimisers are objects (`Optimizer`, like optax's transformations): plain gradient descent (the
papers' method and the default), heavy-ball momentum, Adam, and L-BFGS with optax's zoom line
search. Every run ends with a convergence certificate: the gradient norm relative to the objective
at the final point. With a tolerance `tol` a run stops once that criterion is met (or the
objective reaches `hyper['target']`); under `vmap` the loop ends when every point has stopped,
and stopped points stay frozen bit for bit.
"""
import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ufm import cache
from ufm.models import models

if cache.wanted(False):  # the caller asked for the cache through UFM_COMPILATION_CACHE=1
    cache.enable_compilation_cache()

OBJECTIVE_FLOOR = 1e-6  # the relative gradient norm is ‖∇f‖ / max(|f|, OBJECTIVE_FLOOR)
RISE_TOL = 1e-3  # a run whose objective ends this much (relative) above its start has blown up


class Method(NamedTuple):
    """An optimiser bound to one objective, as two pure functions.

    init(params) -> opt_state; step(params, opt_state, want_value) -> (params', opt_state', value,
    grads), value and grads taken at `params` (value None when not wanted and not free).
    """

    init: Callable
    step: Callable


class Optimizer(NamedTuple):
    """An optimiser: `bind(model, sizes, hyper, session) -> Method`, and what callers need to know.

    name: its CLI name; step_size: whether it takes `lr`; projected: whether it can keep a
    constrained model's iterates on the constraint set; copies: the parameter-sized arrays it keeps
    besides params, grads and updates (memory estimates); stop_tol: ((dtype, tol), …) at which a
    run stops when no tolerance is given (None: every step runs); unroll: steps unrolled per scan
    iteration; solve: for a solver of its own problem instead of steps on the model's parameters,
    solve(model, sizes, hyper, max_iter, tol) -> (params, iterations, gap) (the convex solver).
    Hashable, so compiled programs are cached per optimiser.
    """

    name: str
    bind: Optional[Callable]
    step_size: bool = True
    projected: bool = True
    copies: int = 0
    stop_tol: Optional[tuple] = None
    unroll: int = 4
    solve: Optional[Callable] = None


def _objective(model, sizes, hyper, session):
    if session is None:
        return lambda p: model.objective(p, hyper, sizes)
    return lambda p: model.objective(p, hyper, sizes, session)


def _project(model, sizes, hyper, session):
    if session is None:
        return lambda p: model.project(p, hyper, sizes)
    return lambda p: model.project(p, hyper, sizes, session)


def first_order(name, make_tx, copies):
    """An Optimizer from an optax transformation `make_tx(lr)`, projected after every step for a
    constrained model (projected gradient descent)."""

    def bind(model, sizes, hyper, session=None):
        objective = _objective(model, sizes, hyper, session)
        tx = make_tx(hyper["lr"])

        def step(params, opt_state, want_value):
            if want_value:
                value, grads = jax.value_and_grad(objective)(params)
            else:
                value, grads = None, jax.grad(objective)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            if model.project is not None:  # projected gradient descent onto the constraint set
                params = _project(model, sizes, hyper, session)(params)
            return params, opt_state, value, grads

        return Method(tx.init, step)

    return Optimizer(name, bind, copies=copies)


def block_scales(params, hyper):
    """1/√λ_X for every block X with a penalty λ_X/2‖X‖² (hyper key `lam_X`, λ_X > 0), else 1."""
    def scale(name):
        lam = hyper.get(f"lam_{name}")
        if lam is None:
            return jnp.ones((), jnp.result_type(float))
        return jnp.where(lam > 0, 1 / jnp.sqrt(jnp.where(lam > 0, lam, 1)), 1)

    return {k: scale(k) for k in params}


def _bind_lbfgs(model, sizes, hyper, session=None):
    """optax's L-BFGS with its zoom line search, run in the variables X' = √λ_X·X.

    The change of variables turns every penalty into ½‖X'‖², so blocks with very different λ's
    are equally scaled (at λ_W = 0.1, λ_H = 1e-5 it cuts the iterations about fivefold); the
    minimiser is the same point. The state holds X'; `step` maps to and from the model's X.
    """
    objective = _objective(model, sizes, hyper, session)
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


GD = first_order("gd", optax.sgd, 0)
MOMENTUM = first_order("momentum", lambda lr: optax.sgd(lr, momentum=0.9), 1)
ADAM = first_order("adam", optax.adam, 2)
# L-BFGS stops at about round-off unless a tol is given (its steps after convergence are failed
# line searches); a large body (the line search): unrolling only slows compiling.
LBFGS = Optimizer("lbfgs", _bind_lbfgs, step_size=False, projected=False, copies=2 * 10 + 4,
                  stop_tol=(("float32", 1e-6), ("float64", 1e-10)), unroll=1)
# The convex solver of the penalised two-factor models (docs/theory.md §5.3): accelerated proximal
# gradient on the reduced K×K problem, stopped by the relative duality gap.
CONVEX = Optimizer("convex", None, step_size=False, projected=True, copies=4,
                   stop_tol=(("float32", 1e-6), ("float64", 1e-12)),
                   solve=lambda model, *args: model.solver(model, *args))
OPTIMIZERS = {o.name: o for o in (GD, MOMENTUM, ADAM, LBFGS, CONVEX)}


def get_optimizer(optimizer, model=None):
    """The Optimizer named `optimizer` (or the object itself); ValueError for an unknown name, or
    for one that cannot run `model` (L-BFGS's line search does not respect a constraint set)."""
    if isinstance(optimizer, Optimizer):
        opt = optimizer
    elif optimizer in OPTIMIZERS:
        opt = OPTIMIZERS[optimizer]
    else:
        raise ValueError(f"optimizer (--optimizer) must be one of {', '.join(OPTIMIZERS)}, "
                         f"got {optimizer!r}")
    if model is not None and opt.solve is not None and model.solver is None:
        takes = [m.name for m in models().values() if m.solver is not None]
        raise ValueError(f"optimizer (--optimizer) {opt.name} solves the convex problem of "
                         f"{', '.join(takes)}; {model.name!r} declares none (its model file gives "
                         f"no solver: no convex reformulation is known for it)")
    if model is not None and model.project is not None and not opt.projected:
        raise ValueError(f"optimizer (--optimizer) {opt.name} is for the unconstrained models; "
                         f"{model.name!r} keeps its features on a constraint set, which "
                         f"{opt.name}'s line search does not respect: use "
                         f"{', '.join(o.name for o in OPTIMIZERS.values() if o.projected)}")
    return opt


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
    bound: Any = None  # the global bound's inputs at the final parameters (model.bound_inputs)


cache.serializable(Trajectory, "ufm.Trajectory")  # a kept `ufm train` program returns one


class Problem(NamedTuple):
    """What one run optimises and how (all static): the model at its sizes, the optimiser, and the
    stopping tolerance (None: every step runs)."""

    model: Any
    sizes: Any
    optimizer: Optimizer
    tol: Optional[float] = None

    def method(self, hyper, session=None):
        return self.optimizer.bind(self.model, self.sizes, hyper, session)


@functools.partial(jax.jit, static_argnums=0)
def record(problem, params, hyper, session=None):
    """The objective and the model's measurements at `params` (a dict of scalars).

    Jitted: a run records at its start, in its loop and after its tail, and a nested jit is
    traced and lowered once for all of them (the measurements are most of a program's size, so
    this is most of the time to first result once the compiled program is cached)."""
    model, sizes = problem.model, problem.sizes
    out = {"objective": _objective(model, sizes, hyper, session)(params)}
    extra = () if session is None else (session,)
    out.update(model.measure(params, hyper, sizes, *extra))
    return out


def gradient_norm(problem, params, grads, hyper, session=None):
    """‖∇f‖ over the free blocks; for a constrained model the norm of the projected-gradient step
    ‖p − Π(p − lr·∇f)‖/lr, which is zero exactly at a constrained stationary point."""
    model = problem.model
    free = [k for k in grads if k not in model.fixed_blocks]
    if model.project is None:
        return optax.tree.norm({k: grads[k] for k in free})
    moved = _project(model, problem.sizes, hyper, session)(
        jax.tree.map(lambda p, g: p - hyper["lr"] * g, params, grads))
    return optax.tree.norm({k: (params[k] - moved[k]) / hyper["lr"] for k in free})


def relative_gradient(problem, params, value, grads, hyper, session=None):
    """The certificate's measure: gradient_norm / max(|f|, OBJECTIVE_FLOOR)."""
    scale = jnp.maximum(jnp.abs(value), OBJECTIVE_FLOOR)
    return gradient_norm(problem, params, grads, hyper, session) / scale


def bound_inputs(problem, params, session=None):
    """The model's global-bound inputs at `params` (computed inside the compiled run, so the
    host gets K²+K numbers, not the parameters' worth of eager operations); {} where the model
    has no bound or sessions run."""
    model = problem.model
    if model.bound_inputs is None or session is not None:
        return {}
    return model.bound_inputs(params, problem.sizes)


def blown_up(steps, objectives):
    """The step at which a run is judged to have blown up, −1 if it has not  [] (or [B]).

    A finite objective can still be an explosion the gradient test cannot see: the relative
    gradient ‖∇f‖/|f| is tiny when |f| is huge (an L-BFGS line search that jumps from 1e-26 to
    1e64). So a run has blown up when its last recorded objective is non-finite, or above its
    first (the initialisation's) by more than RISE_TOL relative, or more than max(|best|,
    OBJECTIVE_FLOOR) above the best it recorded (docs/theory.md §5). The step given is that of the
    first record above the start (or the last record). Records with step −1 (after a stop) are
    ignored. numpy in, numpy out (host records); JAX arrays in, JAX out (inside a program).
    """
    xp = np if isinstance(objectives, np.ndarray) and isinstance(steps, np.ndarray) else jnp
    f = objectives
    valid = steps >= 0
    index = xp.arange(f.shape[-1])
    last = xp.argmax(xp.where(valid, index, -1), axis=-1)[..., None]
    f_last = xp.take_along_axis(f, last, axis=-1)[..., 0]
    f_first = f[..., 0]
    best = xp.min(xp.where(valid & xp.isfinite(f), f, xp.inf), axis=-1)
    with np.errstate(invalid="ignore", over="ignore"):
        ceiling = f_first + RISE_TOL * xp.maximum(xp.abs(f_first), OBJECTIVE_FLOOR)
        bad = (~xp.isfinite(f_last) | (f_last > ceiling)
               | (f_last - best > xp.maximum(xp.abs(best), OBJECTIVE_FLOOR)))
        above = valid & ~(f <= ceiling[..., None])
    first = xp.where(xp.any(above, axis=-1), xp.argmax(above, axis=-1), last[..., 0])
    at = xp.take_along_axis(steps, first[..., None], axis=-1)[..., 0]
    return xp.where(bad, at, -1).astype(steps.dtype)


def with_blow_up(traj):
    """`traj` with `diverged_at` set where `blown_up` finds an explosion the per-step finiteness
    check did not."""
    if traj.history["objective"].shape[-1] == 0:
        return traj
    found = blown_up(traj.steps, traj.history["objective"])
    xp = np if isinstance(found, np.ndarray) else jnp
    return traj._replace(diverged_at=xp.where(traj.diverged_at >= 0, traj.diverged_at, found))


def certify(problem, params, hyper, session=None):
    """relative_gradient at `params` (one objective-and-gradient evaluation)  []."""
    value, grads = jax.value_and_grad(_objective(problem.model, problem.sizes, hyper, session))(
        params)
    return jnp.where(jnp.isfinite(value),
                     relative_gradient(problem, params, value, grads, hyper, session), jnp.inf)


def check_simulation(model, sizes, hyper, steps, log_every):
    """ValueError for what `simulate` cannot run (checked while tracing: all of it is static)."""
    if not all(hasattr(model, a) for a in ("init", "objective", "measure", "hyper_names")):
        raise ValueError(f"model must be a ufm Model (see ufm.get_model), got {model!r}")
    if not all(hasattr(sizes, a) for a in ("K", "n", "d", "N")):
        raise ValueError(f"sizes must be ufm.models.Sizes(K, n, d), got {sizes!r}")
    for name, value in (("K", sizes.K), ("d", sizes.d), ("steps", steps),
                        ("log_every", log_every)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if sizes.K < model.min_K:
        raise ValueError(f"K must be >= {model.min_K}, got {sizes.K}")
    if not isinstance(hyper, dict):
        raise ValueError(f"hyper must be a dict of the model's λ's, lr and init_scale, got "
                         f"{type(hyper).__name__}")
    missing = [k for k in (*model.hyper_names, "lr", "init_scale") if k not in hyper]
    if missing:
        raise ValueError(f"hyper lacks {missing} (needed by {model.name}: "
                         f"{list(model.hyper_names) + ['lr', 'init_scale']})")


def start_state(params, step=0):
    """A State that starts at `params` (step `step`, not stopped, not diverged), its optimiser
    state left for `simulate(…, start=…)` to make fresh: a run continued or started from given
    parameters."""
    minus_one = -jnp.ones((), jnp.int32)
    return State(params, None, jnp.asarray(step, jnp.int32), minus_one, minus_one)


def init_state(problem, key, hyper):
    """Gaussian initialisation with std hyper['init_scale'] (a scalar or a dict per block),
    projected onto the constraint set of a constrained model."""
    model = problem.model
    params = model.init(key, hyper, problem.sizes)
    if model.project is not None:  # start feasible
        params = model.project(params, hyper, problem.sizes)
    minus_one = -jnp.ones((), jnp.int32)
    return State(params, problem.method(hyper).init(params), jnp.zeros((), jnp.int32), minus_one,
                 minus_one)


def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(tree)]))


def stopped(state):
    """Whether a run has stopped: converged (with a tolerance) or diverged  [] bool."""
    return (state.converged_at >= 0) | (state.diverged_at >= 0)


def gd_steps(problem, state, hyper, num, check=False, session=None):
    """`num` optimiser steps as one `lax.scan` (with a tolerance, a `lax.while_loop`).

    check=True also evaluates the objective at every step and notes in `diverged_at` the first step
    whose objective, or whose update, is non-finite (used only to replay a diverged interval).
    With problem.tol: at every step, stop once ‖∇f‖/max(|f|, floor) ≤ tol or f ≤ hyper['target']
    (when given): the state is then frozen and `converged_at` notes the step; a non-finite
    objective or update stops the run too, noted in `diverged_at`. The loop ends after `num` steps
    or once the run has stopped (under vmap: once every run has; the others stay frozen).
    """
    m = problem.method(hyper, session)
    if problem.tol is None:
        def step(s, _):
            params, opt_state, value, grads = m.step(s.params, s.opt_state, check)
            diverged_at = s.diverged_at
            if check:
                bad = (diverged_at < 0) & ~(jnp.isfinite(value) & _all_finite(params))
                diverged_at = jnp.where(bad, s.step, diverged_at)
            return State(params, opt_state, s.step + 1, diverged_at, s.converged_at), None

        unroll = min(problem.optimizer.unroll, num)
        return jax.lax.scan(step, state, None, length=num, unroll=unroll)[0]

    target = hyper.get("target")

    def body(carry):
        i, s = carry
        params, opt_state, value, grads = m.step(s.params, s.opt_state, True)
        met = relative_gradient(problem, s.params, value, grads, hyper, session) <= problem.tol
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


def advance(problem, state, hyper, num, session=None):
    """`num` steps with divergence detection at no per-step cost.

    Non-finite parameters stay non-finite under these optimisers (inf − x is inf or NaN), so a
    finiteness check of the parameters and the objective after the block finds whether it
    diverged; only then is the block replayed with per-step checks to find the exact step (or, if
    every step's objective and update were finite, the step after the block, whose objective is
    the first non-finite one). With a tolerance, and for an optimiser that does not take a step
    size (L-BFGS, whose line search evaluates the objective anyway), every step is checked as it
    runs.
    """
    if problem.tol is not None:
        return gd_steps(problem, state, hyper, num, session=session)
    if not problem.optimizer.step_size:  # its line search evaluates f at every step: check it
        new = gd_steps(problem, state, hyper, num, check=True, session=session)
        end_bad = (new.diverged_at < 0) & ~jnp.isfinite(optax.tree.get(new.opt_state, "value"))
        return new._replace(diverged_at=jnp.where(end_bad, new.step, new.diverged_at))
    new = gd_steps(problem, state, hyper, num, session=session)
    end_value = _objective(problem.model, problem.sizes, hyper, session)(new.params)
    fresh = (state.diverged_at < 0) & ~(_all_finite(new.params) & jnp.isfinite(end_value))

    def replay(s, h, sess):
        first = gd_steps(problem, s, h, num, check=True, session=sess).diverged_at
        return jnp.where(first < 0, s.step + num, first)

    return new._replace(diverged_at=_replay_where(replay)(fresh, state, hyper, session))


def _replay_where(replay):
    """f(fresh, state, hyper, session) -> replay(state, hyper, session) where `fresh`, else
    state.diverged_at.

    Under vmap a `lax.cond` on a batched predicate becomes a select that runs both branches, i.e.
    the replay on every interval. The custom batching rule keeps one real `cond` on any(fresh)
    instead, recursively for nested vmaps (restarts inside a grid).
    """
    @jax.custom_batching.custom_vmap
    def where_fresh(fresh, state, hyper, session):
        return jax.lax.cond(jnp.any(fresh),
                            lambda: jnp.where(fresh, replay(state, hyper, session),
                                              state.diverged_at),
                            lambda: state.diverged_at)

    @where_fresh.def_vmap
    def batched(axis_size, in_batched, fresh, state, hyper, session):
        def lift(x, b):
            return x if b else jnp.broadcast_to(x, (axis_size,) + jnp.shape(x))

        args = jax.tree.map(lift, (fresh, state, hyper, session), tuple(in_batched))
        return _replay_where(jax.vmap(replay))(*args), True

    return where_fresh


def _recorded_steps(problem, state, hyper, counts, session=None):
    """Steps in blocks of `counts` (a static list; 0: none), recording after each block
    [len(counts)]: one loop whose body runs the block's steps (a `lax.switch` among the distinct
    counts) and then the record, so the measurements appear once in the program — a run's start
    (a block of 0), its intervals and its tail share them (each copy of the measurements is about
    a third of a run's compile time).

    Without a tolerance a scan. With one a `while_loop` that ends once the run has stopped (under
    vmap: once every run has; the others stay frozen) after recording the block it stopped in; the
    blocks it did not run keep step −1 (and NaN values). A block of 0 steps (the start) is
    recorded even for a run that has already stopped."""
    distinct = sorted(set(counts))
    which = np.array([distinct.index(c) for c in counts], np.int32)
    blocks = [(lambda s, c=c: advance(problem, s, hyper, c, session) if c else s)
              for c in distinct]

    def run(s, i):
        s = blocks[0](s) if len(blocks) == 1 else jax.lax.switch(i, blocks, s)
        return s, (s.step, record(problem, s.params, hyper, session))

    if problem.tol is None:
        return jax.lax.scan(run, state, which)
    shapes = jax.eval_shape(lambda p: record(problem, p, hyper, session), state.params)
    hist = jax.tree.map(lambda v: jnp.full((len(counts),) + v.shape, _missing(v.dtype), v.dtype),
                        shapes)
    steps_log = -jnp.ones((len(counts),), state.step.dtype)
    if not counts:  # no blocks: nothing to loop over
        return state, (steps_log, hist)
    which, none = jnp.asarray(which), jnp.asarray(np.array(counts) == 0)

    def body(carry):
        j, s, steps_log, hist = carry
        s, (at, rec) = run(s, which[j])
        hist = jax.tree.map(lambda h, v: h.at[j].set(v), hist, rec)
        return j + 1, s, steps_log.at[j].set(at), hist

    def cond(carry):
        j, s = carry[0], carry[1]
        return (j < len(counts)) & (none[jnp.minimum(j, len(counts) - 1)] | ~stopped(s))

    _, state, steps_log, hist = jax.lax.while_loop(cond, body, (0, state, steps_log, hist))
    return state, (steps_log, hist)


def _missing(dtype):
    """The fill of a record not made: NaN, or −1 for integer measurements (ranks)."""
    return -1 if jnp.issubdtype(dtype, jnp.integer) else jnp.nan


# --- the driver -------------------------------------------------------------------------------

class _Pieces(NamedTuple):
    """The parts of a run: start (init or continue, first record), `chunk` of logging intervals,
    the `tail` of steps % log_every, and `finish` (the certificate), compiled one by one for
    `simulate` with a callback between chunks (its traceable path is one loop of blocks:
    `_recorded_steps`)."""

    start: Callable  # (key, hyper, session, start) -> (state, first record)
    chunk: Callable  # (state, hyper, session, intervals) -> (state, (steps [I], history [I]))
    tail: Callable  # (state, hyper, session, num) -> (state, step, record)
    finish: Callable  # (state, hyper, session) -> (grad_norm, bound inputs)


def _first_state(problem, key, hyper, session, begin):
    if begin is None:
        return init_state(problem, key, hyper)
    # continue from `begin` (its params, step and flags) with a fresh optimiser state
    return begin._replace(opt_state=problem.method(hyper, session).init(begin.params))


def _finish(problem, state, hyper, session):
    """A run's certificate and global-bound inputs at its final state."""
    return (certify(problem, state.params, hyper, session),
            bound_inputs(problem, state.params, session))


def _pieces(problem, log_every):
    def start(key, hyper, session, begin):
        state = _first_state(problem, key, hyper, session, begin)
        return state, record(problem, state.params, hyper, session)

    def chunk(state, hyper, session, intervals):
        return _recorded_steps(problem, state, hyper, [log_every] * intervals, session)

    def tail(state, hyper, session, num):
        """The last `num` (< log_every) steps and their record; step −1 if the run had stopped."""
        was = stopped(state) if problem.tol is not None else False
        state = advance(problem, state, hyper, num, session)
        return state, jnp.where(was, -1, state.step), record(problem, state.params, hyper, session)

    def finish(state, hyper, session):
        return _finish(problem, state, hyper, session)

    return _Pieces(start, chunk, tail, finish)


@functools.lru_cache(maxsize=None)
def _compiled_pieces(problem, log_every, batched):
    p = _pieces(problem, log_every)
    start, chunk, tail, finish = p
    if batched:  # one leading axis on keys, state and every hyper leaf (not on the session)
        start = jax.vmap(start, (0, 0, None, None))
        chunk, tail = jax.vmap(chunk, (0, 0, None, None)), jax.vmap(tail, (0, 0, None, None))
        finish = jax.vmap(finish, (0, 0, None))
    return _Pieces(jax.jit(start), jax.jit(chunk, static_argnums=3),
                   jax.jit(tail, static_argnums=3), jax.jit(finish))


def simulate(model, sizes, key, hyper, steps, log_every, optimizer="gd", tol=None, *,
             session=None, start=None, record_start=True, callback=None, chunks=20,
             batched=False):
    """A whole run for one configuration: init (or continue from `start`), `steps` steps (a cap,
    with a tolerance), records every `log_every` steps, and the certificate at the end.

    How it runs is one of EXECUTION_MODES, chosen by `execution_mode` from the arguments.
    Without `callback` (and batched=False) pure and traceable: jit it, vmap it over keys
    (restarts) or over stacked hyper (grids). With `callback`, the same run as compiled chunks of
    the outer loop with `callback(steps_done)` between them (never a per-step host callback); with
    a tolerance it stops after the chunk in which every run has stopped. batched=True runs B
    configurations together (vmap): `key` is [B, 2] and every leaf of `hyper` is [B]; the
    Trajectory then has a leading axis B (with a callback the compiled path; without one a
    single program, as jit(vmap(simulate)).

    optimizer: a name (gd, momentum, adam, lbfgs) or an `Optimizer`; tol: stop once the relative
    gradient norm is ≤ tol. session: a `Session` (class-incremental training of a fixed
    classifier). start: a `State` to continue from, with a fresh optimiser state (the sessions
    driver); record_start=False leaves out the record at the start.
    """
    check_simulation(model, sizes, hyper, steps, log_every)
    problem = Problem(model, sizes, get_optimizer(optimizer, model), tol)
    mode = execution_mode(problem, callback, batched, session, start)
    if mode == "solved":
        run = functools.partial(_solved, problem, steps=steps)
        if batched:
            run = jax.jit(jax.vmap(run))
        traj = run(key, hyper)
        if callback:
            callback(steps)
        return traj
    if mode == "one-program":
        return _vmapped_simulation(model, sizes, steps, log_every, optimizer, tol,
                                   record_start)(key, hyper)
    if mode == "traceable":
        return _traceable_run(problem, key, hyper, steps, log_every, session, start,
                              record_start)
    return _chunked_run(problem, key, hyper, steps, log_every, session, start, record_start,
                        callback, chunks, batched)


EXECUTION_MODES = {  # how `simulate` runs, chosen in one place (`execution_mode`)
    "solved": "a solver (`--optimizer convex`): one call, one record (vmapped when batched)",
    "one-program": "batched, nothing to report between chunks: jit(vmap(simulate)) as one "
                   "program, the measurements compiled once",
    "traceable": "one configuration, no callback: pure and traceable (jit, vmap, a sweep's point)",
    "chunked": "compiled pieces (start, chunks of intervals, tail, finish) with the callback "
               "between chunks; also batched runs with a session or a start state",
}


def execution_mode(problem, callback, batched, session, start):
    """Which of EXECUTION_MODES `simulate` uses for these arguments."""
    if problem.optimizer.solve is not None:
        return "solved"
    if batched and callback is None and session is None and start is None:
        return "one-program"
    if callback is None and not batched:
        return "traceable"
    return "chunked"


def _traceable_run(problem, key, hyper, steps, log_every, session, start, record_start):
    """The "traceable" mode: the outer loop over records in the traced program."""
    intervals = steps // log_every
    state = _first_state(problem, key, hyper, session, start)
    counts = ([0] if record_start else []) + [log_every] * intervals + (
        [steps % log_every] if steps % log_every else [])
    state, (steps_log, hist) = _recorded_steps(problem, state, hyper, counts, session)
    traj = Trajectory(state.params, steps_log, hist, state.diverged_at, state.converged_at,
                      *_finish(problem, state, hyper, session))
    return with_blow_up(traj) if record_start else traj


def _chunked_run(problem, key, hyper, steps, log_every, session, start, record_start, callback,
                 chunks, batched):
    """The "chunked" mode: compiled pieces driven from the host, `callback(steps_done)` between
    chunks (never per step); with a tolerance it stops after the chunk where every run stopped."""
    tol = problem.tol
    intervals = steps // log_every
    p = _compiled_pieces(problem, log_every, batched)
    ax = 1 if batched else 0  # the time axis of records
    expand = lambda v: np.expand_dims(np.asarray(v), ax)
    state, rec = p.start(key, hyper, session, start)
    steps_log = [expand(state.step)] if record_start else []
    hist = [jax.tree.map(expand, rec)] if record_start else []
    per_chunk = _divisor_near(intervals, max(1, intervals // chunks))
    done = 0
    for _ in range(intervals // per_chunk if intervals else 0):  # over chunks, not steps
        state, (s_log, h) = p.chunk(state, hyper, session, per_chunk)
        done += per_chunk * log_every
        steps_log.append(np.asarray(s_log))
        hist.append(jax.tree.map(np.asarray, h))  # [intervals], or [B, intervals] under vmap
        if callback:
            callback(done)
        if tol is not None and bool(np.all(np.asarray(stopped(state)))):
            break
    else:
        if steps % log_every:
            state, at, rec = p.tail(state, hyper, session, steps % log_every)
            steps_log.append(expand(at))
            hist.append(jax.tree.map(expand, rec))
    if callback:
        callback(steps)
    history = jax.tree.map(lambda *xs: np.concatenate(xs, axis=ax), *hist)
    traj = Trajectory(state.params, np.concatenate(steps_log, axis=ax), history,
                      np.asarray(state.diverged_at), state.converged_at,
                      *p.finish(state, hyper, session))
    return with_blow_up(traj) if record_start else traj


def _solved(problem, key, hyper, steps):
    """A run of a solver (`Optimizer.solve`, at most `steps` iterations, stopped at problem.tol or
    the optimiser's own tolerance) as a Trajectory with one record: the solution's (`key` unused:
    the solver starts from zero, not from a random draw)."""
    opt = problem.optimizer
    tol = problem.tol if problem.tol is not None else dict(opt.stop_tol)[
        str(jnp.dtype(jnp.result_type(float)))]
    model, sizes = problem.model, problem.sizes
    need = model.convex_min_d(sizes.K) if model.convex_min_d is not None else sizes.d
    if model.two_factor is not None and sizes.d < need:
        return _solved_below_rank(problem, key, hyper, steps, tol, need)
    params, iterations, gap = opt.solve(model, sizes, hyper, steps, tol, key)
    iterations = jnp.asarray(iterations, jnp.int32)
    rec = record(problem, params, hyper)
    finite = jnp.isfinite(rec["objective"]) & _all_finite(params)
    return Trajectory(params, iterations[None], jax.tree.map(lambda v: v[None], rec),
                      jnp.where(finite, -1, iterations), jnp.where(gap <= tol, iterations, -1),
                      certify(problem, params, hyper), bound_inputs(problem, params))


POLISH_STEPS = 2000  # L-BFGS iterations after the convex solution's top-d truncation


def _solved_below_rank(problem, key, hyper, steps, tol, need):
    """`--optimizer convex` at d below the convex solution's rank (a two-factor model): solve the
    convex problem at d = `need`, keep its top-d directions, and polish them by L-BFGS on the
    factorised model (at most POLISH_STEPS iterations, to L-BFGS's own tolerance) — at least as
    good a point as the truncation. The bound's inputs are the convex solution's, so the lower
    bound reported is (up to its gap) the convex problem's minimum: a bound at any d."""
    model, sizes = problem.model, problem.sizes
    full, iterations, _ = problem.optimizer.solve(model, sizes._replace(d=need), hyper, steps,
                                                  tol, key)
    d = sizes.d
    start = {k: (v[:, :d] if k == "W" else v[:d] if k == "H" else v) for k, v in full.items()}
    begin = start_state(start, iterations)
    polish = Problem(model, sizes, LBFGS, dict(LBFGS.stop_tol)[
        str(jnp.dtype(jnp.result_type(float)))])
    state = _first_state(polish, key, hyper, None, begin)
    state, (at, hist) = _recorded_steps(polish, state, hyper, [POLISH_STEPS], None)
    params = state.params
    return Trajectory(params, at, hist, state.diverged_at, state.converged_at,
                      certify(polish, params, hyper), bound_inputs(problem, full))


@functools.lru_cache(maxsize=None)
def _vmapped_simulation(model, sizes, steps, log_every, optimizer, tol, record_start):
    """jit(vmap(simulate)) over B configurations (keys [B, 2], every hyper leaf [B])."""
    return jax.jit(jax.vmap(functools.partial(
        simulate, model, sizes, steps=steps, log_every=log_every, optimizer=optimizer, tol=tol,
        record_start=record_start)))


@functools.lru_cache(maxsize=None)
def compiled_simulation(model, sizes, steps, log_every, optimizer="gd", restarts=1, tol=None):
    """jit(simulate) for fixed static sizes; with restarts > 1, vmapped over R PRNG keys.

    Cached: the same (model, sizes, steps, log_every, optimiser, tol) reuse one compiled program,
    and a new `hyper` value never retraces.
    """
    run = functools.partial(simulate, model, sizes, steps=steps, log_every=log_every,
                            optimizer=optimizer, tol=tol)
    if restarts == 1:
        return jax.jit(run)
    return jax.jit(lambda key, hyper: jax.vmap(run, in_axes=(0, None))(
        jax.random.split(key, restarts), hyper))


def trim(traj):
    """A single run's Trajectory without the records marked −1 (intervals after it stopped)."""
    keep = np.asarray(traj.steps) >= 0
    if keep.all():
        return traj
    return traj._replace(steps=np.asarray(traj.steps)[keep],
                         history={k: np.asarray(v)[keep] for k, v in traj.history.items()})


def prng_key(seed):
    """jax.random.PRNGKey(seed), made on the host where JAX's default generator allows it: a
    threefry key of a 32-bit seed is the pair [0, seed] (checked by the tests), and building it
    with numpy compiles nothing (two small programs less to trace and load per run)."""
    if jax.config.jax_default_prng_impl == "threefry2x32" and 0 <= seed < 2 ** 32:
        return np.array([0, seed], np.uint32)
    return jax.random.PRNGKey(seed)


def as_hyper(values, dtype=None):
    """A (nested) dict of Python floats as numpy arrays in the default float dtype (numpy, not
    JAX: converting on the host compiles nothing; a compiled run takes them as they are)."""
    dtype = np.dtype(dtype or jnp.result_type(float))
    return jax.tree.map(lambda v: np.asarray(v, dtype), values)


def broadcast_hyper(hyper, B):
    """Every leaf of `hyper` (a scalar or a per-class vector) broadcast to a leading axis of
    length B."""
    return jax.tree.map(lambda v: jnp.broadcast_to(jnp.asarray(v), (B,) + jnp.shape(v)), hyper)


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
