"""The second-order certificate: a point of a smooth UFM classified modulo its symmetries as a
strict local minimum, a saddle or a degenerate point (docs/theory.md §6).

Everything here runs in float64 inside JAX's scoped switch (the caller's x64 setting is left as
it is), on the model's variable blocks flattened into one vector x [P]:

    hvp(v) = ∇²f(x)·v                          forward-over-reverse, ≈ 3 gradients
    J a    = tangent of the orbit              (left·A, −A·right) for each declared interface
    P_T    = J (JᵀJ)⁺ Jᵀ                        the projection onto the orbit's tangent space

The restricted Hessian is ∇²f on the orthogonal complement of range(J). It is computed densely
(every eigenvalue, float64, when the memory estimate allows) or matrix-free by Lanczos with full
reorthogonalisation on (I − P_T)∇²f(I − P_T) (the k extreme eigenvalues, with residual bounds).
A stochastic Lanczos quadrature gives the spectral density of large Hessians.
"""
import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.sparse.linalg
from jax.flatten_util import ravel_pytree

from ufm import limits, linalg
from ufm.krylov import lanczos, ritz, spectral_density, tridiagonal

DENSE_MAX = 6000  # parameters up to which `method='auto'` computes the whole restricted spectrum
MINRES_STEPS = 60  # the Newton step of the Lanczos path (it only sets the tolerance)
KINDS = ("strict local minimum", "saddle", "degenerate", "not stationary",
         "not twice differentiable")
STATIONARY_TOL = 1e-6  # relative gradient norm below which a float64 point counts as stationary


x64 = linalg.float64_scope  # float64 inside, never for the caller


class Point(NamedTuple):
    """A model's objective at one point, flattened (float64).

    f: x [P] -> []; x: [P]; unravel: x -> {block: array}; fixed: the fixed blocks (inputs).
    """

    f: Callable
    x: Any
    unravel: Callable
    fixed: dict


def as_float64(model, params, hyper):
    """(variable blocks, fixed blocks, hyper) of a point as float64 JAX arrays (call inside
    `x64()`); a per-block dict hyperparameter (init_scale) is left out: no objective reads it."""
    as64 = lambda d: {k: jnp.asarray(np.asarray(v), jnp.float64) for k, v in d.items()}
    var = as64({k: v for k, v in params.items() if k not in model.fixed_blocks})
    fixed = as64({k: v for k, v in params.items() if k in model.fixed_blocks})
    hyp = {k: jnp.asarray(np.asarray(v, np.float64), jnp.float64) for k, v in hyper.items()
           if not isinstance(v, dict)}
    return var, fixed, hyp


def flat_point(model, sizes, hyper, params):
    """The objective as a function of the flattened variable blocks (call inside `x64()`)."""
    var, fixed, hyp = as_float64(model, params, hyper)
    f, x = _objective_of(model, sizes, var, fixed, hyp)
    return Point(f, x, ravel_pytree(var)[1], fixed)


def hvp(f, x):
    """v -> ∇²f(x)·v, forward-over-reverse (one linearisation of ∇f, reused)."""
    _, lin = jax.linearize(jax.grad(f), x)
    return lin


# --- the orbit of the symmetry group ---------------------------------------------------------

def pattern_labels(activity):
    """[b] ints, equal for units whose activity rows [b, N] are equal (host)."""
    return np.unique(np.asarray(activity), axis=0, return_inverse=True)[1].ravel()


def _same_pattern(activity):
    """[b, b]: 1 where units i and j have equal activity rows (traceable)."""
    act = activity.astype(jnp.int8)
    return jnp.all(act[:, None, :] == act[None, :, :], axis=-1)


def _skew(a, b, mask):
    """A = Σ a_k (E_ij − E_ji)/√2 over i < j, times the interface's mask [b, b] (or None)."""
    i, j = np.triu_indices(b, 1)
    A = jnp.zeros((b, b), a.dtype).at[i, j].set(a / math.sqrt(2))
    A = A - A.T
    return A if mask is None else A * mask


def _coords(M, mask):
    """The skew part of M [b, b] in the orthonormal skew basis (the adjoint of `_skew`)."""
    if mask is not None:
        M = M * mask
    i, j = np.triu_indices(M.shape[0], 1)
    return (M[i, j] - M[j, i]) / math.sqrt(2)


@linalg.one_matrix_at_a_time
def _eigh(S):
    return jnp.linalg.eigh(S)


