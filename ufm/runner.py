"""Single runs: `train(...)` builds a checked run specification (ufm.spec), `run(spec)` executes
it compiled (ufm.optimise), judges it (ufm.certificate) and returns a `Result`; `write_result`
stores it atomically as result.json + params.npz (ufm.files)."""
import math
import os
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ufm import certificate as cert_mod
from ufm import hessian as hessian_mod
from ufm import cache, metrics, optimise
from ufm import sessions as sessions_mod
from ufm import theory as theory_mod
from ufm.files import json_ready, write_json, write_npz
from ufm.models import Sizes, get_model
from ufm.models.constrained import prototype_cosines
from ufm.spec import RunSpec, build


class Result(NamedTuple):
    model: str
    config: dict  # every setting, defaults included
    params: Any  # the kept run's final parameters (numpy)
    steps: np.ndarray  # [T]
    history: dict  # name -> [T] numpy
    final: dict  # name -> float (last record)
    theory: Optional[tuple]  # closed-form prediction (ufm.theory) or None
    diverged_at: Optional[int]
    restart_objectives: list  # final objective of every restart
    sessions: Optional[list] = None  # incremental sessions: one dict per session
    certificate: Optional[dict] = None  # see certificate.certificate
    reference: Optional[dict] = None  # where the run landed against reference values (theory.landing)
    undefined: Optional[dict] = None  # measurement -> why it is NaN (see metrics.undefined_reasons)
    restart_global: Optional[list] = None  # each restart certified global (None: no bound)
    second_order: Optional[dict] = None  # hessian.SecondOrder.as_dict() when asked for


def train(model="bias-free", *, progress=None, **kw):
    """Build the run's specification (ufm.spec.build: every check, in one order), run it (`run`)
    and return its Result. `model` may also be a built `RunSpec` (then no other argument but
    `progress`).

    kw: K, n, d, steps, log_every, seed, lr, init_scale, restarts, optimizer, allow_small_d, loss,
    alpha, mask_softmax, depth, options, sessions, distill, tol, hessian, escape, init_from, limit
    and the model's λ's by name (lam_W, lam_H, lam_b, lam_W1, lam_W2, lam_H1, E_H, E_W); unset ones
    take the model's defaults (λ's 5e-3, E_H and E_W 1). dtype follows the caller's
    jax_enable_x64. `progress(steps_done)` is called between compiled chunks of the scan.
    optimizer: gd, momentum, adam or lbfgs. tol: stop once the relative gradient norm is ≤ tol
    (`steps` is then the cap; see certificate.stopping_tol for the default). loss, alpha,
    mask_softmax: variants of the constrained models; sessions (see config.session_groups) runs
    class-incremental sessions of `steps` steps each, with `distill` the weight of the tie to the
    previous session's features. depth: L of the deep models (default 3), with lam_H1 and lam_W
    (every layer) or lam_W1 … lam_WL. options: any other static options of the model by name
    (e.g. scaled-target's targets). hessian: None, or 'auto', 'dense' or 'lanczos': classify the
    final point modulo symmetry (ufm.hessian.classify; Result.second_order). escape: while that
    point is a saddle, step along its negative-curvature direction (the better of both signs,
    ufm.hessian.line_search) and run again from there (at most MAX_ESCAPES times); the
    certificate lists the escapes. init_from: start from these parameters instead of a random
    draw: a params .npz file (a run's params.npz) or the name of one of the model's constructions
    (deep-linear-ce: dnc, low-rank, triangular). limit: solve the λ → 0 limit instead, the
    UFM-SVM (ufm.limit; `ce` only): W, H its margin-1 direction, the λ's ignored.
    """
    if isinstance(model, RunSpec):
        if kw:
            raise ValueError(f"a RunSpec is complete: change it with spec.replace(), not with "
                             f"{', '.join(sorted(kw))}")
        return run(model, progress)
    return run(build(model, **kw), progress)


