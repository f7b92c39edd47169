"""What every model shares: sizes, targets, initialisation, the `Model` record and its registry.

One argument order for every model function (docs/architecture.md, "A model"):

    init(key, hyper, sizes)                     -> params
    objective(params, hyper, sizes, session)    -> []
    measure(params, hyper, sizes, session)      -> {name: []}
    project(params, hyper, sizes, session)      -> params      (constrained models only)
    theory(hyper, sizes)                        -> a closed-form prediction, or None
    bound_inputs(params, sizes)                 -> {name: array}  (global certificate, or None)
    lower_bound(inputs, hyper, sizes)           -> float        (float64 numpy, on the host)

`params` is a dict of arrays, `hyper` a dict of scalar leaves (the model's λ's, `lr`,
`init_scale`), `sizes` the static `Sizes`, and `session` None or a `Session` (class-incremental
training of the fixed classifiers). Sizes set shapes and are static; the hyperparameters are
traced, so a new value never recompiles and a grid is a `vmap` away.
"""
import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from ufm import metrics


class Sizes(NamedTuple):
    """Static sizes: K classes, n samples per class, feature dimension d.

    n is one count (balanced classes) or a tuple of K per-class counts (n_1, …, n_K); columns stay
    class-major either way.
    """

    K: int
    n: object  # int, or tuple of K ints
    d: int

    @property
    def balanced(self):
        return not isinstance(self.n, tuple)

    @property
    def counts(self):
        """(n_1, …, n_K)."""
        return (self.n,) * self.K if self.balanced else self.n

    @property
    def N(self):
        return sum(self.counts)

    @property
    def classes(self):
        """What ufm.metrics takes for the class layout: K, or the per-class counts."""
        return self.K if self.balanced else self.n


class Session(NamedTuple):
    """One class-incremental session (Yang et al.'s Neural Collapse Terminus, seed 000).

    active: [N] 1 for the samples optimised in this session, 0 for the frozen ones;
    logit_mask: [K] 1 for the classes of this session (used by a masked softmax);
    anchor: [d, N] the features when the session started, or None (no distillation);
    distill: [] the weight of the tie to `anchor`, or None.
    """

    active: Any
    logit_mask: Any
    anchor: Any = None
    distill: Any = None


class Hyper(NamedTuple):
    """A traced hyperparameter of a model: its name (the key in `hyper`, the flag --name with '_'
    as '-', a sweep axis), its default, what it is, and whether it must be > 0 (else ≥ 0).

    per_class: a vector of K values, one per class (in `hyper` an array [K]; the flag takes one
    value for every class or K values joined by ','; a sweep axis is a ';'-separated list of such
    vectors). Its default is one number, given to every class; bounds hold for every entry."""

    name: str
    default: float
    help: str
    positive: bool = False
    below: Optional[float] = None  # a strict upper bound, if any
    per_class: bool = False
    decay: bool = False  # a weight decay the model's closed forms need > 0 (else: no theorem)
    # an umbrella name that sets this one when it is not given on its own (lam_W for every layer's
    # lam_W<l>): the flag, train's keyword and a sweep axis of that name set each member
    tied: Optional[str] = None

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")


class Option(NamedTuple):
    """A static choice that builds a variant of a model (its own compiled program): `depth`,
    `loss`, `alpha`, `mask_softmax`. choices None: an integer ≥ 1; bool default: a switch."""

    name: str
    default: Any
    help: str
    choices: Optional[tuple] = None
    # for any other kind of value: convert(value) -> a hashable value (e.g. a file's matrix as a
    # tuple of tuples), raising ValueError naming the option for a bad one
    convert: Optional[Callable] = None

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")


# --- the hooks' call signatures (what a model file implements) -------------------------------

class Init(Protocol):
    def __call__(self, key: Any, hyper: dict, sizes: Sizes) -> dict: ...


class Objective(Protocol):
    def __call__(self, params: dict, hyper: dict, sizes: Sizes,
                 session: Optional[Session] = None) -> Any: ...


class Measure(Protocol):
    def __call__(self, params: dict, hyper: dict, sizes: Sizes,
                 session: Optional[Session] = None) -> dict: ...


class Project(Protocol):
    def __call__(self, params: dict, hyper: dict, sizes: Sizes,
                 session: Optional[Session] = None) -> dict: ...


class Theory(Protocol):
    """A closed-form prediction (a NamedTuple with at least `objective`, `structure` and
    `describe()`), or None where no theorem applies."""

    def __call__(self, hyper: dict, sizes: Sizes) -> Any: ...


class MinD(Protocol):
    def __call__(self, K: int) -> int: ...


