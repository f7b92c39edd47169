"""The second-order certificate's cost: a Hessian-vector product, a dense restricted spectrum
and Lanczos at 10⁶ parameters (docs/performance.md)."""
import time

import jax
import jax.numpy as jnp

from ufm.models import Sizes
from ufm.bench.rates import _timed


HESSIAN_DENSE = Sizes(10, 49, 10)  # P = Kd + dN = 5,000
HESSIAN_LARGE = Sizes(100, 100, 100)  # P = 1,010,000


def _closed_form_optimum(sizes, lam):
    """The bias-free minimiser at (λ_W, λ_H) = (lam, lam) (theory.bias_free_minimiser)."""
    from ufm import theory

    hyper = {"lam_W": lam, "lam_H": lam}
    return hyper, theory.bias_free_minimiser(hyper, sizes)


def hessian_times(quick=False):
    """Seconds for a gradient and a Hessian-vector product (compiled, warm), the dense restricted
    spectrum at P = 5,000 and 20 extreme eigenvalues by Lanczos at P ≈ 10⁶ (both cold: what
    `ufm hessian` costs, compilation included)."""
    from ufm import hessian
    from ufm.models import get_model

    model = get_model("bias-free")
    dense_sz = Sizes(4, 10, 8) if quick else HESSIAN_DENSE
    large_sz = Sizes(10, 10, 10) if quick else HESSIAN_LARGE
    lam = 1e-3 / large_sz.K  # below the threshold: a nonzero optimum
    hyper, params = _closed_form_optimum(large_sz, lam)
    with hessian.x64():
        point = hessian.flat_point(model, large_sz, hyper, params)
        grad = jax.jit(jax.grad(point.f))
        hvp = jax.jit(lambda x, v: jax.jvp(jax.grad(point.f), (x,), (v,))[1])
        v = jnp.ones_like(point.x)
        t_grad, t_hvp = _timed(grad, point.x), _timed(hvp, point.x, v)
    out = {"P_large": int(point.x.shape[0]), "gradient_s": t_grad, "hvp_s": t_hvp,
           "hvp_over_gradient": t_hvp / t_grad}
    t0 = time.perf_counter()
    so = hessian.classify(model, large_sz, hyper, params, method="lanczos", k=10)
    out.update(lanczos_s=time.perf_counter() - t0, lanczos_kind=so.kind,
               lanczos_min=so.min_eigenvalue, lanczos_residual=so.residual)
    hyper, params = _closed_form_optimum(dense_sz, 1e-3 / dense_sz.K)
    t0 = time.perf_counter()
    so = hessian.classify(model, dense_sz, hyper, params, method="dense")
    out.update(P_dense=so.parameters, dense_s=time.perf_counter() - t0, dense_kind=so.kind)
    return out


def hessian_report(h):
    return ["\nsecond-order certificate (float64, bias-free optimum):",
            f"  Hessian-vector product / gradient at P = {h['P_large']:,}: "
            f"{h['hvp_s'] * 1e3:.1f} / {h['gradient_s'] * 1e3:.1f} ms = "
            f"{h['hvp_over_gradient']:.2f}×",
            f"  dense restricted spectrum, P = {h['P_dense']:,}: {h['dense_s']:.1f} s "
            f"({h['dense_kind']}, compilation included)",
            f"  20 extreme eigenvalues by Lanczos, P = {h['P_large']:,}: {h['lanczos_s']:.1f} s "
            f"({h['lanczos_kind']}, λ_min {h['lanczos_min']:.4g}, residual "
            f"{h['lanczos_residual']:.1e})"]
