"""Validated single runs: `train(...)` checks a configuration, runs it compiled, and returns a
`Result`; `write_result` stores it atomically as result.json + params.npz."""
import json
import math
import os
import re
import tempfile
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ufm import limits, metrics, optimise
from ufm import theory as theory_mod
from ufm.models import (FIXED_BLOCKS, FRAMES, MODELS, Sizes, get_model, model_depth,
                        prototype_cosines)

DEFAULT_LAMBDA = 5e-3
DEFAULTS = dict(K=4, n=50, d=20, lr=0.1, steps=20000, log_every=500, seed=0, restarts=1,
                optimizer="gd")
HYPER_FLAGS = ("lam_W", "lam_H", "lam_b", "lam_W1", "lam_W2", "lam_H1", "E_H", "E_W")
LAYER_LAMBDA = re.compile(r"lam_W[1-9][0-9]*$")  # lam_W1, lam_W2, …: one per layer of a deep model


def is_hyper_name(name):
    """Whether `name` is a hyperparameter some model takes (the flags above, or lam_W<l>)."""
    return name in HYPER_FLAGS or bool(LAYER_LAMBDA.match(name))
DEFAULT_BOUND = 1.0  # E_H, E_W: squared-norm bounds of the constrained models


def flag(name):
    """The CLI flag of a parameter name: lam_W -> --lam-W."""
    return "--" + name.replace("_", "-")


def _named(name):
    return f"{name} ({flag(name)})"


def _int_or_ints(text, message):
    """'7' -> 7, '1,2,3' -> [1, 2, 3]; ValueError(message) otherwise."""
    try:
        return [int(v) for v in text.split(",")] if "," in text else int(text)
    except ValueError:
        raise ValueError(message) from None


def parse_counts(n, K=None):
    """`--n`: one count, or per-class counts: a list joined by ',' or '/', or a sequence. With K
    given a list must have exactly K entries (ValueError otherwise); equal counts then collapse
    to one int, so the balanced theorems apply. Returns an int or a tuple of ints."""
    given = n
    if isinstance(n, str):
        text = n.strip()
        try:
            parts = [int(v) for v in text.replace("/", ",").split(",")]
        except ValueError:
            raise ValueError(f"{_named('n')} must be an integer or a list of K per-class counts "
                             f"joined by ',' or '/', got {given!r}") from None
        n = parts[0] if len(parts) == 1 and not any(c in text for c in ",/") else tuple(parts)
    if isinstance(n, (list, tuple, np.ndarray)):
        n = tuple(int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v
                  for v in n)
        if K is not None and len(n) != K:
            shown = given if isinstance(given, str) else ",".join(map(str, n))
            raise ValueError(f"{_named('n')} {shown} has {len(n)} per-class counts but K (--K) "
                             f"is {K}: give one count or exactly K")
        if n and len(set(n)) == 1:
            return n[0]
    return n