def run(spec, progress=None):
    """Execute a checked RunSpec (R restarts vmapped, best kept) and judge it: a Result."""
    if spec.limit:
        return _limit_result(spec)
    model, sizes, hyper, opt = spec.model, spec.sizes, dict(spec.hyper), spec.optimizer
    steps, log_every, restarts, stop = spec.steps, spec.log_every, spec.restarts, spec.stop
    groups, hessian, prediction = spec.sessions, spec.hessian, spec.prediction
    key = optimise.prng_key(spec.seed)
    jhyper = optimise.as_hyper(hyper)
    start = None if spec.init_from is None else _start_from(model, sizes, hyper, spec.init_from)
    session_info = None
    if start is not None:
        traj = (optimise.simulate(model, sizes, key, jhyper, steps, log_every, opt, stop,
                                  start=start, callback=progress) if progress is not None
                else jax.jit(lambda k, h, s0: optimise.simulate(
                    model, sizes, k, h, steps, log_every, opt, stop, start=s0))(key, jhyper,
                                                                                start))
    elif groups is not None:
        traj, done = sessions_mod.simulate_sessions(model, sizes, key, jhyper, groups, steps,
                                                    log_every, opt, spec.distill, progress)
        session_info = _session_dicts(sizes, traj.params, done)
    elif progress is not None:  # compiled chunks with reports in between
        keys = jax.random.split(key, restarts) if restarts > 1 else key
        hyp = optimise.broadcast_hyper(jhyper, restarts) if restarts > 1 else jhyper
        traj = optimise.simulate(model, sizes, keys, hyp, steps, log_every, opt, stop,
                                 callback=progress, batched=restarts > 1)
    else:
        program = optimise.compiled_simulation(model, sizes, steps, log_every, opt, restarts,
                                               stop)
        what = ("simulate", model.name, model.options, tuple(sizes), steps, log_every, opt.name,
                restarts, stop)
        traj = cache.program(program, (key, jhyper), what)(key, jhyper)
    traj = jax.tree.map(np.asarray, traj)  # to the host once: the rest is numpy
    restart_global = None
    if restarts > 1 and groups is None:
        restart_obj = [float(v) for v in optimise.final_objectives(traj)]
        if model.bound_inputs is not None:  # every restart's own global certificate
            restart_global = [cert_mod.global_certificate(
                model, optimise.pick(traj, r).bound, hyper, sizes,
                restart_obj[r])["global"] for r in range(restarts)]
        traj = optimise.pick(traj, optimise.best_restart(traj))
    traj = optimise.trim(traj)
    escapes, second_order = [], None
    if spec.escape:
        traj, second_order, escapes = _escape_saddles(
            model, sizes, key, jhyper, hyper, traj, opt, stop, steps, log_every, hessian,
            spec.certificate_tol)
    if restarts == 1 or groups is not None:
        restart_obj = [float(traj.history["objective"][-1])]
    history = {k: np.asarray(v) for k, v in traj.history.items()}
    diverged_at = int(traj.diverged_at)
    converged_at = int(traj.converged_at)
    cert = cert_mod.certificate(history["objective"], traj.grad_norm,
                                None if converged_at < 0 else converged_at, traj.steps[-1],
                                spec.certificate_tol, theory_mod.optimum(prediction),
                                diverged=diverged_at >= 0)
    inputs = traj.bound if model.bound_inputs is not None and groups is None else None
    cert.update(cert_mod.global_certificate(model, inputs, hyper, sizes,
                                            history["objective"][-1], sessions=groups is not None))
    final = {k: _number(v[-1]) for k, v in history.items()}
    if spec.escape:
        cert["escapes"] = escapes
    if hessian is not None and second_order is None:
        second_order = hessian_mod.classify_run(spec, traj.params, stationary_tol=cert["tol"])
    if second_order is not None:
        second_order = second_order.as_dict()
    return Result(
        model=spec.name, config=spec.config(), params=traj.params,
        steps=np.asarray(traj.steps), history=history, final=final,
        undefined=metrics.undefined_reasons(final, diverged_at >= 0) or None,
        theory=prediction, diverged_at=None if diverged_at < 0 else diverged_at,
        restart_objectives=restart_obj, restart_global=restart_global, sessions=session_info,
        certificate=cert, second_order=second_order,
        reference=theory_mod.landing(prediction, float(history["objective"][-1])))


def _limit_result(spec):
    """The λ → 0 limit of a CE model as a Result: the max-margin problem's margin-1 direction
    (W, H), its value ‖Z‖_*, the dual bound and gap, the smallest margin, and what its closed
    form or structure says (docs/theory.md §5.4, §5.6)."""
    model, sizes, hyper = spec.model, spec.sizes, dict(spec.hyper)
    problem = model.limit(hyper, sizes)
    if "supports" in problem:
        params, cert = _support_limit(spec, np.asarray(problem["supports"], bool))
    else:
        params, cert = _class_limit(spec, np.asarray(problem["scales"], np.float64))
    measured = {k: _number(v) for k, v in
                jax.tree.map(np.asarray, model.measure(params, hyper, sizes)).items()}
    final = dict(objective=cert["value"], **measured)
    cfg = dict(model=spec.name, K=sizes.K, n=sizes.n, d=sizes.d, steps=spec.steps, limit=True,
               tol=spec.stop, dtype=spec.dtype, options=dict(model.options) or None)
    if "margin_scales" in cert:
        cfg["margin_scales"] = cert["margin_scales"]
    return Result(model=spec.name, config=cfg, params=params,
                  steps=np.array([cert["iterations"]]),
                  history={k: np.array([v]) for k, v in final.items()}, final=final,
                  theory=None, diverged_at=None, restart_objectives=[cert["value"]],
                  certificate=cert)


