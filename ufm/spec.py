"""One run's specification: a frozen record built and checked once (docs/architecture.md, "A
run").

`build(...)` turns what a user asked for (by keyword from Python, or from the flags the CLI
generates out of the model registry) into a `RunSpec`, running every check of a configuration in
one place and one order, before anything is traced or written:

    1. the model and its static options      (get_model: names, choices, files)
    2. the λ → 0 limit mode, when asked       (its own sizes check; nothing below applies)
    3. the optimiser, and that it can run the model
    4. the tolerance
    5. sizes and per-class counts
    6. the hyperparameters: names, defaults, bounds, representable in the dtype, the solver's needs
    7. seed and step count; that one run fits in memory
    8. the closed form, evaluated (a configuration where it overflows is refused here)
    9. class-incremental sessions
   10. the second-order certificate and saddle escapes
   11. where a run starts (init_from)

`runner.run(spec)` executes it, `sweep` builds one per static combination and checks each grid
value with `RunSpec.with_hyper`, `proofs` and `hessian` take its model, sizes and hyperparameters.
A RunSpec is immutable: `replace(**changes)` builds a new, re-checked one.
"""
import dataclasses
import types
from typing import Any, Mapping, Optional

import jax.numpy as jnp
import numpy as np

from ufm import certificate as cert_mod
from ufm import config, limits, optimise
from ufm import hessian as hessian_mod
from ufm.config import DEFAULTS, RUN_LEAVES
from ufm.models import Model, Sizes, get_model

@dataclasses.dataclass(frozen=True, eq=False)
class RunSpec:
    """Everything one run needs, checked (see the module docstring for the order)."""

    name: str  # the model's registry name, as asked
    model: Model  # the variant its options built
    sizes: Sizes
    hyper: Mapping[str, Any]  # the model's λ's (defaults filled), lr, init_scale; read-only
    optimizer: optimise.Optimizer
    steps: int
    log_every: int
    seed: int
    restarts: int
    tol: Optional[float]  # as asked (None: the defaults below)
    stop: Optional[float]  # the relative gradient norm at which the run stops (None: never)
    certificate_tol: float  # what `converged` is judged against
    sessions: Optional[tuple]  # class groups of incremental sessions, or None
    distill: float
    allow_small_d: bool
    hessian: Optional[str]  # None or a method of ufm.hessian.METHODS
    escape: bool
    init_from: Optional[str]
    limit: bool
    dtype: str
    prediction: Any = None  # the closed form (ufm.theory), or None

    def replace(self, **changes):
        """A new RunSpec with `changes` applied to the arguments of `build`, checked again."""
        return build(**dict(self.arguments(), **changes))

    def with_hyper(self, hyper):
        """This spec at other hyperparameter values (a sweep's grid point: λ's, lr, init_scale
        by name), checked as `build` checks them; the prediction is not evaluated."""
        merged = dict(self.hyper, **hyper)
        _check_hyper(self.model, self.sizes, merged, self.optimizer, self.steps, self.restarts,
                     self.allow_small_d)
        return dataclasses.replace(self, hyper=types.MappingProxyType(merged), prediction=None)

    @property
    def lams(self):
        """The model's hyperparameters by name (the traced ones besides lr and init_scale)."""
        return {k: v for k, v in self.hyper.items() if k not in RUN_LEAVES}

    def arguments(self):
        """The keyword arguments of `build` that rebuild this spec."""
        return dict(model=self.model, K=self.sizes.K, n=self.sizes.n, d=self.sizes.d,
                    steps=self.steps, log_every=self.log_every, seed=self.seed,
                    lr=self.hyper["lr"], init_scale=self.hyper["init_scale"],
                    restarts=self.restarts, optimizer=self.optimizer.name,
                    allow_small_d=self.allow_small_d, sessions=self.sessions,
                    distill=self.distill, tol=self.tol, hessian=self.hessian, escape=self.escape,
                    init_from=self.init_from, limit=self.limit, **self.lams)

    def config(self):
        """The configuration a Result records (every setting, defaults included)."""
        cfg = dict(model=self.name, K=self.sizes.K, n=self.sizes.n, d=self.sizes.d,
                   steps=self.steps, log_every=self.log_every, seed=self.seed,
                   restarts=self.restarts, optimizer=self.optimizer.name, tol=self.stop,
                   allow_small_d=self.allow_small_d, dtype=self.dtype, **self.hyper)
        cfg.update({k: v for k, v in self.model.options if k != "depth"})  # the variant's options
        if self.model.sessions:
            cfg.update(sessions=None if self.sessions is None else [list(g) for g in
                                                                    self.sessions],
                       distill=self.distill)
        if self.model.depth is not None:
            from ufm import metrics

            cfg.update(depth=self.model.depth, rank_tol=metrics.RANK_TOL)
        return cfg