def check_config(model, sizes, hyper, steps, log_every=1, restarts=1, allow_small_d=False):
    """Raise ValueError naming the parameter, the value and what is allowed; return nothing.

    `hyper`: the model's λ's with `lr` and `init_scale`. Runs before anything is traced.
    """
    counts = sizes.n if isinstance(sizes.n, tuple) else (sizes.n,)
    for name, value in (("K", sizes.K), *(("n", c) for c in counts), ("d", sizes.d),
                        ("steps", steps), ("log_every", log_every), ("restarts", restarts)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{_named(name)} must be an integer, got {value!r}")
    if sizes.K < 2:
        raise ValueError(f"{_named('K')} must be >= 2, got {sizes.K}")
    if isinstance(sizes.n, tuple) and len(sizes.n) != sizes.K:
        raise ValueError(f"{_named('n')} has {len(sizes.n)} per-class counts "
                         f"{','.join(map(str, sizes.n))} but K (--K) is {sizes.K}: give one count "
                         f"or exactly K")
    for name in ("n", "d", "steps", "log_every", "restarts"):
        value = {"n": min(counts), "d": sizes.d, "steps": steps, "log_every": log_every,
                 "restarts": restarts}[name]
        if value < 1:
            raise ValueError(f"{_named(name)} must be >= 1, got {value}")
    for name, value in hyper.items():
        for part, v in (value.items() if isinstance(value, dict) else [(None, value)]):
            v = float(v)
            if not math.isfinite(v) or v < 0:
                what = _named(name) if part is None else f"{_named(name)}[{part!r}]"
                raise ValueError(f"{what} must be finite and >= 0, got {v}")
    for name in ("E_H", "E_W"):
        if name in hyper and float(hyper[name]) <= 0:
            raise ValueError(f"{_named(name)} must be > 0 (a squared-norm bound), "
                             f"got {float(hyper[name])}")
    if float(hyper["lr"]) <= 0:
        raise ValueError(f"{_named('lr')} must be > 0, got {float(hyper['lr'])}")
    need = model.theorem_min_d(sizes.K)
    if sizes.d < need and not allow_small_d:
        raise ValueError(
            f"{_named('d')}={sizes.d} is below what the theorem for {model.name} needs "
            f"(d >= {need} for K={sizes.K}); pass --allow-small-d (allow_small_d=True) to run "
            f"it anyway with no closed-form prediction")


def tie_layers(model, lams):
    """For a layered model, `lam_W` (one λ for every W_l) expanded to each lam_W<l> not given on
    its own; other models' λ's unchanged."""
    layers = [k for k in model.hyper_names if LAYER_LAMBDA.match(k)]
    if lams.get("lam_W") is None or "lam_W" in model.hyper_names or not layers:
        return lams
    out = {k: v for k, v in lams.items() if k != "lam_W"}
    for k in layers:
        if out.get(k) is None:
            out[k] = lams["lam_W"]
    return out


def hyper_for(model, lams, lr, init_scale):
    """The full hyper dict of a model: its λ's (defaults filled in), lr and init_scale.

    A λ the model does not take is a ValueError naming it and the ones it does take. For a
    layered model `lam_W` sets every lam_W<l> not given on its own (see `tie_layers`).
    """
    lams = tie_layers(model, lams)
    for name, value in lams.items():
        if value is not None and name not in model.hyper_names:
            takes = ", ".join(model.hyper_names)
            raise ValueError(f"{_named(name)} does not apply to model {model.name!r} "
                             f"(it takes: {takes})")
    default = lambda k: DEFAULT_BOUND if k.startswith("E_") else DEFAULT_LAMBDA
    hyper = {k: default(k) if lams.get(k) is None else float(lams[k]) for k in model.hyper_names}
    hyper["lr"] = float(lr)
    if isinstance(init_scale, dict):  # a std per block, e.g. {"W2": 0.1, "W1": 0.1, "H1": 0.2}
        hyper["init_scale"] = {k: float(v) for k, v in init_scale.items()}
    else:
        hyper["init_scale"] = model.init_scale if init_scale is None else float(init_scale)
    return hyper


def predict(model, sizes, hyper):
    """The closed-form prediction, or None where no theorem applies (d too small, some λ = 0)."""
    if sizes.d < model.theorem_min_d(sizes.K):
        return None
    if any(float(hyper[k]) == 0 for k in model.hyper_names if k != "lam_b"):
        return None  # the theorems assume positive regularisation
    return model.theory(hyper, sizes)


def checked_prediction(model, sizes, hyper):
    """`predict`, evaluated before any training: a configuration whose closed form overflows or
    divides by zero (e.g. λ_H = 1e308) is a ValueError naming the λ's, not a crash afterwards."""
    try:
        with np.errstate(all="raise"):
            prediction = predict(model, sizes, hyper)
            if prediction is not None and not math.isfinite(float(prediction.objective)):
                raise OverflowError("non-finite objective")
    except (ZeroDivisionError, OverflowError, FloatingPointError, ValueError) as err:
        if isinstance(err, ValueError) and "closed form" in str(err):
            raise
        lams = ", ".join(f"{k}={float(hyper[k]):g}" for k in model.hyper_names if k in hyper)
        raise ValueError(f"the closed form of {model.name} is undefined at {lams} ({err}): "
                         f"the λ's are outside the range where it can be evaluated in float64"
                         ) from None
    return prediction


def session_groups(sessions, K):
    """The classes of each incremental session from `--sessions`: T (K classes split in order into
    T near-equal consecutive groups), a comma list / sequence of class counts per session, or a
    sequence of sequences of class indices (any order). ValueError unless every class is in
    exactly one session."""
    if isinstance(sessions, str):
        sessions = _int_or_ints(sessions, f"sessions (--sessions) must be a number of sessions "
                                          f"or a comma list of class counts per session, got "
                                          f"{sessions!r}")
    if isinstance(sessions, (int, np.integer)) and not isinstance(sessions, bool):
        if not 1 <= sessions <= K:
            raise ValueError(f"sessions (--sessions) must be between 1 and K={K}, got {sessions}")
        return tuple(tuple(int(c) for c in g) for g in np.array_split(np.arange(K), sessions))
    sessions = list(sessions)
    if sessions and all(isinstance(v, (int, np.integer)) for v in sessions):  # counts
        if any(v < 1 for v in sessions) or sum(sessions) != K:
            raise ValueError(f"sessions (--sessions) {','.join(map(str, sessions))} must be "
                             f"positive class counts summing to K={K} (got a total of "
                             f"{sum(sessions)}): every class must be in one session")
        edges = np.cumsum([0] + sessions)
        return tuple(tuple(range(a, b)) for a, b in zip(edges[:-1], edges[1:]))
    groups = tuple(tuple(int(c) for c in g) for g in sessions)
    flat = sorted(c for g in groups for c in g)
    if flat != list(range(K)) or any(len(g) == 0 for g in groups):
        missing = sorted(set(range(K)) - set(flat))
        raise ValueError(f"sessions {groups} must put every class 0…{K - 1} in exactly one "
                         f"non-empty session (missing: {missing}, listed: {flat})")
    return groups


def check_sessions(model, sessions, distill, K, restarts):
    """Validate `sessions`/`distill` for `model`; the class groups, or None without sessions."""
    distill = float(distill)
    if not (math.isfinite(distill) and distill >= 0):
        raise ValueError(f"distill (--distill) must be finite and >= 0, got {distill}")
    if sessions is None:
        if distill > 0:
            raise ValueError("distill (--distill) ties a session's features to the previous "
                             "session's: it needs --sessions")
        return None
    blocks = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), Sizes(2, 1, 2), 1.0))
    if not set(FIXED_BLOCKS) & set(blocks):
        raise ValueError(f"sessions (--sessions) need a fixed classifier (fixed-etf, "
                         f"fixed-orthogonal), not {model.name!r}")
    if restarts != 1:
        raise ValueError(f"restarts (--restarts) must be 1 with --sessions, got {restarts}")
    return session_groups(sessions, K)


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
    certificate: Optional[dict] = None  # see `certificate`
    reference: Optional[dict] = None  # where the run landed against reference values (theory.landing)
    undefined: Optional[dict] = None  # measurement -> why it is NaN (see metrics.undefined_reasons)


