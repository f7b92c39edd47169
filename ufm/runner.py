"""Validated single runs: `train(...)` checks a configuration, runs it compiled, and returns a
`Result`; `write_result` stores it atomically as result.json + params.npz."""
import json
import math
import os
import tempfile
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ufm import theory as theory_mod
from ufm import optimise
from ufm.models import MODELS, Sizes, get_model

DEFAULT_LAMBDA = 5e-3
DEFAULTS = dict(K=4, n=50, d=20, lr=0.1, steps=20000, log_every=500, seed=0, restarts=1,
                optimizer="gd")
HYPER_FLAGS = ("lam_W", "lam_H", "lam_b", "lam_W1", "lam_W2", "lam_H1")


def flag(name):
    """The CLI flag of a parameter name: lam_W -> --lam-W."""
    return "--" + name.replace("_", "-")


def _named(name):
    return f"{name} ({flag(name)})"


def check_config(model, sizes, hyper, steps, log_every=1, restarts=1, allow_small_d=False):
    """Raise ValueError naming the parameter, the value and what is allowed; return nothing.

    `hyper`: the model's λ's with `lr` and `init_scale`. Runs before anything is traced.
    """
    for name, value in (("K", sizes.K), ("n", sizes.n), ("d", sizes.d), ("steps", steps),
                        ("log_every", log_every), ("restarts", restarts)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{_named(name)} must be an integer, got {value!r}")
    if sizes.K < 2:
        raise ValueError(f"{_named('K')} must be >= 2, got {sizes.K}")
    for name in ("n", "d", "steps", "log_every", "restarts"):
        value = {"n": sizes.n, "d": sizes.d, "steps": steps, "log_every": log_every,
                 "restarts": restarts}[name]
        if value < 1:
            raise ValueError(f"{_named(name)} must be >= 1, got {value}")
    for name, value in hyper.items():
        for part, v in (value.items() if isinstance(value, dict) else [(None, value)]):
            v = float(v)
            if not math.isfinite(v) or v < 0:
                what = _named(name) if part is None else f"{_named(name)}[{part!r}]"
                raise ValueError(f"{what} must be finite and >= 0, got {v}")
    if float(hyper["lr"]) <= 0:
        raise ValueError(f"{_named('lr')} must be > 0, got {float(hyper['lr'])}")
    need = model.theorem_min_d(sizes.K)
    if sizes.d < need and not allow_small_d:
        raise ValueError(
            f"{_named('d')}={sizes.d} is below what the theorem for {model.name} needs "
            f"(d >= {need} for K={sizes.K}); pass --allow-small-d (allow_small_d=True) to run "
            f"it anyway with no closed-form prediction")


def hyper_for(model, lams, lr, init_scale):
    """The full hyper dict of a model: its λ's (defaults filled in), lr and init_scale.

    A λ the model does not take is a ValueError naming it and the ones it does take.
    """
    for name, value in lams.items():
        if value is not None and name not in model.hyper_names:
            takes = ", ".join(model.hyper_names)
            raise ValueError(f"{_named(name)} does not apply to model {model.name!r} "
                             f"(it takes: {takes})")
    hyper = {k: DEFAULT_LAMBDA if lams.get(k) is None else float(lams[k])
             for k in model.hyper_names}
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


def train(model="bias-free", *, K=4, n=50, d=20, steps=DEFAULTS["steps"],
          log_every=DEFAULTS["log_every"], seed=0, lr=DEFAULTS["lr"], init_scale=None,
          restarts=1, optimizer="gd", allow_small_d=False, progress=None, **lams):
    """Validate, run gradient descent compiled (R restarts vmapped, best kept), return a Result.

    lams: the model's λ's by name (lam_W, lam_H, lam_b, lam_W1, lam_W2, lam_H1); unset ones are
    5e-3. dtype follows the caller's jax_enable_x64. `progress(steps_done)` is called between
    compiled chunks of the scan.
    """
    spec = get_model(model)
    unknown = set(lams) - set(HYPER_FLAGS)
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)}; known: {HYPER_FLAGS}")
    if optimizer not in optimise.OPTIMIZERS:
        raise ValueError(f"optimizer (--optimizer) must be one of {optimise.OPTIMIZERS}, "
                         f"got {optimizer!r}")
    sizes = Sizes(K, n, d)
    hyper = hyper_for(spec, lams, lr, init_scale)
    check_config(spec, sizes, hyper, steps, log_every, restarts, allow_small_d)
    key = jax.random.PRNGKey(seed)
    jhyper = optimise.as_hyper(hyper)
    if progress is not None:  # compiled chunks with reports in between
        keys = jax.random.split(key, restarts) if restarts > 1 else key
        hyp = optimise.broadcast_hyper(jhyper, restarts) if restarts > 1 else jhyper
        traj = optimise.simulate_with_progress(spec, sizes, keys, hyp, steps, log_every,
                                               optimizer, progress, batched=restarts > 1)
    else:
        traj = optimise.compiled_simulation(spec, sizes, steps, log_every, optimizer,
                                            restarts)(key, jhyper)
    if restarts > 1:
        restart_obj = [float(v) for v in np.asarray(traj.history["objective"][:, -1])]
        traj = optimise.pick(traj, optimise.best_restart(traj))
    else:
        restart_obj = [float(traj.history["objective"][-1])]
    history = {k: np.asarray(v) for k, v in traj.history.items()}
    diverged_at = int(traj.diverged_at)
    config = dict(model=model, K=K, n=n, d=d, steps=steps, log_every=log_every, seed=seed,
                  restarts=restarts, optimizer=optimizer, allow_small_d=allow_small_d,
                  dtype=str(jnp.result_type(float)), **hyper)
    return Result(
        model=model, config=config, params=jax.tree.map(np.asarray, traj.params),
        steps=np.asarray(traj.steps), history=history,
        final={k: float(v[-1]) for k, v in history.items()},
        theory=predict(spec, sizes, hyper), diverged_at=None if diverged_at < 0 else diverged_at,
        restart_objectives=restart_obj)


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
        "final": result.final,
        "theory": theory_mod.as_dict(result.theory),
        "history": {"step": result.steps, **result.history},
        "diverged": result.diverged_at is not None,
        "diverged_at": result.diverged_at,
        "restarts": {"objectives": result.restart_objectives,
                     "spread": (max(finite) - min(finite)) if finite else None},
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
