"""What a run is judged against, and when it stops: the closed-form prediction (where a theorem
applies), the stopping tolerance, the convergence certificate written with every result
(docs/theory.md §5: what `converged` and `global` guarantee), and the judgements the CLI prints
from it (`convergence_warning`)."""
import math

import jax.numpy as jnp
import numpy as np

from ufm import optimise

# `converged` in the certificate: relative gradient norm ≤ tol, this tol unless one is given.
CERTIFICATE_TOL = {"float32": 1e-3, "float64": 1e-6}
# `global` in the certificate: (objective − lower bound)/max(|objective|, floor) ≤ this. The bound is
# computed in float64; a float32 run's objective carries its own round-off (≈ 1e-7 relative).
GLOBAL_TOL = {"float32": 1e-5, "float64": 1e-9}


def _dtype(dtype=None):
    return str(jnp.dtype(dtype or jnp.result_type(float)))


def stopping_tol(optimizer, tol, dtype=None):
    """The tolerance at which a run stops: `tol` when given; else the optimiser's own (L-BFGS:
    about round-off of the dtype); for first-order methods None (every step runs, as in the
    papers)."""
    if tol is not None:
        return float(tol)
    stop = optimise.get_optimizer(optimizer).stop_tol
    return None if stop is None else dict(stop)[_dtype(dtype)]


def certificate_tol(tol, dtype=None):
    """The tolerance `converged` is judged against: `tol`, else CERTIFICATE_TOL of the dtype."""
    if tol is not None:
        return float(tol)
    return CERTIFICATE_TOL[_dtype(dtype)]


def check_tol(tol):
    """ValueError unless tol is None or a number in (0, 1): a relative gradient norm of 1 or more
    is no test of stationarity (it would certify the initialisation)."""
    if tol is None:
        return
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)):
        raise ValueError(f"tol (--tol) must be a number in (0, 1), got {tol!r}")
    if not (math.isfinite(float(tol)) and 0 < float(tol) < 1):
        raise ValueError(f"tol (--tol) must be in (0, 1) (a relative gradient norm), got "
                         f"{float(tol)}")


def predict(model, sizes, hyper):
    """The closed-form prediction, or None where no theorem applies (d too small, some λ = 0)."""
    if sizes.d < model.theorem_min_d(sizes.K):
        return None
    if any(h.decay and float(hyper[h.name]) == 0 for h in model.hypers):
        return None  # the theorems assume positive weight decay (Hyper.decay)
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
        lams = ", ".join(f"{k}={np.array2string(np.asarray(hyper[k], np.float64))}" if np.ndim(
            hyper[k]) else f"{k}={float(hyper[k]):g}" for k in model.hyper_names if k in hyper)
        raise ValueError(f"the closed form of {model.name} is undefined at {lams} ({err}): "
                         f"the λ's are outside the range where it can be evaluated in float64"
                         ) from None
    return prediction