class Check(Protocol):
    """Raise ValueError (naming the parameter) for sizes this variant cannot take."""

    def __call__(self, sizes: Sizes) -> None: ...


class BoundInputs(Protocol):
    """Traceable: the small arrays the global bound needs of a point (e.g. class logits)."""

    def __call__(self, params: dict, sizes: Sizes) -> dict: ...


class LowerBound(Protocol):
    """Float64 numpy on the host: a lower bound on the global minimum from any point's inputs."""

    def __call__(self, inputs: dict, hyper: dict, sizes: Sizes) -> float: ...


class Solver(Protocol):
    """Traceable: (params, iterations, relative gap) of the model's convex problem."""

    def __call__(self, model: "Model", sizes: Sizes, hyper: dict, max_iter: int, tol: float,
                 key: Any) -> tuple: ...


class Kinks(Protocol):
    def __call__(self, params: dict, sizes: Sizes) -> tuple: ...


class Constructions(Protocol):
    def __call__(self, hyper: dict, sizes: Sizes) -> dict: ...


class GlobalCertificate(NamedTuple):
    """The global certificate's hooks (docs/theory.md §5), one optional sub-record of a Model:
    where a convex reformulation exists, a lower bound on the global minimum from any point."""

    bound_inputs: BoundInputs
    lower_bound: LowerBound
    convex_min_d: Optional[MinD] = None  # K -> the d from which the convex bound is attained
    two_factor: Optional[Any] = None  # convex.TwoFactor: the reduced problem of a two-factor model
    solver: Optional[Solver] = None  # `--optimizer convex`, or None


CERTIFICATE_FIELDS = GlobalCertificate._fields


@dataclasses.dataclass(frozen=True, kw_only=True)
class Model:
    """A named UFM, built by keyword: pure functions (argument order in the module docstring;
    call signatures above) and what the CLI, sweeps, limits and the certificates need to know
    about it."""

    name: str
    description: str  # one line: the objective and where it comes from
    init: Init
    objective: Objective
    measure: Measure
    hypers: tuple  # Hyper specs of the λ's / bounds it takes
    theorem_min_d: MinD  # K -> the smallest d its theorem covers
    init_scale: float  # the paper's default std of the initialisation
    theory: Theory  # (hyper, sizes) -> closed-form prediction or None
    project: Optional[Project] = None  # the projection after every step (constrained models)
    depth: Optional[int] = None  # L, the weight matrices after H_1 (layered models)
    fixed_blocks: tuple = ()  # parameter blocks that are inputs, not variables (E)
    bias: Optional[str] = None  # None, 'free' or 'regularized'
    sessions: bool = False  # whether class-incremental sessions apply (fixed classifiers)
    options: tuple = ()  # (name, value) of the static options that built this variant
    certificate: Optional[GlobalCertificate] = None  # None: no convex reformulation known
    check: Optional[Check] = None  # ValueError for sizes this variant cannot take
    min_K: int = 2  # the fewest rows of W it takes: classes, or a regression's outputs m
    # The continuous symmetries (docs/theory.md §6.1): ((left, right), …) pairs of parameter blocks
    # whose product left·right is all the objective sees of them, so (left, right) → (left·Q,
    # Qᵀ·right) for any orthogonal Q leaves it unchanged. The second-order certificate
    # (ufm.hessian) takes the orbit's tangent space {(left·A, −A·right) : A skew} from these. A
    # third element activity(params) -> [b, N] bool makes the interface local (ReLU): A may only
    # couple units i, j whose activity rows are equal.
    symmetries: tuple = ()
    # the pre-activations [d, N], … at whose zeros the objective is not twice differentiable
    # (ReLU); None for a smooth model
    kinks: Optional[Kinks] = None
    # structured points a run can start from (`--init-from NAME`, docs/theory.md §6.5), or None
    constructions: Optional[Constructions] = None
    # (hyper, sizes) -> the max-margin problem of its λ → 0 limit (`--limit`, docs/theory.md
    # §5.4, §5.6): {"scales": Δ [K]} for Δ_k·z_kk − Δ_j·z_jk ≥ 1 per class, or {"supports": S
    # [K, N] bool} for a support pattern per sample (ntp); None: no limit mode
    limit: Optional[Callable] = None

    # the certificate's hooks, read through the sub-record (None without one)
    bound_inputs = property(lambda self: self._hook("bound_inputs"))
    lower_bound = property(lambda self: self._hook("lower_bound"))
    convex_min_d = property(lambda self: self._hook("convex_min_d"))
    two_factor = property(lambda self: self._hook("two_factor"))
    solver = property(lambda self: self._hook("solver"))

    def _hook(self, name):
        return None if self.certificate is None else getattr(self.certificate, name)

    def _replace(self, **changes):
        """A copy with `changes` (a certificate hook by its own name changes the sub-record;
        without a lower bound left, the model has no certificate)."""
        hooks = {k: changes.pop(k) for k in CERTIFICATE_FIELDS if k in changes}
        if hooks:
            current = self.certificate or GlobalCertificate(None, None)
            cert = current._replace(**hooks)
            changes["certificate"] = cert if cert.lower_bound is not None else None
        return dataclasses.replace(self, **changes)

    @property
    def hyper_names(self):
        return tuple(h.name for h in self.hypers)

    @property
    def tied_names(self):
        """The umbrella names this model's hyperparameters are tied to (`Hyper.tied`)."""
        return tuple(dict.fromkeys(h.tied for h in self.hypers if h.tied))

    def tied_to(self, umbrella):
        """The hyperparameters an umbrella name sets."""
        return tuple(h.name for h in self.hypers if h.tied == umbrella)

    @property
    def constrained(self):
        return self.project is not None

    def describe(self):
        """The one-line summary the CLI prints before a run."""
        variant = ", ".join(f"{k}={v}" for k, v in self.options if k != "depth")
        depth = f" (depth {self.depth})" if self.depth is not None else ""
        return f"{self.name}{depth}{f' [{variant}]' if variant else ''}: {self.description}"

    def defaults(self):
        """{name: default} of its hyperparameters."""
        return {h.name: h.default for h in self.hypers}


