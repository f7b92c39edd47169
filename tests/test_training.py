import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import ufm
from ufm import optimise
from ufm.models import MODELS, Sizes, layered_model

SIZES = Sizes(3, 4, 5)


def hyper_of(model, **over):
    h = {k: 0.02 + 0.01 * i for i, k in enumerate(model.hyper_names)}
    h.update(lr=0.1, init_scale=model.init_scale)
    h.update(over)
    return optimise.as_hyper(h)


@pytest.mark.parametrize("name", list(MODELS))
def test_gradients_match_finite_differences(name):
    model = MODELS[name]
    params = model.init(jax.random.PRNGKey(0), {"init_scale": 0.7}, SIZES)
    hyper = hyper_of(model)
    fixed = {k: v for k, v in params.items() if k in model.fixed_blocks}  # a fixed classifier E
    free = {k: v for k, v in params.items() if k not in model.fixed_blocks}
    check_grads(lambda p: model.objective({**p, **fixed}, hyper, SIZES), (free,), order=2,
                modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)
    grads = jax.grad(model.objective)(params, hyper, SIZES)
    for k in fixed:  # never moved by any optimiser
        assert not np.any(np.asarray(grads[k]))


def test_deeper_models_need_no_new_code():
    model = layered_model("relu-depth-4", 4, "relu")
    params = model.init(jax.random.PRNGKey(1), {"init_scale": 0.5}, SIZES)
    assert set(params) == {"H1", "W1", "W2", "W3", "W4"} and params["W4"].shape == (3, 5)
    hyper = hyper_of(model)
    check_grads(lambda p: model.objective(p, hyper, SIZES), (params,), order=1, modes=("rev",))
    traj = ufm.simulate(model, SIZES, jax.random.PRNGKey(2), hyper, 50, 10)
    assert "nc1_H4" in traj.history and "nc1_Z3" in traj.history


@pytest.mark.parametrize("name,opt", [("bias-free", "gd"), ("regularized-bias", "momentum"),
                                      ("relu-extended", "adam"), ("fixed-orthogonal", "gd"),
                                      ("lpm", "momentum")])
def test_scan_equals_python_loop(name, opt):
    model = MODELS[name]
    hyper = hyper_of(model)
    key = jax.random.PRNGKey(3)
    traj = jax.jit(lambda h: ufm.simulate(model, SIZES, key, h, 23, 5, opt))(hyper)
    params = model.init(key, hyper, SIZES)
    project = model.project or (lambda p, h, s: p)  # projected GD for the constrained models
    params = project(params, hyper, SIZES)
    lr = float(hyper["lr"])
    grad = jax.jit(jax.grad(model.objective), static_argnums=2)
    velocity = {k: 0.0 * v for k, v in params.items()}  # momentum's trace; Adam's first moment
    second = {k: 0.0 * v for k, v in params.items()}  # Adam's second moment
    losses = {}
    for t in range(23):  # the reference: the update rules written out by hand, one step at a time
        if t % 5 == 0:
            losses[t] = model.objective(params, hyper, SIZES)
        g = grad(params, hyper, SIZES)
        new = {}
        for k in params:
            if opt == "gd":  # p − lr·g
                step = lr * g[k]
            elif opt == "momentum":  # heavy ball: v = g + 0.9·v, p − lr·v
                velocity[k] = g[k] + 0.9 * velocity[k]
                step = lr * velocity[k]
            else:  # Adam (β1 0.9, β2 0.999, ε 1e-8), bias-corrected moments
                velocity[k] = 0.9 * velocity[k] + 0.1 * g[k]
                second[k] = 0.999 * second[k] + 0.001 * g[k] ** 2
                m_hat = velocity[k] / (1 - 0.9 ** (t + 1))
                v_hat = second[k] / (1 - 0.999 ** (t + 1))
                step = lr * m_hat / (np.sqrt(v_hat) + 1e-8)
            new[k] = params[k] - step
        params = project(new, hyper, SIZES)
    losses[23] = model.objective(params, hyper, SIZES)
    np.testing.assert_array_equal(traj.steps, [0, 5, 10, 15, 20, 23])
    np.testing.assert_allclose(traj.history["objective"], [losses[int(t)] for t in traj.steps], rtol=1e-12)
    for k in params:
        np.testing.assert_allclose(traj.params[k], params[k], rtol=1e-11, atol=1e-13)


def test_vmap_over_lambda_equals_separate_runs():
    model = MODELS["bias-free"]
    lams = jnp.array([1e-3, 5e-3, 3e-2])
    hyper = hyper_of(model)
    batched = dict(hyper, lam_W=lams)
    axes = {k: (0 if k == "lam_W" else None) for k in batched}
    run = jax.jit(lambda h: ufm.simulate(model, SIZES, jax.random.PRNGKey(4), h, 200, 50))
    out = jax.vmap(run, in_axes=(axes,))(batched)
    for i, lam in enumerate(lams):
        single = run(dict(hyper, lam_W=lam))
        np.testing.assert_allclose(out.history["objective"][i], single.history["objective"], rtol=1e-12)
        np.testing.assert_allclose(out.params["W"][i], single.params["W"], rtol=1e-11, atol=1e-14)