class Orbit(NamedTuple):
    """The tangent space of the symmetry orbit through a point, in flattened coordinates.

    J: a [m] -> [P]; JT: v [P] -> [m]; gram: JᵀJ [m, m] (small, from the blocks' Gram matrices);
    rank: its dimension ([] int: m less the stabiliser's and the masked coordinates); project:
    v -> P_T v; basis: () -> [P, rank] an orthonormal basis (host only: dense path).
    """

    J: Callable
    JT: Callable
    gram: Any
    rank: Any
    project: Callable
    basis: Callable
    eig: Any = None  # (U [m, m], inv [m]): JᵀJ's eigenvectors, 1/μ above the cut (0 below)


def orbit(model, blocks, rank_rtol, eig=None):
    """The orbit's tangent space at the point `blocks` (the variable blocks, a dict) from the
    model's declared interfaces: (left, right) → (left·A, −A·right), A skew [b, b] with b =
    left's columns; an interface (left, right, activity) is local (ReLU units of one activation
    pattern): A is masked to the pairs of units whose activity rows are equal. Directions with
    JᵀJ-eigenvalue ≤ rank_rtol·(its largest) count as the stabiliser's (not tangent). Traceable
    (vmap it over points). eig: (U, inv) of an earlier call at the same point (`orbit_eig`),
    so a program that only projects does not redo JᵀJ's eigendecomposition."""
    flat, unravel = ravel_pytree(blocks)
    pairs = tuple(s[:2] for s in model.symmetries)
    sizes = [blocks[left].shape[1] for left, _ in pairs]
    masks = [None if len(s) == 2 else _same_pattern(s[2](blocks)) for s in model.symmetries]
    offsets = np.concatenate([[0], np.cumsum([b * (b - 1) // 2 for b in sizes])]).astype(int)
    m = int(offsets[-1])

    def split(a):
        return [_skew(a[offsets[p]:offsets[p + 1]], sizes[p], masks[p])
                for p in range(len(pairs))]

    def J(a):
        out = {k: jnp.zeros_like(v) for k, v in blocks.items()}
        for (left, right), A in zip(pairs, split(a)):
            out[left] = out[left] + blocks[left] @ A
            out[right] = out[right] - A @ blocks[right]
        return ravel_pytree(out)[0]

    def JT(v):
        V = unravel(v)
        if not pairs:
            return jnp.zeros((0,), v.dtype)
        return jnp.concatenate([
            _coords(blocks[left].T @ V[left] - V[right] @ blocks[right].T, mask)
            for (left, right), mask in zip(pairs, masks)])

    if m == 0:
        zero = jnp.zeros((), jnp.int32)
        return Orbit(J, JT, jnp.zeros((0, 0), flat.dtype), zero, jnp.zeros_like,
                     lambda: np.zeros((flat.shape[0], 0)),
                     (jnp.zeros((0, 0), flat.dtype), jnp.zeros((0,), flat.dtype)))
    if eig is None:
        gram = _gram(blocks, pairs, split, masks, m)
        mu, U = _eigh(gram)
        keep = mu > rank_rtol * jnp.maximum(jnp.max(mu), jnp.finfo(flat.dtype).tiny)
        inv = jnp.where(keep, 1.0 / jnp.where(keep, mu, 1.0), 0.0)
    else:
        (U, inv), gram = eig, None
        keep = inv > 0
    rank = jnp.sum(keep).astype(jnp.int32)

    def project(v):
        return J(U @ (inv * (U.T @ JT(v))))

    def basis():
        """[P, rank] (host): J·U_r·diag(μ_r^(−1/2)), orthonormal as (JU)ᵀ(JU) = diag(μ)."""
        cols = np.flatnonzero(np.asarray(keep))
        Ur = jnp.asarray(np.asarray(U)[:, cols] * np.sqrt(np.asarray(inv)[cols]))
        return np.asarray(jax.vmap(J, in_axes=1, out_axes=1)(Ur))

    return Orbit(J, JT, gram, rank, project, basis, (U, inv))


def _gram(blocks, pairs, split, masks, m):
    """JᵀJ [m, m] from products of the blocks that meet at an interface (docs/theory.md §6.1):
    for interface p = (L, R), (JᵀJ a)_p = skew(Lᵀ·δL − δR·Rᵀ), where δB, the tangent on block B,
    is B·A_q where B is the left of q and −A_q·B where it is the right of q. Gram matrices of a
    block with itself are formed once, so a wide H costs one d×d product, not m."""
    grams = {}  # formed once, outside the map below (a cache filled inside it would leak tracers)
    for L, R in pairs:
        grams.setdefault((L, "cols"), blocks[L].T @ blocks[L])
        grams.setdefault((R, "rows"), blocks[R] @ blocks[R].T)
    gram_of = lambda name, side: grams[(name, side)]

    def apply(a):
        A = split(a)
        out = []
        for p, (L, R) in enumerate(pairs):
            M = jnp.zeros((blocks[L].shape[1],) * 2, a.dtype)
            for q, (Lq, Rq) in enumerate(pairs):
                if Lq == L:  # Lᵀ(L·A_q) with q = p
                    M = M + gram_of(L, "cols") @ A[q]
                if Rq == L:  # Lᵀ(−A_q·L)
                    M = M - blocks[L].T @ A[q] @ blocks[L]
                if Lq == R:  # −(R·A_q)Rᵀ
                    M = M - blocks[R] @ A[q] @ blocks[R].T
                if Rq == R:  # −(−A_q·R)Rᵀ with q = p
                    M = M + A[q] @ gram_of(R, "rows")
            out.append(_coords(M, masks[p]))
        return jnp.concatenate(out)

    return jax.lax.map(apply, jnp.eye(m), batch_size=min(m, 256))


# --- the certificate -------------------------------------------------------------------------

class SecondOrder(NamedTuple):
    """What `classify` found (JSON-ready through `as_dict`)."""

    kind: str
    reason: str
    min_eigenvalue: Optional[float]  # of the restricted Hessian
    max_eigenvalue: Optional[float]
    symmetry_dim: Optional[int]
    tol: Optional[float]
    grad_norm: float  # ‖∇f‖ / max(|f|, 1e-6), in float64 at the point
    eigenvalues: Optional[list]  # the whole restricted spectrum (dense) or the extreme ones
    method: str  # 'dense' or 'lanczos'
    parameters: int
    kinks: Optional[int] = None  # pre-activations within tolerance of 0 (ReLU models)
    residual: Optional[float] = None  # Lanczos: the largest residual bound of the reported ones
    direction: Any = None  # saddle: a unit descent direction (params dict), else None

    def as_dict(self):
        out = self._asdict()
        out.pop("direction")
        return out

    def describe(self):
        """The one line the CLI prints."""
        if self.min_eigenvalue is None:
            return f"second order: {self.kind} ({self.reason})"
        return (f"second order: {self.kind} — restricted λ_min = {self.min_eigenvalue:.6g} "
                f"(tol {self.tol:.2g}, {self.symmetry_dim} symmetry directions removed, "
                f"{self.method}, P = {self.parameters})")


METHODS = ("auto", "dense", "lanczos")


def check_method(method):
    if method not in METHODS:
        raise ValueError(f"hessian (--hessian) must be one of {', '.join(METHODS)}, got "
                         f"{method!r}")


def check_smooth(model):
    """ValueError for a model the second-order certificate does not cover."""
    if model.constrained:
        raise ValueError(f"{model.name} is a constrained model (features on a sphere or ball): "
                         f"its second-order conditions need the Lagrangian's Hessian on the "
                         f"constraint's tangent space, which --hessian does not compute")


def dense_bytes(P):
    """Peak bytes of the dense path: the Hessian, its identity seed, the reflected copy and the
    eigenvectors, each [P, P] float64."""
    return 4 * 8 * P * P


def parameter_count(model, sizes, params):
    return int(sum(np.size(v) for k, v in params.items() if k not in model.fixed_blocks))


def numerical_tol(hess_scale, P):
    """A backward-stable symmetric eigensolver moves every eigenvalue by at most ≈ P·ε·‖H‖."""
    return P * np.finfo(np.float64).eps * hess_scale


# --- compiled pieces of the host path: arrays in, arrays out (nothing large is closed over) -----

def _objective_of(model, sizes, var, fixed, hyper):
    """f(x) of the flattened variable blocks, and x."""
    x, unravel = ravel_pytree(var)
    return (lambda y: model.objective({**unravel(y), **fixed}, hyper, sizes)), x


@functools.lru_cache(maxsize=None)
def _programs(model, sizes):
    """Jitted programs of one (model, sizes), each taking the point's arrays as arguments: the
    gradient, the orbit's JᵀJ eigendecomposition, the restricted operator, the dense Hessian, an
    orthonormal tangent basis, and the third derivative that sets τ_move."""

    def gradient(var, fixed, hyper):
        f, x = _objective_of(model, sizes, var, fixed, hyper)
        return jax.value_and_grad(f)(x)

    def orbit_eig(var, rank_rtol):
        orb = orbit(model, var, rank_rtol)
        return orb.eig, orb.rank

    def keep(var, eig, v):
        return v - orbit(model, var, None, eig).project(v)

    def restricted(var, fixed, hyper, eig):
        """(f, x, keep, op): op = (I − P_T)∇²f(I − P_T) with ∇²f linearised once."""
        f, x = _objective_of(model, sizes, var, fixed, hyper)
        orb = orbit(model, var, None, eig)
        keep = lambda v: v - orb.project(v)
        _, lin = jax.linearize(jax.grad(f), x)
        return f, x, keep, lambda v: keep(lin(keep(v)))

    def krylov(var, fixed, hyper, eig, key, steps):
        _, x, keep, op = restricted(var, fixed, hyper, eig)
        v0 = keep(jax.random.normal(key, x.shape, x.dtype))
        return lanczos(op, v0, steps, keep)

    def apply(var, fixed, hyper, eig, v):
        return restricted(var, fixed, hyper, eig)[3](v)

    def third(var, fixed, hyper, eig, v, step):
        """‖(I − P_T)·D³f(x)[step]·v‖."""
        f, x, keep, _ = restricted(var, fixed, hyper, eig)
        out = jax.jvp(lambda y: jax.jvp(jax.grad(f), (y,), (v,))[1], (x,), (step,))[1]
        return jnp.linalg.norm(keep(out))

    def hessian(var, fixed, hyper):
        f, x = _objective_of(model, sizes, var, fixed, hyper)
        return dense_hessian(f, x)

    def basis(var, eig):
        """[P, m] J·U·diag(√inv): the orthonormal tangent basis (zero columns past the rank)."""
        orb = orbit(model, var, None, eig)
        U, inv = eig
        return jax.vmap(orb.J, in_axes=1, out_axes=1)(U * jnp.sqrt(inv))

    jit = jax.jit
    return dict(gradient=jit(gradient), orbit_eig=jit(orbit_eig), keep=jit(keep),
                krylov=jit(krylov, static_argnums=5), apply=jit(apply), third=jit(third),
                hessian=jit(hessian), basis=jit(basis))


def classify_run(spec, params, **kw):
    """`classify` for a run specification (ufm.spec.RunSpec) and its final parameters: its
    model, sizes and hyperparameters, its method (`spec.hessian`, default 'auto') and its
    certificate tolerance; kw as `classify`'s."""
    kw.setdefault("method", spec.hessian or "auto")
    kw.setdefault("stationary_tol", spec.certificate_tol)
    return classify(spec.model, spec.sizes, dict(spec.hyper), params, **kw)


def classify(model, sizes, hyper, params, *, method="auto", k=6, stationary_tol=None,
             kink_rtol=None, key=None, max_steps=None):
    """The second-order certificate of `params` (a dict of numpy or JAX arrays) as a SecondOrder.

    method: 'dense' (every restricted eigenvalue), 'lanczos' (the k smallest and k largest), or
    'auto' (dense up to DENSE_MAX parameters). stationary_tol: the relative gradient norm above
    which the point is 'not stationary' (default STATIONARY_TOL for float64 parameters, 1e-3 for
    float32 ones, as the convergence certificate). kink_rtol: a ReLU pre-activation within
    kink_rtol·max|Z| of 0 is on a kink (default √ε of the parameters' dtype).
    """
    check_smooth(model)
    check_method(method)
    P = parameter_count(model, sizes, params)
    if method == "auto":
        method = "dense" if P <= DENSE_MAX else "lanczos"
    if method == "dense":
        need = dense_bytes(P)
        have, what = limits.machine_memory()
        if need > limits.MEMORY_FRACTION * have:
            raise ValueError(f"the dense Hessian of {P:,} parameters needs about "
                             f"{limits.gib(need)}, more than {limits.MEMORY_FRACTION:.0%} of the "
                             f"{what} ({limits.gib(have)}): use the Lanczos method "
                             f"(--hessian lanczos)")
    run_dtype = np.result_type(*[np.asarray(v).dtype for v in params.values()])
    run_eps = float(np.finfo(run_dtype if np.issubdtype(run_dtype, np.floating)
                             else np.float64).eps)
    if stationary_tol is None:
        stationary_tol = STATIONARY_TOL if run_eps < 1e-10 else 1e-3
    if kink_rtol is None:
        kink_rtol = math.sqrt(run_eps)
    with x64():
        var, fixed, hyp = as_float64(model, params, hyper)
        prog = _programs(model, sizes)
        value, g = prog["gradient"](var, fixed, hyp)
        value, g = float(value), np.asarray(g)
        grad_rel = float(np.linalg.norm(g) / max(abs(value), 1e-6))
        common = dict(grad_norm=grad_rel, method=method, parameters=P)
        if not (math.isfinite(value) and np.all(np.isfinite(g))):
            return SecondOrder("not stationary", "the objective or its gradient is not finite",
                               None, None, None, None, eigenvalues=None, **common)
        if model.kinks is not None:
            near = sum(int(np.sum(np.abs(z) <= kink_rtol * np.max(np.abs(z), initial=0.0)))
                       for z in map(np.asarray, model.kinks({**var, **fixed}, sizes)))
            common["kinks"] = near
            if near:
                return SecondOrder(
                    "not twice differentiable",
                    f"{near} ReLU pre-activation(s) within {kink_rtol:.2g}·max|Z| of 0, where "
                    f"the objective has a kink: no second-order claim", None, None, None, None,
                    eigenvalues=None, **common)
        eig, rank = prog["orbit_eig"](var, jnp.asarray(math.sqrt(run_eps)))
        rank = int(rank)
        # the Newton step matters only where the point is called stationary
        g_step = g if grad_rel <= stationary_tol else np.zeros_like(g)
        args = (var, fixed, hyp, eig)
        if method == "dense":
            spectrum, v_min, step = _dense_restricted(prog, args, rank, g_step)
            residual = None
        else:
            spectrum, v_min, residual, step = _lanczos_restricted(
                prog, args, P - rank, g_step, k, key, max_steps)
        lo, hi = float(spectrum[0]), float(spectrum[-1])
        tol = numerical_tol(max(abs(lo), abs(hi)), P)
        if np.any(step):
            tol += 2.0 * float(prog["third"](*args, jnp.asarray(v_min), jnp.asarray(step)))
        if residual is not None:
            tol += residual
        direction = None
        if lo < -tol and grad_rel <= stationary_tol:
            direction = jax.tree.map(np.asarray, ravel_pytree(var)[1](jnp.asarray(v_min)))
    if grad_rel > stationary_tol:
        kind, reason = "not stationary", (f"relative gradient norm {grad_rel:.3g} > "
                                          f"{stationary_tol:.3g}: the eigenvalues describe the "
                                          f"point, not a critical point")
    elif lo > tol:
        kind, reason = "strict local minimum", "restricted λ_min > tol"
    elif lo < -tol:
        kind, reason = "saddle", "restricted λ_min < −tol: its eigenvector is a descent direction"
    else:
        kind, reason = "degenerate", ("|restricted λ_min| ≤ tol: a higher order decides "
                                      "(or a flat direction beyond the declared symmetries)")
    return SecondOrder(kind, reason, lo, hi, rank, tol, eigenvalues=[float(v) for v in spectrum],
                       residual=residual, direction=direction, **common)


def dense_hessian(f, x, batch=256):
    """∇²f(x) [P, P] by forward-over-reverse products with the unit vectors, `batch` at a time."""
    P = x.shape[0]
    lin = hvp(f, x)
    H = jax.lax.map(lin, jnp.eye(P, dtype=x.dtype), batch_size=min(P, batch))
    return (H + H.T) / 2


def _dense_restricted(prog, args, rank, g):
    """(every eigenvalue of the restricted Hessian ascending, the eigenvector of the smallest
    [P], the Newton step to the nearby critical point [P]).

    With T [P, r] an orthonormal tangent basis, H̃ = (I − TTᵀ)H(I − TTᵀ) + c·TTᵀ (rank-r updates,
    O(P²r)) has the restricted spectrum and r copies of c = 2‖H‖_∞ + 1, above every restricted
    eigenvalue (‖H_r‖₂ ≤ ‖H‖₂ ≤ ‖H‖_∞): the P − r smallest eigenvalues of H̃ are the restricted
    spectrum (LAPACK syevd, values only). The eigenvector of the smallest comes from inverse
    iteration with a Cholesky factor of H̃ − σI, σ just below it; the Newton step −H_r⁺g from
    MINRES on H̃ (a right-hand side in the complement stays there)."""
    var, fixed, hyp, eig = args
    H = np.asarray(prog["hessian"](var, fixed, hyp), np.float64)
    P = H.shape[0]
    if rank:
        T = np.asarray(prog["basis"](var, eig))
        T = T[:, np.abs(T).max(axis=0) > 0]  # the zero columns past the rank
        HT = H @ T
        THT = T.T @ HT
        H = H - T @ HT.T - HT @ T.T + T @ THT @ T.T
        c = 2 * np.abs(H).sum(axis=1).max() + 1
        H += c * (T @ T.T)
        H = (H + H.T) / 2
        g = g - T @ (T.T @ g)
    values = scipy.linalg.eigh(H, eigvals_only=True, driver="evd")[:P - rank]
    scale = max(abs(values[0]), abs(values[-1]), np.finfo(np.float64).tiny)
    shift = values[0] - max(1e-8 * scale, 1e3 * numerical_tol(scale, P))
    factor = scipy.linalg.cho_factor(H - shift * np.eye(P))
    v = np.random.default_rng(0).normal(size=P)
    for _ in range(4):
        if rank:
            v = v - T @ (T.T @ v)
        v = scipy.linalg.cho_solve(factor, v)
        v /= np.linalg.norm(v)
    step = np.zeros(P)
    if np.any(g):
        step = scipy.sparse.linalg.minres(H, -g, rtol=1e-10, maxiter=10 * MINRES_STEPS)[0]
    return values, v, step


def _lanczos_restricted(prog, args, free, g, k, key, max_steps):
    """(the k smallest and k largest restricted eigenvalues, ascending; the eigenvector of the
    smallest; the largest residual bound among them; the Newton step [P]). Lanczos on
    (I − P_T)∇²f(I − P_T) from a start vector in the complement: the tangent directions never
    enter the Krylov space (every vector is projected), so the zeros they carry do not crowd the
    small end. Steps double until the residual bounds are ≤ 1e-10 of the spectrum's scale (or
    the cap). The Newton step is MINRES's on the same operator (scipy)."""
    key = jax.random.PRNGKey(0) if key is None else key
    cap = min(free, max_steps or 2000)
    steps = min(free, max(8 * k, 80))
    while True:
        run = prog["krylov"](*args, key, steps)
        theta, vecs, res = ritz(run)
        pick = np.unique(np.r_[0:min(k, len(theta)), max(len(theta) - k, 0):len(theta)])
        scale = max(abs(theta[0]), abs(theta[-1]))
        if np.max(res[pick]) <= 1e-10 * scale or steps >= cap:
            break
        steps = min(cap, 2 * steps)
    P = g.shape[0]
    step = np.zeros(P)
    if np.any(g):  # a tolerance's input: a few digits are enough
        apply = lambda v: np.asarray(prog["apply"](*args, jnp.asarray(v.ravel())))
        rhs = -np.asarray(prog["keep"](args[0], args[3], jnp.asarray(g)))
        A = scipy.sparse.linalg.LinearOperator((P, P), matvec=apply, dtype=np.float64)
        step = scipy.sparse.linalg.minres(A, rhs, rtol=1e-6, maxiter=MINRES_STEPS)[0]
    return theta[pick], vecs[0], float(np.max(res[pick])), step


def line_search(model, sizes, hyper, params, direction):
    """(t, f(x + t·v)) minimising f along the unit direction v (a params dict of the variable
    blocks) over t = ±s·2^−k, k = −4 … 40, s = max(‖x‖, 1): a saddle's negative-curvature
    direction, both signs; (None, f(x)) when no t lowers the objective (in float64)."""
    with x64():
        point = flat_point(model, sizes, hyper, params)
        v = ravel_pytree({k: jnp.asarray(np.asarray(a), jnp.float64)
                          for k, a in direction.items()})[0]
        s = max(float(jnp.linalg.norm(point.x)), 1.0)
        ts = s * 2.0 ** -np.arange(-4, 41)
        ts = jnp.asarray(np.concatenate([ts, -ts]))
        values = np.asarray(jax.jit(jax.vmap(lambda t: point.f(point.x + t * v)))(ts))
        here = float(point.f(point.x))
    best = int(np.nanargmin(np.where(np.isfinite(values), values, np.inf)))
    if not values[best] < here:
        return None, here
    return float(ts[best]), float(values[best])


# --- the traced certificate (sweeps) -----------------------------------------------------------

KIND_CODE = {kind: code for code, kind in enumerate(KINDS)}  # sweep.npz stores the codes


def kind_names(codes):
    """The KINDS names of an array of codes (−1: none computed, e.g. a diverged point)."""
    codes = np.asarray(codes)
    names = np.array(KINDS + ("",))
    return names[np.where(codes < 0, len(KINDS), codes)]


def traced_classifier(model, sizes, steps=100, stationary_tol=STATIONARY_TOL):
    """(params, hyper) -> {second_order_kind: [] int (KIND_CODE), min_eigenvalue, max_eigenvalue,
    second_order_tol, symmetry_dim, kinks}: the certificate of `classify` as one traceable
    function, in the caller's dtype, for `vmap` over a grid's points. `steps` Lanczos steps with
    full reorthogonalisation on the restricted operator (capped at the free dimension); the
    tolerance is τ_num (with the dtype's ε) + τ_move with the Newton step taken in the Krylov
    space + the largest residual bound of the two extreme Ritz values (docs/theory.md §6.3)."""
    check_smooth(model)
    fixed_names = tuple(model.fixed_blocks)

    def classify_point(params, hyper):
        var = {k: v for k, v in params.items() if k not in fixed_names}
        fixed = {k: params[k] for k in fixed_names if k in params}
        x, unravel = ravel_pytree(var)
        f = lambda y: model.objective({**unravel(y), **fixed}, hyper, sizes)
        eps = jnp.finfo(x.dtype).eps
        value, g = jax.value_and_grad(f)(x)
        grad_rel = jnp.linalg.norm(g) / jnp.maximum(jnp.abs(value), 1e-6)
        orb = orbit(model, var, jnp.sqrt(eps))
        lin = hvp(f, x)
        keep = lambda v: v - orb.project(v)
        op = lambda v: keep(lin(keep(v)))
        P = x.shape[0]
        k = min(steps, P)
        v0 = keep(jax.random.normal(jax.random.PRNGKey(0), (P,), x.dtype))
        run = lanczos(op, v0, k, keep)
        theta, S = _eigh(tridiagonal(run))
        residual = jnp.abs(run.beta[-1] * S[-1, :])
        lo, hi = theta[0], theta[-1]
        v_min = run.V.T @ S[:, 0]
        scale = jnp.maximum(jnp.abs(lo), jnp.abs(hi))
        tol_num = P * eps * scale
        inv = jnp.where(jnp.abs(theta) > tol_num, 1.0 / jnp.where(theta == 0, 1.0, theta), 0.0)
        step = -run.V.T @ (S @ (inv * (S.T @ (run.V @ keep(g)))))
        third = jax.jvp(lambda y: hvp(f, y)(v_min), (x,), (step,))[1]
        tol = (tol_num + 2 * jnp.linalg.norm(keep(third))
               + jnp.maximum(residual[0], residual[-1]))
        kinks = jnp.zeros((), jnp.int32)
        if model.kinks is not None:
            rtol = jnp.sqrt(eps)
            for z in model.kinks({**var, **fixed}, sizes):
                kinks = kinks + jnp.sum(jnp.abs(z) <= rtol * jnp.max(jnp.abs(z)))
        finite = jnp.isfinite(value) & jnp.all(jnp.isfinite(g))
        code = jnp.where(lo > tol, KIND_CODE["strict local minimum"],
                         jnp.where(lo < -tol, KIND_CODE["saddle"], KIND_CODE["degenerate"]))
        code = jnp.where(kinks > 0, KIND_CODE["not twice differentiable"], code)
        code = jnp.where(~finite | (grad_rel > stationary_tol), KIND_CODE["not stationary"],
                         code)
        return {"second_order_kind": code.astype(jnp.int32), "min_eigenvalue": lo,
                "max_eigenvalue": hi, "second_order_tol": tol, "symmetry_dim": orb.rank,
                "kinks": kinks}

    return classify_point


__all__ = ["classify", "SecondOrder", "orbit", "lanczos", "ritz", "spectral_density",
           "dense_hessian", "flat_point", "hvp", "kind_names", "line_search",
           "traced_classifier", "KINDS", "DENSE_MAX"]