def stopping_tol(optimizer, tol, dtype=None):
    """The tolerance at which a run stops: `tol` when given; for L-BFGS, optimise.LBFGS_TOL of the
    dtype (about round-off); for first-order methods None (every step runs, as in the papers)."""
    if tol is not None:
        return float(tol)
    if optimizer == "lbfgs":
        return optimise.LBFGS_TOL[str(jnp.dtype(dtype or jnp.result_type(float)))]
    return None


def certificate_tol(tol, dtype=None):
    """The tolerance `converged` is judged against: `tol`, else optimise.CERTIFICATE_TOL."""
    if tol is not None:
        return float(tol)
    return optimise.CERTIFICATE_TOL[str(jnp.dtype(dtype or jnp.result_type(float)))]


def check_tol(tol):
    """ValueError unless tol is None or a finite number > 0."""
    if tol is None:
        return
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)):
        raise ValueError(f"tol (--tol) must be a number > 0, got {tol!r}")
    if not (math.isfinite(float(tol)) and float(tol) > 0):
        raise ValueError(f"tol (--tol) must be finite and > 0, got {float(tol)}")


def certificate(objectives, grad_norm, converged_at, steps_taken, tol, reference=None):
    """The convergence certificate of one run, a JSON-ready dict.

    objectives: the recorded objective [T]; grad_norm: ‖∇f‖/max(|f|, floor) at the end (the
    projected-gradient step for constrained models); converged: grad_norm ≤ tol; rel_decrease: the
    last logging interval's (f_prev − f_last)/max(|f_last|, floor); closed_form_gap: the signed
    (f − f*)/|f*| (f − f* where f* = 0) against the closed-form optimum `reference`, if any.
    """
    f = np.asarray(objectives, np.float64)
    floor = optimise.OBJECTIVE_FLOOR
    rel_decrease, gap = None, None
    with np.errstate(all="ignore"):  # a diverged run's inf/NaN objectives give NaN, not warnings
        if f.size > 1:
            rel_decrease = float((f[-2] - f[-1]) / max(abs(f[-1]), floor))
        if reference is not None:
            gap = float((f[-1] - reference) / abs(reference) if reference != 0
                        else f[-1] - reference)
    grad_norm = float(grad_norm)
    return {"grad_norm": grad_norm, "rel_decrease": rel_decrease, "tol": float(tol),
            "converged": bool(grad_norm <= tol), "converged_at": converged_at,
            "steps_taken": int(steps_taken), "closed_form_gap": gap}


