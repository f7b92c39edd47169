"""Class-incremental sessions (Yang et al.'s Neural Collapse Terminus): each session trains the
features of its own classes, the others frozen, with the classifier fixed. Callers of the run
driver: every session is one call of `optimise.simulate` continuing from the last state, the same
compiled program for each (the session is an argument, docs/architecture.md, "A run")."""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ufm.metrics import class_labels
from ufm.models import Session
from ufm.optimise import (Problem, State, Trajectory, advance, certify, get_optimizer,
                          init_state, record, simulate)


class Sessions(NamedTuple):
    """Class-incremental sessions (`simulate_sessions`): what each session ended with."""

    groups: tuple  # the classes of each session
    features: np.ndarray  # H at the end of each session  [T, d, N]
    records: list  # the measurements at the end of each session (dicts of floats)
    ends: list  # the global step at which each session ended


def make_session(sizes, group, anchor=None, distill=0.0):
    """The Session of one group of classes: only its samples active, its classes in the softmax
    mask, and with distill > 0 the features tied to `anchor` (their values when it starts)."""
    dtype = jnp.result_type(float)
    labels = class_labels(sizes.counts, sizes.N)
    active = jnp.asarray(np.isin(labels, group), dtype)
    mask = jnp.asarray(np.isin(np.arange(sizes.K), group), dtype)
    if distill > 0:
        return Session(active, mask, anchor, jnp.asarray(distill, dtype))
    return Session(active, mask)


def _first_session_state(problem, key, hyper, group, distill):
    """The initial state projected onto the first session's constraint set, and the session its
    first record is made with (anchored at the features before that projection)."""
    state = init_state(problem, key, hyper)
    first = make_session(problem.sizes, group, state.params["H"], distill)
    params = problem.model.project(state.params, hyper, problem.sizes, first)
    return state._replace(params=params), first


def sessions_final(model, sizes, key, hyper, groups, steps, optimizer="gd", distill=0.0):
    """`simulate_sessions` without records, pure and traceable (for grids): the final state, the
    measurements at the end of the last session and its certificate (see `certify`)."""
    problem = Problem(model, sizes, get_optimizer(optimizer, model))
    state, _ = _first_session_state(problem, key, hyper, groups[0], distill)
    for group in groups:  # over sessions (static, few), each one compiled run
        session = make_session(sizes, group, state.params["H"], distill)
        state = state._replace(opt_state=problem.method(hyper, session).init(state.params))
        state = advance(problem, state, hyper, steps, session)
    return (state, record(problem, state.params, hyper, session),
            certify(problem, state.params, hyper, session))


def simulate_sessions(model, sizes, key, hyper, groups, steps, log_every, optimizer="gd",
                      distill=0.0, progress=None):
    """Class-incremental training (Yang et al.'s Neural Collapse Terminus, seed 000): session t
    runs `steps` optimiser steps on the features of the classes in groups[t] only (the others
    frozen: their loss is not counted), with the classifier fixed throughout.

    Each session is one call of the driver (`simulate`, continuing from the last state; the same
    compiled program for every session: the session is an argument). Returns (Trajectory over all
    sessions, Sessions).
    """
    problem = Problem(model, sizes, get_optimizer(optimizer, model))
    state, first = jax.jit(functools.partial(_first_session_state, problem, group=groups[0],
                                             distill=distill))(key, hyper)
    run = _session_program(model, sizes, steps, log_every, problem.optimizer)
    steps_log = [np.zeros(1, np.int64)]
    hist = [jax.tree.map(lambda v: np.asarray(v)[None], jax.jit(functools.partial(
        record, problem))(state.params, hyper, first))]
    features, records, ends = [], [], []
    for t, group in enumerate(groups):  # over sessions, each one compiled run
        session = make_session(sizes, group, state.params["H"], distill)
        traj = run(state, hyper, session)
        state = State(traj.params, None, traj.steps[-1], traj.diverged_at, traj.converged_at)
        steps_log.append(np.asarray(traj.steps))
        hist.append(jax.tree.map(np.asarray, traj.history))
        features.append(np.asarray(state.params["H"]))
        records.append({k: float(v[-1]) for k, v in traj.history.items()})
        ends.append(int(state.step))
        if progress:
            progress((t + 1) * steps)
    history = jax.tree.map(lambda *xs: np.concatenate(xs), *hist)
    out = Trajectory(state.params, np.concatenate(steps_log), history, state.diverged_at,
                     state.converged_at, traj.grad_norm)
    return out, Sessions(tuple(tuple(g) for g in groups), np.stack(features), records, ends)


@functools.lru_cache(maxsize=None)
def _session_program(model, sizes, steps, log_every, optimizer):
    """jit of one session's run: `simulate` continuing from a state, without a start record."""
    return jax.jit(lambda state, hyper, session: simulate(
        model, sizes, None, hyper, steps, log_every, optimizer, session=session, start=state,
        record_start=False))