def test_new_hyperparameter_values_do_not_recompile():
    traces = []
    base = MODELS["bias-free"]

    def counted(params, hyper, sizes, session=None):
        traces.append(1)  # runs only while tracing
        return base.objective(params, hyper, sizes)

    model = base._replace(objective=counted, name="counted")
    run = optimise.compiled_simulation(model, SIZES, 100, 20)
    run(jax.random.PRNGKey(0), hyper_of(model, lam_W=0.01))
    n_traced = len(traces)
    assert n_traced > 0
    for lam in (0.02, 0.05, 1e-4):
        run(jax.random.PRNGKey(1), hyper_of(model, lam_W=lam, lr=0.05))
    assert len(traces) == n_traced


def test_divergence_is_recorded_at_the_first_nonfinite_step():
    model = MODELS["bias-free"]
    hyper = hyper_of(model, lr=40.0)
    key = jax.random.PRNGKey(5)
    traj = ufm.simulate(model, SIZES, key, hyper, 400, 100)
    params = model.init(key, hyper, SIZES)
    first = None
    for t in range(400):
        loss, g = jax.value_and_grad(model.objective)(params, hyper, SIZES)
        params = jax.tree.map(lambda p, gr: p - hyper["lr"] * gr, params, g)
        finite = bool(jnp.isfinite(loss)) and all(bool(jnp.all(jnp.isfinite(v))) for v in params.values())
        if not finite:
            first = t
            break
    assert first is not None and int(traj.diverged_at) == first
    stable = ufm.simulate(model, SIZES, key, hyper_of(model), 400, 100)
    assert int(stable.diverged_at) == -1


def test_chunked_progress_equals_single_program():
    model = MODELS["linear-extended"]
    hyper = hyper_of(model)
    key = jax.random.PRNGKey(6)
    seen = []
    a = ufm.simulate(model, SIZES, key, hyper, 1030, 100, callback=seen.append, chunks=3)
    b = optimise.compiled_simulation(model, SIZES, 1030, 100)(key, hyper)
    np.testing.assert_array_equal(a.steps, b.steps)
    for k in b.history:
        np.testing.assert_allclose(a.history[k], b.history[k], rtol=1e-10, atol=1e-14)
    assert seen[-1] == 1030 and seen == sorted(seen) and len(seen) >= 3


def test_a_batch_without_progress_is_one_program_equal_to_the_chunked_batch():
    """batched=True without a callback runs as one jit(vmap(simulate)) program; with one, as
    compiled chunks: the same runs."""
    model = MODELS["linear-extended"]
    B = 3
    hyper = optimise.broadcast_hyper(hyper_of(model), B)
    hyper["lam_H1"] = jnp.array([1e-3, 5e-3, 2e-2])
    keys = jax.random.split(jax.random.PRNGKey(3), B)
    seen = []
    a = ufm.simulate(model, SIZES, keys, hyper, 1030, 100, callback=seen.append, batched=True)
    b = ufm.simulate(model, SIZES, keys, hyper, 1030, 100, batched=True)
    assert seen and seen[-1] == 1030
    np.testing.assert_array_equal(a.steps, b.steps)
    assert np.asarray(b.steps).shape == (B, 12)  # the start, ten intervals, the tail
    for k in b.history:
        np.testing.assert_allclose(a.history[k], b.history[k], rtol=1e-10, atol=1e-14)
    for k in b.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-10, atol=1e-14)


def test_restarts_with_progress_equal_restarts_without():
    kw = dict(K=3, n=4, d=5, steps=250, log_every=50, restarts=3, seed=2)
    a = ufm.train("linear-extended", progress=lambda s: None, **kw)
    b = ufm.train("linear-extended", **kw)
    np.testing.assert_allclose(a.restart_objectives, b.restart_objectives, rtol=1e-10)
    np.testing.assert_array_equal(a.steps, b.steps)
    np.testing.assert_allclose(a.history["nc1_H2"], b.history["nc1_H2"], rtol=1e-8)