def _limit_certificate(sol, stop):
    value, bound, gap = float(sol.value), float(sol.bound), float(sol.gap)
    return {"limit": True, "value": value, "lower_bound": bound, "gap": gap, "tol": stop,
            "converged": bool(gap <= stop), "iterations": int(sol.iterations)}


def _class_limit(spec, delta):
    """The margin-scaled UFM-SVM over class-constant logits and its closed form (scaled SELI)."""
    from ufm import limit as limit_mod

    sizes, K, counts = spec.sizes, spec.sizes.K, tuple(spec.sizes.counts)
    sol = jax.jit(lambda: limit_mod.solve_svm(counts, max_iter=spec.steps, tol=spec.stop,
                                              delta=delta))()
    M = np.asarray(sol.M, np.float64)
    scaled = delta[:, None] * M
    margins = np.diag(scaled)[None, :] - scaled + np.eye(K) * 1e300
    closed = limit_mod.scaled_seli(counts, delta)
    cert = dict(_limit_certificate(sol, spec.stop), min_margin=float(margins.min()),
                margin_scales=delta.tolist(), seli_error=limit_mod.seli_error(M),
                closed_form_value=closed.value,
                closed_form_error=float(np.linalg.norm(M - closed.M)),
                closed_form_multiplier=closed.multiplier)
    return jax.tree.map(np.asarray, limit_mod.factors(M, sizes)), cert


def _support_limit(spec, supports):
    """The next-token-prediction SVM and how its solution sits against the centred support
    matrix (docs/theory.md §5.6)."""
    from ufm import limit as limit_mod

    sizes = spec.sizes
    sol = jax.jit(lambda: limit_mod.solve_support_svm(supports, max_iter=spec.steps,
                                                      tol=spec.stop))()
    Z = np.asarray(sol.M, np.float64)
    structure = limit_mod.support_structure(Z, supports)
    cert = dict(_limit_certificate(sol, spec.stop), **structure)
    return limit_mod.logit_factors(Z, sizes.d), cert


def _start_from(model, sizes, hyper, init_from):
    """The State a run with init_from starts at (read, and checked against the model's blocks;
    spec.build has checked what can be said before reading it)."""
    if init_from.endswith(".npz"):
        try:
            with np.load(init_from, allow_pickle=False) as f:
                params = {k: np.asarray(f[k]) for k in f.files}
        except (OSError, ValueError) as err:
            raise ValueError(f"init_from (--init-from) {init_from!r} cannot be read: {err}"
                             ) from None
    else:
        found = {} if model.constructions is None else model.constructions(hyper, sizes)
        if init_from not in found:
            names = ", ".join(found) or "none"
            raise ValueError(f"init_from (--init-from) must be a params .npz file or one of "
                             f"{model.name}'s constructions at these sizes ({names}), got "
                             f"{init_from!r}")
        params = found[init_from]
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), {"init_scale": 1.0}, sizes))
    want = {k: tuple(v.shape) for k, v in shapes.items()}
    have = {k: tuple(np.shape(v)) for k, v in params.items()}
    if have != want:
        raise ValueError(f"init_from (--init-from) {init_from!r} holds blocks {have}; "
                         f"{model.name} at K={sizes.K}, d={sizes.d} needs {want}")
    dtype = jnp.result_type(float)
    return optimise.start_state({k: jnp.asarray(v, dtype) for k, v in params.items()})


MAX_ESCAPES = 8  # saddles a run with escape=True steps away from before it gives up