def train(model="bias-free", *, K=4, n=50, d=20, steps=DEFAULTS["steps"],
          log_every=DEFAULTS["log_every"], seed=0, lr=DEFAULTS["lr"], init_scale=None,
          restarts=1, optimizer="gd", allow_small_d=False, progress=None, loss=None, alpha=None,
          mask_softmax=False, sessions=None, distill=0.0, tol=None, depth=None, **lams):
    """Validate, run the optimiser compiled (R restarts vmapped, best kept), return a Result.

    lams: the model's λ's by name (lam_W, lam_H, lam_b, lam_W1, lam_W2, lam_H1); unset ones are
    5e-3 (E_H, E_W: 1). dtype follows the caller's jax_enable_x64. `progress(steps_done)` is called
    between compiled chunks of the scan. optimizer: gd, momentum, adam or lbfgs. tol: stop once the
    relative gradient norm is ≤ tol (`steps` is then the cap; see `stopping_tol` for the default).
    loss, alpha, mask_softmax: variants of the constrained models; sessions (see
    `session_groups`) runs class-incremental sessions of `steps` steps each, with `distill` the
    weight of the tie to the previous session's features. depth: L of the deep models
    (deep-linear, deep-relu, deep-linear-ce; default 3), with lam_H1 and lam_W (every layer) or
    lam_W1 … lam_WL.
    """
    spec = get_model(model, loss, alpha, mask_softmax, depth)
    unknown = sorted(k for k in lams if not is_hyper_name(k))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown}; known: {HYPER_FLAGS} and "
                         f"lam_W<l> for a deep model's layer l")
    optimise.check_optimizer(spec, optimizer)
    check_tol(tol)
    n = parse_counts(n, K if isinstance(K, (int, np.integer)) else None)
    sizes = Sizes(K, n, d)
    hyper = hyper_for(spec, lams, lr, init_scale)
    check_config(spec, sizes, hyper, steps, log_every, restarts, allow_small_d)
    limits.check_seed(seed)
    limits.check_steps(steps)
    limits.check_representable(hyper)
    limits.check_run(spec, sizes, optimizer, restarts, steps // log_every + 2)
    prediction = checked_prediction(spec, sizes, hyper)
    distill = float(distill)
    groups = check_sessions(spec, sessions, distill, K, restarts)
    if groups is not None and tol is not None:
        raise ValueError("tol (--tol) does not apply with --sessions: each session runs its "
                         "--steps")
    stop = stopping_tol(optimizer, tol)
    key = jax.random.PRNGKey(seed)
    jhyper = optimise.as_hyper(hyper)
    session_info = None
    if groups is not None:
        traj, done = optimise.simulate_sessions(spec, sizes, key, jhyper, groups, steps,
                                                log_every, optimizer, distill, progress)
        session_info = _session_dicts(spec, sizes, traj.params, done)
    elif progress is not None:  # compiled chunks with reports in between
        keys = jax.random.split(key, restarts) if restarts > 1 else key
        hyp = optimise.broadcast_hyper(jhyper, restarts) if restarts > 1 else jhyper
        traj = optimise.simulate_with_progress(spec, sizes, keys, hyp, steps, log_every,
                                               optimizer, progress, batched=restarts > 1,
                                               tol=stop)
    else:
        traj = optimise.compiled_simulation(spec, sizes, steps, log_every, optimizer,
                                            restarts, stop)(key, jhyper)
    if restarts > 1 and groups is None:
        restart_obj = [float(v) for v in optimise.final_objectives(traj)]
        traj = optimise.pick(traj, optimise.best_restart(traj))
    traj = optimise.trim(traj)
    if restarts == 1 or groups is not None:
        restart_obj = [float(traj.history["objective"][-1])]
    history = {k: np.asarray(v) for k, v in traj.history.items()}
    diverged_at = int(traj.diverged_at)
    config = dict(model=model, K=K, n=n, d=d, steps=steps, log_every=log_every, seed=seed,
                  restarts=restarts, optimizer=optimizer, tol=stop, allow_small_d=allow_small_d,
                  dtype=str(jnp.result_type(float)), **hyper)
    if model in FRAMES:
        config.update(loss=loss or "ce", alpha=alpha or "none", mask_softmax=bool(mask_softmax),
                      sessions=None if groups is None else [list(g) for g in groups],
                      distill=distill)
    if model_depth(spec) is not None:
        config.update(depth=model_depth(spec), rank_tol=metrics.RANK_TOL)
    converged_at = int(traj.converged_at)
    cert = certificate(history["objective"], traj.grad_norm,
                       None if converged_at < 0 else converged_at, traj.steps[-1],
                       certificate_tol(tol), theory_mod.optimum(prediction))
    final = {k: _number(v[-1]) for k, v in history.items()}
    return Result(
        model=model, config=config, params=jax.tree.map(np.asarray, traj.params),
        steps=np.asarray(traj.steps), history=history, final=final,
        undefined=metrics.undefined_reasons(final, diverged_at >= 0) or None,
        theory=prediction, diverged_at=None if diverged_at < 0 else diverged_at,
        restart_objectives=restart_obj, sessions=session_info, certificate=cert,
        reference=theory_mod.landing(prediction, float(history["objective"][-1])))


def _number(v):
    """A recorded scalar as a Python int (integer measurements: ranks) or float."""
    return int(v) if np.issubdtype(np.asarray(v).dtype, np.integer) else float(v)


def _session_dicts(model, sizes, params, done):
    """One dict per session: its classes, the step it ended at, the cosine of every class mean
    with its class vector [K] and its last measurements."""
    out = []
    for t, (group, H, rec, end) in enumerate(zip(done.groups, done.features, done.records,
                                                 done.ends)):
        cos = prototype_cosines(dict(params, H=jnp.asarray(H)), sizes)
        out.append({"session": t, "classes": list(group), "end_step": end,
                    "cos_prototype": np.asarray(cos, np.float64).tolist(), "final": rec})
    return out


def _json_safe(obj):
    """Replace non-finite floats by None (JSON has no NaN) and numpy scalars by Python ones."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    return obj


def result_dict(result):
    """The result.json document of a Result."""
    finite = [v for v in result.restart_objectives if math.isfinite(v)]
    return _json_safe({
        "model": result.model,
        "config": result.config,
        "final": {**result.final, "undefined": result.undefined or {}},
        "theory": theory_mod.as_dict(result.theory),
        "history": {"step": result.steps, **result.history},
        "certificate": result.certificate,
        "reference": result.reference,
        "diverged": result.diverged_at is not None,
        "diverged_at": result.diverged_at,
        "restarts": {"objectives": result.restart_objectives,
                     "spread": (max(finite) - min(finite)) if finite else None},
        **({"sessions": result.sessions} if result.sessions is not None else {}),
    })


def atomic_write(path, write):
    """Call write(file_object) on a temporary file beside `path`, then rename it into place."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_result(result, out_dir):
    """Write out_dir/result.json and out_dir/params.npz, each atomically."""
    doc = json.dumps(result_dict(result), indent=1).encode()
    atomic_write(os.path.join(out_dir, "result.json"), lambda fh: fh.write(doc))
    atomic_write(os.path.join(out_dir, "params.npz"),
                 lambda fh: np.savez(fh, **{k: np.asarray(v) for k, v in result.params.items()}))


__all__ = ["train", "Result", "write_result", "result_dict", "check_config", "hyper_for",
           "predict", "atomic_write", "MODELS", "DEFAULTS"]