def test_restarts_keep_the_best_of_independent_runs():
    r = ufm.train("relu-extended", K=3, n=4, d=5, steps=300, log_every=100, restarts=5, seed=7)
    assert len(r.restart_objectives) == 5
    assert r.final["objective"] == pytest.approx(min(r.restart_objectives), rel=1e-12)
    keys = jax.random.split(jax.random.PRNGKey(7), 5)
    model = MODELS["relu-extended"]
    hyper = optimise.as_hyper({**{k: 5e-3 for k in model.hyper_names}, "lr": 0.1, "init_scale": 0.1})
    one = jax.jit(lambda k: ufm.simulate(model, Sizes(3, 4, 5), k, hyper, 300, 100))
    for i in (0, 3):
        single = one(keys[i])
        assert float(single.history["objective"][-1]) == pytest.approx(r.restart_objectives[i], rel=1e-10)


def test_float64_stays_float64():
    r = ufm.train("bias-free", K=3, n=4, d=5, steps=10, log_every=5)
    assert r.params["W"].dtype == np.float64 and r.config["dtype"] == "float64"


@pytest.mark.parametrize("kwargs,match", [
    (dict(lam_W=-1.0), r"lam_W \(--lam-W\) must be finite and >= 0, got -1.0"),
    (dict(lam_H=float("nan")), r"lam_H .* must be finite"),
    (dict(lr=0.0), r"lr \(--lr\) must be > 0"),
    (dict(lr=float("inf")), r"lr .* must be finite"),
    (dict(steps=0), r"steps \(--steps\) must be >= 1, got 0"),
    (dict(K=1), r"K \(--K\) must be >= 2, got 1"),
    (dict(n=0), r"n \(--n\) must be >= 1, got 0"),
    (dict(d=3), r"d \(--d\)=3 is below .* needs \(d >= 4 for K=4\); pass --allow-small-d"),
    (dict(lam_b=0.1), r"lam_b \(--lam-b\) does not apply to model 'bias-free'"),
    (dict(restarts=0), r"restarts .* must be >= 1"),
])
def test_bad_input_raises_clear_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ufm.train("bias-free", **kwargs)


def test_unknown_model_and_small_d_allowed():
    with pytest.raises(ValueError, match="unknown model 'nope'; choose one of: bias-free"):
        ufm.train("nope")
    with pytest.raises(ValueError, match=r"d >= 3 for K=4"):
        ufm.train("unregularized-bias", d=2)
    ufm.train("unregularized-bias", d=3, steps=5, log_every=5)  # d = K − 1 is covered
    r = ufm.train("bias-free", d=3, steps=5, log_every=5, allow_small_d=True)
    assert r.theory is None


def test_divergence_step_is_exact_under_vmap_and_nested_vmap():
    """The replay's custom batching rule must give each configuration its own exact step."""
    model = MODELS["bias-free"]
    key = jax.random.PRNGKey(5)
    lrs = jnp.array([0.1, 40.0, 15.0, 0.05])
    one = jax.jit(lambda h: ufm.simulate(model, SIZES, key, h, 400, 100))
    single = [int(one(hyper_of(model, lr=lr)).diverged_at) for lr in lrs]
    assert single[0] == single[3] == -1 and single[1] >= 0 and single[2] >= 0
    hyper = dict(hyper_of(model), lr=lrs)
    axes = {k: (0 if k == "lr" else None) for k in hyper}
    run = one
    batched = jax.jit(jax.vmap(run, in_axes=(axes,)))(hyper)
    np.testing.assert_array_equal(batched.diverged_at, single)
    # nested: restarts (inner vmap over keys) inside a grid (outer vmap over lr)
    keys = jnp.stack([key, key])
    nested = jax.jit(jax.vmap(lambda h: jax.vmap(lambda k: ufm.simulate(model, SIZES, k, h, 400, 100))(keys),
                              in_axes=(axes,)))(hyper)
    np.testing.assert_array_equal(nested.diverged_at, np.stack([single, single], axis=1))


@pytest.mark.parametrize("steps,tol,restarts", [(100, None, 1), (107, None, 1), (107, 1e-9, 1),
                                                (107, None, 3)])
def test_a_run_program_calls_the_measurements_once(steps, tol, restarts):
    """The start, the intervals and the tail are blocks of one loop: the nested jit of the
    measurements is called at one place in the lowered program (XLA inlines each call, so three
    calls compiled them three times — a third of a program's compile time each)."""
    import re

    run = optimise.compiled_simulation(MODELS["bias-free"], Sizes(3, 4, 5), steps, 10, "gd",
                                       restarts, tol)
    hyper = optimise.as_hyper(dict(lam_W=5e-3, lam_H=5e-3, lr=0.1, init_scale=0.1))
    text = run.lower(optimise.prng_key(0), hyper).as_text()
    assert len(re.findall(r"call @record(_\d+)?\b", text)) == 1  # record, record_0, …
    traj = optimise.trim(run(optimise.prng_key(0), hyper))
    assert list(np.asarray(traj.steps).reshape(restarts, -1)[0]) == [
        *range(0, steps // 10 * 10 + 1, 10), *([steps] if steps % 10 else [])]