def _escape_saddles(spec, sizes, key, jhyper, hyper, traj, opt, stop, steps, log_every, method,
                    tol):
    """(trajectory, last SecondOrder, escapes): while the run ends at a saddle, step along the
    negative-curvature direction by the line search's best t and run `steps` more from there
    (a fresh optimiser state); histories are joined, steps counted on."""
    leg = jax.jit(lambda k, h, start: optimise.simulate(
        spec, sizes, k, h, steps, log_every, opt, stop, start=start, record_start=False))
    dtype = jnp.result_type(float)
    escapes = []
    for _ in range(MAX_ESCAPES + 1):
        so = hessian_mod.classify(spec, sizes, hyper, traj.params, method=method,
                                  stationary_tol=tol)
        if so.kind != "saddle" or len(escapes) == MAX_ESCAPES:
            break
        before = float(traj.history["objective"][-1])
        t, value = hessian_mod.line_search(spec, sizes, hyper, traj.params, so.direction)
        escapes.append({"at_step": int(traj.steps[-1]), "objective": before,
                        "min_eigenvalue": so.min_eigenvalue, "step_length": t,
                        "objective_after_step": value})
        if t is None:  # no decrease along it in float64: nothing more to do here
            break
        params = {k: jnp.asarray(v + t * so.direction[k] if k in so.direction else v, dtype)
                  for k, v in traj.params.items()}
        start = optimise.start_state(params, int(traj.steps[-1]))
        nxt = optimise.trim(jax.tree.map(np.asarray, leg(key, jhyper, start)))
        traj = nxt._replace(
            steps=np.concatenate([traj.steps, nxt.steps]),
            history={k: np.concatenate([traj.history[k], nxt.history[k]]) for k in traj.history})
    return traj, so, escapes


def _number(v):
    """A recorded scalar as a Python int (integer measurements: ranks) or float."""
    return int(v) if np.issubdtype(np.asarray(v).dtype, np.integer) else float(v)


def _session_dicts(sizes, params, done):
    """One dict per session: its classes, the step it ended at, the cosine of every class mean
    with its class vector [K] and its last measurements."""
    out = []
    for t, (group, H, rec, end) in enumerate(zip(done.groups, done.features, done.records,
                                                 done.ends)):
        cos = prototype_cosines(dict(params, H=jnp.asarray(H)), sizes)
        out.append({"session": t, "classes": list(group), "end_step": end,
                    "cos_prototype": np.asarray(cos, np.float64).tolist(), "final": rec})
    return out


def result_dict(result):
    """The result.json document of a Result."""
    finite = [v for v in result.restart_objectives if math.isfinite(v)]
    return json_ready({
        "model": result.model,
        "config": result.config,
        "final": {**result.final, "undefined": result.undefined or {}},
        "theory": theory_mod.as_dict(result.theory),
        "history": {"step": result.steps, **result.history},
        "certificate": result.certificate,
        "reference": result.reference,
        "diverged": result.diverged_at is not None,
        "diverged_at": result.diverged_at,
        "restarts": {"objectives": result.restart_objectives, "global": result.restart_global,
                     "spread": (max(finite) - min(finite)) if finite else None},
        **({"sessions": result.sessions} if result.sessions is not None else {}),
        **({"second_order": result.second_order} if result.second_order is not None else {}),
    })


def write_result(result, out_dir):
    """Write out_dir/result.json and out_dir/params.npz, each atomically."""
    write_json(os.path.join(out_dir, "result.json"), result_dict(result))
    write_npz(os.path.join(out_dir, "params.npz"), result.params)


def read_result(path):
    """(model, sizes, hyper, params, document) of a `ufm train` output folder (or its
    result.json): the model rebuilt from the configuration it recorded. ValueError naming the
    path for anything else."""
    import json

    from ufm.models import REGISTRY

    folder = os.path.dirname(path) if path.endswith(".json") else path
    doc_path, npz_path = os.path.join(folder, "result.json"), os.path.join(folder, "params.npz")
    if not (os.path.isfile(doc_path) and os.path.isfile(npz_path)):
        raise ValueError(f"run {path!r} is not a ufm train output: it needs result.json and "
                         f"params.npz")
    try:
        with open(doc_path) as fh:
            doc = json.load(fh)
        cfg = doc["config"]
        name = doc["model"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"run {path!r}: result.json is not a ufm train result ({err})") from None
    if name not in REGISTRY:
        raise ValueError(f"run {path!r} names the model {name!r}, which this ufm does not have")
    if doc.get("sessions") is not None:
        raise ValueError(f"run {path!r} ran class-incremental sessions: each session solves "
                         f"another problem; --hessian classifies single runs")
    hashable = lambda v: tuple(hashable(x) for x in v) if isinstance(v, list) else v
    options = {o.name: hashable(cfg[o.name]) for o in REGISTRY[name].options if o.name in cfg}
    model = get_model(name, **options)
    n = cfg["n"]
    sizes = Sizes(int(cfg["K"]), tuple(n) if isinstance(n, list) else int(n), int(cfg["d"]))
    hyper = {h.name: np.asarray(cfg[h.name], np.float64) if h.per_class else float(cfg[h.name])
             for h in model.hypers}
    with np.load(npz_path, allow_pickle=False) as f:
        params = {k: np.asarray(f[k]) for k in f.files}
    return model, sizes, hyper, params, doc


__all__ = ["read_result", "run", "train", "Result", "write_result", "result_dict"]