class Entry(NamedTuple):
    """A registered model family member: build(**options) -> Model, and the options it takes."""

    name: str
    build: Callable
    options: tuple  # Option specs
    family: str  # the module that registered it


REGISTRY = {}  # name -> Entry, in registration order


def register(name, options=()):
    """Decorator: `build(**options) -> Model` becomes the model `name` (its default variant is
    `build()` with every option at its default)."""

    def decorate(build):
        if name in REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        REGISTRY[name] = Entry(name, build, tuple(options), build.__module__)
        return build

    return decorate


def _check_option(option, value):
    if option.convert is not None:
        return
    if option.choices is not None:
        if value not in option.choices:
            raise ValueError(f"{option.name} ({option.flag}) must be one of "
                             f"{', '.join(map(str, option.choices))}, got {value!r}")
    elif isinstance(option.default, bool):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{option.name} ({option.flag}) must be True or False, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{option.name} ({option.flag}) must be an integer >= 1, got {value!r}")


def get_model(name, **options):
    """The model `name`, built with `options` (None or False: the default); ValueError naming the
    choices for an unknown model, and the models an option applies to for one it does not take.
    Cached: the same name and options give the same Model object (one compiled program)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(REGISTRY)}")
    entry = REGISTRY[name]
    takes = {o.name: o for o in entry.options}
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    foreign = [k for k in given if k not in takes]
    if foreign:
        owners = [e.name for e in REGISTRY.values() if {o.name for o in e.options} >= set(foreign)]
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        verb = "applies" if len(foreign) == 1 else "apply"
        raise ValueError(f"{' and '.join(k for k in foreign)} ({flags}) {verb} only to "
                         f"{_models_phrase(owners)}, not to {name!r}")
    chosen = {}
    for option in entry.options:
        value = given.get(option.name, option.default)
        if isinstance(value, np.integer):
            value = int(value)
        if option.convert is not None and value is not None:
            value = option.convert(value)
        if option.choices is not None and value not in option.choices:
            elsewhere = [e.name for e in REGISTRY.values() for o in e.options
                         if o.name == option.name and o.choices and value in o.choices]
            if elsewhere:
                raise ValueError(f"{option.name} ({option.flag}) {value!r} is defined only for "
                                 f"{', '.join(elsewhere)}; {name!r} takes "
                                 f"{', '.join(map(str, option.choices))}")
        _check_option(option, value)
        chosen[option.name] = value
    return _build(name, tuple(chosen.items()))


def _models_phrase(names):
    families = {REGISTRY[n].family.rsplit(".", 1)[-1] for n in names}
    what = {"layered": "the deep models", "constrained": "the constrained models"}
    label = what.get(families.pop(), "the models") if len(families) == 1 else "the models"
    return f"{label} ({', '.join(names)})"


@functools.lru_cache(maxsize=None)
def _build(name, options):
    model = REGISTRY[name].build(**dict(options))
    _check_record(REGISTRY[name], model)
    return model._replace(options=options)


def _check_record(entry, model):
    """A malformed declaration is an error when the model is first built (at import, for every
    default variant), naming the file that declared it — not a TypeError deep in a run."""
    where = f"{entry.family} (model {entry.name!r})"
    if not isinstance(model, Model):
        raise TypeError(f"{where}: its build function must return a Model, got "
                        f"{type(model).__name__}")
    names = []
    for h in model.hypers:
        if not isinstance(h, Hyper):
            raise TypeError(f"{where}: hypers must be Hyper records, got {h!r}")
        problems = []
        if not (isinstance(h.name, str) and h.name.isidentifier()):
            problems.append("its name must be an identifier")
        if isinstance(h.default, bool) or not isinstance(h.default, (int, float)) or not \
                np.isfinite(h.default) or h.default < 0 or (h.positive and h.default <= 0):
            bound = "> 0" if h.positive else ">= 0"
            problems.append(f"its default must be a finite number {bound}")
        if not isinstance(h.help, str) or not h.help:
            problems.append("it needs a help text")
        if h.below is not None and (isinstance(h.below, bool) or not isinstance(
                h.below, (int, float)) or h.default >= h.below):
            problems.append("`below` must be a number above the default")
        if not isinstance(h.per_class, bool) or not isinstance(h.decay, bool):
            problems.append("per_class and decay must be True or False")
        if h.tied is not None and not (isinstance(h.tied, str) and h.tied.isidentifier()
                                       and h.tied != h.name):
            problems.append("`tied` must be another identifier (the umbrella name) or None")
        if problems:
            raise TypeError(f"{where}: malformed Hyper {h.name!r}: {'; '.join(problems)}")
        names.append(h.name)
    if len(set(names)) != len(names):
        raise TypeError(f"{where}: a hyperparameter is declared twice: {names}")
    for o in entry.options:
        if o.choices is not None and o.default not in o.choices:
            raise TypeError(f"{where}: Option {o.name!r}'s default {o.default!r} is not one of "
                            f"its choices {o.choices}")


def models():
    """{name: default Model} of every registered model, in registration order."""
    return {name: get_model(name) for name in REGISTRY}


def hyper_specs():
    """Every traced hyperparameter some model takes, by name (the first registration's spec)."""
    out = {}
    for name in REGISTRY:
        for h in get_model(name).hypers:
            out.setdefault(h.name, h)
    return out


def tied_specs():
    """Every umbrella name some model ties hyperparameters to -> the models that tie to it."""
    out = {}
    for name in REGISTRY:
        for umbrella in get_model(name).tied_names:
            out.setdefault(umbrella, []).append(name)
    return out


def option_specs():
    """Every static option some model takes, by name, with the models that take it."""
    out = {}
    for entry in REGISTRY.values():
        for o in entry.options:
            out.setdefault(o.name, (o, []))[1].append(entry.name)
    return out


# --- pieces the families share ---------------------------------------------------------------

def one_hot_targets(sizes, dtype=None):
    """Y = I_K ⊗ 1_nᵀ  [K, N] (class-major columns; with per-class counts, block k has n_k)."""
    if sizes.balanced:
        return jnp.kron(jnp.eye(sizes.K, dtype=dtype), jnp.ones((1, sizes.n), dtype=dtype))
    labels = metrics.class_labels(sizes.counts, sizes.N)
    return jnp.asarray(labels[None, :] == np.arange(sizes.K)[:, None], dtype)


def sq(A):
    """‖A‖² (Frobenius)."""
    return jnp.sum(A * A)


def gaussian_blocks(key, shapes, scale):
    """{name: N(0, s²) array of shapes[name]}; `scale` a scalar or a dict per block."""
    keys = jax.random.split(key, len(shapes))
    out = {}
    for k, (name, shape) in zip(keys, shapes.items()):
        s = scale[name] if isinstance(scale, dict) else scale
        out[name] = s * jax.random.normal(k, shape, dtype=jnp.result_type(float))
    return out


def balanced_only(prediction):
    """The theorems of Tirer & Bruna and Zhu et al. are for balanced classes: None otherwise."""
    return lambda hyper, sizes: prediction(hyper, sizes) if sizes.balanced else None


LAMBDA = 5e-3  # every λ's default
BOUND = 1.0  # E_H, E_W: the squared-norm bounds' default


TWO_FACTOR_SYMMETRY = (("W", "H"),)  # WH = (WQ)(QᵀH)


def lam(name, what, decay=True, tied=None):
    """A weight decay λ (default LAMBDA); decay=False for one the closed forms allow at 0 (λ_b);
    tied: the umbrella name that sets it too (`Hyper.tied`)."""
    return Hyper(name, LAMBDA, f"{what} (default {LAMBDA:g})", decay=decay, tied=tied)
