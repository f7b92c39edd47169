"""A run's configuration, checked once at the library's boundary: sizes, counts, the model's
hyperparameters (from its record: names, defaults, bounds), sessions (docs/architecture.md,
"Validation"). Every check raises ValueError naming the parameter, the value and what is allowed,
before anything is traced or written; the CLI only turns argv into these calls."""
import math
import re

import numpy as np

DEFAULTS = dict(K=4, n=50, d=20, lr=0.1, steps=20000, log_every=500, seed=0, restarts=1,
                optimizer="gd")
RUN_LEAVES = ("lr", "init_scale")  # traced leaves of every run besides the model's λ's
LAYER_LAMBDA = re.compile(r"lam_W[1-9][0-9]*$")  # lam_W1, lam_W2, …: one per layer of a deep model


def flag(name):
    """The CLI flag of a parameter name: lam_W -> --lam-W."""
    return "--" + name.replace("_", "-")


def named(name):
    return f"{name} ({flag(name)})"


def int_or_ints(text, message):
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
            raise ValueError(f"{named('n')} must be an integer or a list of K per-class counts "
                             f"joined by ',' or '/', got {given!r}") from None
        n = parts[0] if len(parts) == 1 and not any(c in text for c in ",/") else tuple(parts)
    if isinstance(n, (list, tuple, np.ndarray)):
        n = tuple(int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v
                  for v in n)
        if K is not None and len(n) != K:
            shown = given if isinstance(given, str) else ",".join(map(str, n))
            raise ValueError(f"{named('n')} {shown} has {len(n)} per-class counts but K (--K) "
                             f"is {K}: give one count or exactly K")
        if n and len(set(n)) == 1:
            return n[0]
    return n


def takes(model, name):
    """Whether `model` takes the hyperparameter `name` (or an umbrella name some of its
    hyperparameters are tied to: lam_W for every W_l of a layered model), or it is one of every
    run's leaves (lr, init_scale)."""
    return name in RUN_LEAVES or name in model.hyper_names or name in model.tied_names


def check_names(model, names):
    """ValueError for the first of `names` that no model takes (an unknown hyperparameter) or that
    `model` does not take, naming what it takes."""
    from ufm.models import hyper_specs, tied_specs

    known = set(hyper_specs()) | set(tied_specs()) | set(RUN_LEAVES)
    unknown = sorted(k for k in names if k not in known and not LAYER_LAMBDA.match(k))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown}; known: {', '.join(sorted(known))} "
                         f"and lam_W<l> for a deep model's layer l")
    for name in names:
        if not takes(model, name):
            raise ValueError(f"{named(name)} does not apply to model {model.name!r} "
                             f"(it takes: {', '.join(flag(k) for k in model.hyper_names)})")


def parts(name, value):
    """(label, number) of every number in a hyperparameter's value: a scalar, a dict of them (a
    std per block) or a per-class vector; label names the entry for messages."""
    if isinstance(value, dict):
        return [(f"{named(name)}[{k!r}]", v) for k, v in value.items()]
    if np.ndim(value) == 1:
        return [(f"{named(name)}[{k}]", v) for k, v in enumerate(np.asarray(value).tolist())]
    return [(named(name), value)]


def per_class_value(name, value, K):
    """A per-class hyperparameter as an array [K] (float64): one number for every class, or K
    numbers (a sequence, or a string joined by ','). ValueError naming it otherwise."""
    given = value
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.split(",")]
        except ValueError:
            raise ValueError(f"{named(name)} must be one number or K={K} numbers joined by ',', "
                             f"got {given!r}") from None
    try:
        arr = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{named(name)} must be one number or K={K} numbers, got {given!r}"
                         ) from None
    if arr.ndim == 1 and arr.size == 1:
        arr = arr[0]
    if arr.ndim == 0:
        return np.full(K, float(arr))
    if arr.shape != (K,):
        raise ValueError(f"{named(name)} is per class: it takes one number or exactly K={K}, got "
                         f"{arr.size} value{'s' * (arr.size != 1)} (shape {arr.shape})")
    return arr