def build(model="bias-free", *, K=DEFAULTS["K"], n=DEFAULTS["n"], d=DEFAULTS["d"],
          steps=DEFAULTS["steps"], log_every=DEFAULTS["log_every"], seed=0, lr=DEFAULTS["lr"],
          init_scale=None, restarts=1, optimizer="gd", allow_small_d=False, loss=None,
          alpha=None, mask_softmax=False, depth=None, options=None, sessions=None, distill=0.0,
          tol=None, hessian=None, escape=False, init_from=None, limit=False, **lams):
    """The checked RunSpec of a run; ValueError naming the parameter, the value and what is
    allowed for the first thing wrong, in the order of the module docstring.

    model: a registry name, or a built `Model` (its options kept; loss … options then must be
    unset). lams: the model's λ's by name (unset ones take its defaults). The other arguments as
    `runner.train` documents them.
    """
    # 1. the model
    if isinstance(model, Model):
        if loss is not None or alpha is not None or mask_softmax or depth is not None or options:
            raise ValueError("a built Model carries its options: give the model's name to set "
                             "loss, alpha, mask_softmax, depth or options")
        spec, name = model, model.name
    else:
        spec, name = get_model(model, loss=loss, alpha=alpha, mask_softmax=mask_softmax,
                               depth=depth, **(options or {})), model
    dtype = str(jnp.result_type(float))
    # 2. the limit mode
    if limit:
        return _build_limit(spec, name, K, n, d, steps, tol, dtype, lams)
    # 3., 4. optimiser and tolerance
    opt = optimise.get_optimizer(optimizer, spec)
    cert_mod.check_tol(tol)
    # 5., 6. sizes and hyperparameters
    n = config.parse_counts(n, K if isinstance(K, (int, np.integer)) else None)
    sizes = Sizes(K, n, d)
    hyper = config.hyper_for(spec, lams, lr, init_scale, K)
    _check_hyper(spec, sizes, hyper, opt, steps, restarts, allow_small_d, log_every)
    # 7. seed, steps, memory
    limits.check_seed(seed)
    limits.check_steps(steps)
    limits.check_run(spec, sizes, opt, restarts, steps // log_every + 2)
    # 8. the closed form
    prediction = cert_mod.checked_prediction(spec, sizes, hyper)
    # 9. sessions
    distill = float(distill)
    groups = config.check_sessions(spec, sessions, distill, K, restarts, opt)
    if groups is not None and tol is not None:
        raise ValueError("tol (--tol) does not apply with --sessions: each session runs its "
                         "--steps")
    # 10. second order
    if escape and hessian is None:
        hessian = "auto"
    if hessian is not None:
        hessian_mod.check_method(hessian)
        hessian_mod.check_smooth(spec)
        if groups is not None:
            raise ValueError("hessian (--hessian) classifies a single run's point; with "
                             "--sessions each session solves another problem")
    # 11. the start
    if init_from is not None:
        _check_start(spec, init_from, restarts, groups)
    return RunSpec(name=name, model=spec, sizes=sizes, hyper=types.MappingProxyType(hyper),
                   optimizer=opt, steps=steps, log_every=log_every, seed=seed,
                   restarts=restarts, tol=tol, stop=cert_mod.stopping_tol(opt, tol),
                   certificate_tol=cert_mod.certificate_tol(tol), sessions=groups,
                   distill=distill, allow_small_d=allow_small_d, hessian=hessian,
                   escape=bool(escape), init_from=init_from, limit=False, dtype=dtype,
                   prediction=prediction)


def _check_hyper(model, sizes, hyper, opt, steps, restarts, allow_small_d, log_every=1):
    """Sizes, the hyperparameters' bounds, the solver's needs, representable in the dtype."""
    config.check_config(model, sizes, hyper, steps, log_every, restarts, allow_small_d)
    try:
        config.check_solver(model, hyper, opt)
    except ValueError as err:
        if model.limit is not None:  # at λ = 0 the minimiser is at infinity: the limit's
            raise ValueError(f"{err}; the λ → 0 limit itself is --limit (limit=True)") from None
        raise
    if model.limit is not None:
        for name in ("lam_W", "lam_H"):
            if name in hyper and float(hyper[name]) == 0.0:
                raise ValueError(f"{config.named(name)} = 0: {model.name} has no minimiser "
                                 f"without both weight decays (its loss only approaches its "
                                 f"infimum as the logits grow); the λ → 0 limit itself is "
                                 f"--limit (limit=True)")
    limits.check_representable(hyper)


def _check_start(model, init_from, restarts, groups):
    """What can be said of init_from before reading it (runner reads the file or construction)."""
    if restarts > 1 or groups is not None or model.constrained:
        raise ValueError("init_from (--init-from) starts one unconstrained run from given "
                         "parameters: not with --restarts, --sessions or a constrained model")
    if not isinstance(init_from, str):
        raise ValueError(f"init_from (--init-from) must be a .npz file or a construction name, "
                         f"got {init_from!r}")


LIMIT_TOL = {"float32": 1e-4, "float64": 1e-10}  # the UFM-SVM's relative duality gap


def limit_models():
    """The registered models with a λ → 0 limit mode (`Model.limit`)."""
    from ufm.models import MODELS

    return tuple(name for name, m in MODELS.items() if m.limit is not None)


def _build_limit(model, name, K, n, d, steps, tol, dtype, lams):
    """The λ → 0 limit's spec: the margin-scaled UFM-SVM of a CE model (ufm.limit). The λ's do
    not enter; the hyperparameters that set the margin scales do (ce-adjusted's --cdt-gamma)."""
    if model.limit is None:
        raise ValueError(f"limit (--limit) solves the λ → 0 limit of {', '.join(limit_models())}"
                         f", not {name!r}")
    limits.check_steps(steps)
    cert_mod.check_tol(tol)
    n = config.parse_counts(n, K if isinstance(K, (int, np.integer)) else None)
    sizes = Sizes(K, n, d)
    if isinstance(d, (int, np.integer)) and isinstance(K, (int, np.integer)) and d < K - 1:
        raise ValueError(f"d (--d)={d}: the limit direction has rank K − 1 = {K - 1}, so "
                         f"--limit needs d >= K − 1")
    hyper = config.hyper_for(model, lams, 1.0, 1.0, K)
    config.check_config(model, sizes, hyper, steps,
                        allow_small_d=True)  # the limit's own need is checked above
    problem = model.limit(hyper, sizes)
    scales = np.asarray(problem.get("scales", [1.0]), np.float64)
    if not np.all(np.isfinite(scales) & (scales > 0)) or scales.max() / scales.min() > 1e12:
        raise ValueError(f"the λ → 0 limit's margin scales Δ = {scales.min():.3g} … "
                         f"{scales.max():.3g} from these hyperparameters must be positive and "
                         f"within a ratio of 1e12 (lower --cdt-gamma)")
    stop = LIMIT_TOL[dtype] if tol is None else float(tol)
    return RunSpec(name=name, model=model, sizes=sizes, hyper=types.MappingProxyType(hyper),
                   optimizer=optimise.get_optimizer("gd"), steps=steps, log_every=steps, seed=0,
                   restarts=1, tol=tol, stop=stop, certificate_tol=stop, sessions=None,
                   distill=0.0, allow_small_d=True, hessian=None, escape=False, init_from=None,
                   limit=True, dtype=dtype)


__all__ = ["RunSpec", "build", "limit_models"]