def certificate(objectives, grad_norm, converged_at, steps_taken, tol, reference=None,
                diverged=False):
    """The convergence certificate of one run, a JSON-ready dict.

    objectives: the recorded objective [T]; grad_norm: ‖∇f‖/max(|f|, floor) at the end (the
    projected-gradient step for constrained models); converged: grad_norm ≤ tol and the run did
    not diverge or blow up (optimise.blown_up: a huge objective makes the relative gradient tiny,
    so the test alone could certify an explosion); rel_decrease: the
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
            "converged": bool(grad_norm <= tol and not diverged),
            "converged_at": None if diverged else converged_at,
            "steps_taken": int(steps_taken), "closed_form_gap": gap}


def evaluation_error(objective, bound, sizes, dtype=None):
    """A bound on the rounding error of objective − bound: every term of an objective is ≥ 0, so
    summing its N·K + N·d terms (pairwise) errs by at most ⌈log₂ n⌉·u·f, u the unit roundoff of
    the run's dtype, plus a few u per term for its own evaluation (the stable CE, products); the
    float64 bound (K×K arithmetic) by a few hundred u₆₄·K·|bound|. Arrays of objectives and
    bounds (a sweep's points) give an array."""
    n = sizes.N * (sizes.K + sizes.d)
    u = float(np.finfo(np.dtype(_dtype(dtype))).eps) / 2
    u64 = float(np.finfo(np.float64).eps) / 2
    error = ((math.ceil(math.log2(max(n, 2))) + 16) * u * np.abs(objective)
             + 256 * u64 * sizes.K * np.abs(bound))
    return float(error) if np.ndim(error) == 0 else error


def global_certificate(model, inputs, hyper, sizes, objective, dtype=None, sessions=False):
    """The global part of the certificate: `lower_bound` (a float64 bound on the global minimum,
    valid from any point, docs/theory.md §5), `global_gap` = objective − lower_bound, `global`
    (relative gap ≤ GLOBAL_TOL of the dtype, and the bound not above the objective by more than
    `evaluation_error`, both numbers' rounding), and `global_note` saying why a field is null or
    why the gap may stay open (d below what the convex solution needs)."""
    tol = GLOBAL_TOL[_dtype(dtype)]
    out = {"lower_bound": None, "global_gap": None, "global": None, "global_tol": tol,
           "global_note": None}
    if model.lower_bound is None:
        out["global_note"] = (f"{model.name} declares no convex reformulation (its model file "
                              f"gives no lower_bound): no global bound")
        return out
    if sessions:
        out["global_note"] = ("class-incremental sessions: each session solves another problem; "
                              "no global bound")
        return out
    objective = float(objective)
    finite = math.isfinite(objective) and all(
        np.all(np.isfinite(np.asarray(v, np.float64))) for v in inputs.values())
    with np.errstate(all="ignore"):
        bound = float(model.lower_bound(inputs, hyper, sizes)) if finite else math.nan
    if not (math.isfinite(bound) and math.isfinite(objective)):
        out["global_note"] = "the objective or its dual bound is not finite (diverged run?)"
        return out
    gap = objective - bound
    error = evaluation_error(objective, bound, sizes, dtype)
    out.update(lower_bound=bound, global_gap=gap, evaluation_error=error,
               **{"global": bool(-error <= gap <= tol * max(abs(objective),
                                                            optimise.OBJECTIVE_FLOOR))})
    if gap < -error:  # a valid bound cannot exceed a value the model reached: never certify it
        out["global_note"] = (f"the dual bound is above the objective by {-gap:.3g}, more than "
                              f"both numbers' evaluation error ({error:.2g}): the bound or the "
                              f"objective is wrong; not certified")
        return out
    need = model.convex_min_d(sizes.K)
    if sizes.d < need and not out["global"]:
        out["global_note"] = (f"d = {sizes.d} < {need}: the bound is the convex problem's minimum, "
                              f"which this model may not reach at this d, so the gap can stay "
                              f"open at its best point")
    return out


FAR_FROM_OPTIMUM = 1e-2  # a converged run this far (relative) from the optimum is somewhere else


def stationary_warning(cert, cfg):
    """For a converged run: one line when it is far from the closed form or from the global
    bound (a stationary point that is not the optimum: a saddle such as the origin that
    `--init-scale 0` starts at, a local minimum, a stop at step 0), or None."""
    gap, where = cert.get("closed_form_gap"), "the closed form"
    if gap is None and cert.get("global") is False and cert.get("global_note") is None:
        bound = cert["lower_bound"]
        gap, where = cert["global_gap"] / max(abs(bound), 1e-6), "the certified global bound"
    if gap is None or abs(gap) <= FAR_FROM_OPTIMUM:
        return None
    start = " (--init-scale 0 starts at the origin, a stationary point)" if cfg.get(
        "init_scale") == 0 else ""
    return (f"ufm: warning: the run converged (relative gradient norm {cert['grad_norm']:.1e} "
            f"after {cert['steps_taken']} steps) but {gap:.1e} (relative) from {where}: a "
            f"stationary point that is not the optimum{start}; try another --seed or "
            f"--init-scale")


def convergence_warning(result, model):
    """One line saying that a run (a runner.Result of `model`) did not converge and what to try,
    a converged one that is far from its optimum (`stationary_warning`), or None."""
    cert = result.certificate
    if cert is None or result.diverged_at is not None:
        return None
    if cert["converged"]:
        return stationary_warning(cert, result.config)
    cfg = result.config
    f = np.asarray(result.history["objective"], np.float64)
    if f.size > 1 and np.all(f == f[0]):  # more steps would not help
        fix = "; try --x64" if cfg["dtype"] == "float32" else ""
        return (f"ufm: warning: the run did not converge and never moved: the objective is "
                f"{f[0]:.6g} at every record (relative gradient norm {cert['grad_norm']:.1e} > "
                f"tol {cert['tol']:.0e}); {cfg['optimizer']} found no step that decreases it"
                f"{fix or '; try another --optimizer'}")
    gap = cert["closed_form_gap"]
    far = f", and it ends {gap:.1e} (relative) from the closed form" if gap is not None else ""
    tries = [f"more --steps (ran {cert['steps_taken']})"]
    if cfg["optimizer"] != "lbfgs" and not model.constrained:
        tries.insert(0, "--optimizer lbfgs")
    if model.solver is not None and cfg["optimizer"] != "convex":
        tries.insert(0, "--optimizer convex")
    if cfg["optimizer"] == "gd":
        tries.append("--optimizer momentum")
    return (f"ufm: warning: the run did not converge: relative gradient norm "
            f"{cert['grad_norm']:.1e} > tol {cert['tol']:.0e}{far}; try {' or '.join(tries)}")