def check_config(model, sizes, hyper, steps, log_every=1, restarts=1, allow_small_d=False):
    """Raise ValueError naming the parameter, the value and what is allowed; return nothing.

    `hyper`: the model's λ's with `lr` and `init_scale`. Runs before anything is traced.
    """
    counts = sizes.n if isinstance(sizes.n, tuple) else (sizes.n,)
    for name, value in (("K", sizes.K), *(("n", c) for c in counts), ("d", sizes.d),
                        ("steps", steps), ("log_every", log_every), ("restarts", restarts)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{named(name)} must be an integer, got {value!r}")
    if sizes.K < model.min_K:
        raise ValueError(f"{named('K')} must be >= {model.min_K}, got {sizes.K}")
    if isinstance(sizes.n, tuple) and len(sizes.n) != sizes.K:
        raise ValueError(f"{named('n')} has {len(sizes.n)} per-class counts "
                         f"{','.join(map(str, sizes.n))} but K (--K) is {sizes.K}: give one count "
                         f"or exactly K")
    for name in ("n", "d", "steps", "log_every", "restarts"):
        value = {"n": min(counts), "d": sizes.d, "steps": steps, "log_every": log_every,
                 "restarts": restarts}[name]
        if value < 1:
            raise ValueError(f"{named(name)} must be >= 1, got {value}")
    for spec in model.hypers:
        shape = np.shape(hyper[spec.name])
        if spec.per_class and shape != (sizes.K,):
            raise ValueError(f"{named(spec.name)} is per class: it needs K={sizes.K} values, got "
                             f"shape {shape}")
        if not spec.per_class and shape != ():
            raise ValueError(f"{named(spec.name)} must be one number, got shape {shape}")
    positive = {spec.name for spec in model.hypers if spec.positive} | {"lr"}
    for name, value in hyper.items():
        for what, v in parts(name, value):
            v = float(v)
            if not math.isfinite(v) or v < 0:
                bound = "> 0" if name in positive else ">= 0"  # what is allowed, not half of it
                raise ValueError(f"{what} must be finite and {bound}, got {v}")
    for spec in model.hypers:
        for what, v in parts(spec.name, hyper[spec.name]):
            if spec.positive and float(v) <= 0:
                raise ValueError(f"{what} must be > 0, got {float(v)}")
            if spec.below is not None and float(v) >= spec.below:
                raise ValueError(f"{what} must be < {spec.below:g}, got {float(v)}")
    if float(hyper["lr"]) <= 0:
        raise ValueError(f"{named('lr')} must be > 0, got {float(hyper['lr'])}")
    if model.check is not None:
        model.check(sizes)
    need = model.theorem_min_d(sizes.K)
    if sizes.d < need and not allow_small_d:
        raise ValueError(
            f"{named('d')}={sizes.d} is below what the theorem for {model.name} needs "
            f"(d >= {need} for K={sizes.K}); pass --allow-small-d (allow_small_d=True) to run "
            f"it anyway with no closed-form prediction")


def tie(model, lams):
    """An umbrella name the model's hyperparameters are tied to (`Hyper.tied`: `lam_W` for every
    lam_W<l> of a layered model) expanded to each member not given on its own; other λ's
    unchanged."""
    out = dict(lams)
    for umbrella in model.tied_names:
        if out.get(umbrella) is None or umbrella in model.hyper_names:
            continue
        value = out.pop(umbrella)
        for k in model.tied_to(umbrella):
            if out.get(k) is None:
                out[k] = value
    return out


def hyper_for(model, lams, lr, init_scale, K=None):
    """The full hyper dict of a model: its λ's (defaults from its record), lr and init_scale.

    A λ the model does not take is a ValueError naming it and the ones it does take. For a
    layered model `lam_W` sets every lam_W<l> not given on its own (see `tie`). A
    per-class hyperparameter becomes an array [K] (`per_class_value`; K is needed then).
    """
    check_names(model, [k for k, v in lams.items() if v is not None])
    lams = tie(model, lams)
    hyper = {}
    for h in model.hypers:
        value = h.default if lams.get(h.name) is None else lams[h.name]
        if h.per_class:
            if K is None:
                raise ValueError(f"{named(h.name)} is per class: its value needs K")
            hyper[h.name] = per_class_value(h.name, value, K)
        else:
            try:
                hyper[h.name] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{named(h.name)} must be one number, got {value!r}") from None
    hyper["lr"] = float(lr)
    if isinstance(init_scale, dict):  # a std per block, e.g. {"W2": 0.1, "W1": 0.1, "H1": 0.2}
        hyper["init_scale"] = {k: float(v) for k, v in init_scale.items()}
    else:
        hyper["init_scale"] = model.init_scale if init_scale is None else float(init_scale)
    return hyper


def session_groups(sessions, K):
    """The classes of each incremental session from `--sessions`: T (K classes split in order into
    T near-equal consecutive groups), a comma list / sequence of class counts per session, or a
    sequence of sequences of class indices (any order). ValueError unless every class is in
    exactly one session."""
    if isinstance(sessions, str):
        sessions = int_or_ints(sessions, f"sessions (--sessions) must be a number of sessions "
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


def check_sessions(model, sessions, distill, K, restarts, optimizer=None):
    """Validate `sessions`/`distill` for `model` (and the optimiser, an `Optimizer`, when given);
    the class groups, or None without sessions."""
    distill = float(distill)
    if not (math.isfinite(distill) and distill >= 0):
        raise ValueError(f"distill (--distill) must be finite and >= 0, got {distill}")
    if sessions is None:
        if distill > 0:
            raise ValueError("distill (--distill) ties a session's features to the previous "
                             "session's: it needs --sessions")
        return None
    if not model.sessions:
        raise ValueError(f"sessions (--sessions) need a fixed classifier (fixed-etf, "
                         f"fixed-orthogonal), not {model.name!r}")
    if restarts != 1:
        raise ValueError(f"restarts (--restarts) must be 1 with --sessions, got {restarts}")
    if optimizer is not None and optimizer.solve is not None:
        raise ValueError(f"sessions (--sessions) train session by session with gradient steps; "
                         f"--optimizer {optimizer.name} solves the whole problem at once: use "
                         f"gd, momentum, adam or lbfgs with --sessions")
    return session_groups(sessions, K)


def check_solver(model, hyper, optimizer):
    """The convex solver of a two-factor model needs its two weight decays λ_W, λ_H > 0 (with
    μ = √(λ_Wλ_H) = 0 the problem has no minimiser, or an unbounded set of them); the model's
    reduced problem names them (`convex.TwoFactor.decays`)."""
    if optimizer.solve is None or model.two_factor is None:
        return
    for name in model.two_factor.decays[:2]:
        if float(hyper[name]) <= 0:
            raise ValueError(f"{named(name)} must be > 0 for --optimizer {optimizer.name} (the "
                             f"convex problem's nuclear-norm weight is the geometric mean of the "
                             f"two weight decays), got {float(hyper[name])}")
