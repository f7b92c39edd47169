"""Figure `training_loop` — measuring a real network layer by layer during training with
`ufm.measure.Collector` (docs/usage.md, "Inside a training loop"): a ReLU MLP of five hidden
layers trained with cross-entropy and weight decay (optax SGD with momentum, minibatches; each epoch one compiled
scan) on a synthetic Gaussian-mixture task; every few epochs each layer's features over the
training set are fed to the collector batch by batch (two passes), and NC1 is read per layer.
He & Su's law of data separation: the separation fuzziness D_l = Tr(Σ_W Σ_B⁺) of layer l decays
geometrically with depth, D_(l+1)/D_l ≈ ρ for every l — fitted as log D_l = a + l·log ρ, with the
fit's R², at every recorded epoch.

The data are generated here (no download): K classes, input dimension p, class centres on a
sphere plus isotropic noise, the same seed every time."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ufm.measure import Collector

from experiments import common

NAME = "training_loop"
FULL = dict(K=6, p=24, per_class=100, noise=1.2, width=48, hidden=5, lr=0.02, weight_decay=5e-4,
            batch=60, epochs=2000, record_every=50, seed=0)
SMOKE = dict(FULL, per_class=20, width=16, hidden=3, epochs=6, record_every=3)


def gaussian_mixture(K, p, per_class, noise, seed):
    """(X [N, p], labels [N]): class centres of norm 3 in random directions, N(0, noise²) noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(K, p))
    centres *= 3.0 / np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(K), per_class)
    return centres[labels] + noise * rng.normal(size=(len(labels), p)), labels


def init_mlp(key, p, width, hidden, K):
    keys = jax.random.split(key, hidden + 1)
    dims = [p] + [width] * hidden
    layers = [{"A": jax.random.normal(k, (dims[i + 1], dims[i])) * jnp.sqrt(2.0 / dims[i]),
               "c": jnp.zeros(dims[i + 1])} for i, k in enumerate(keys[:-1])]
    return {"layers": layers, "W": jax.random.normal(keys[-1], (K, width)) / jnp.sqrt(width),
            "b": jnp.zeros(K)}


def features(params, X):
    """Every hidden layer's features [B, width], input first."""
    out, h = [], X
    for layer in params["layers"]:
        h = jax.nn.relu(h @ layer["A"].T + layer["c"])
        out.append(h)
    return out


def loss(params, X, y, weight_decay):
    logits = features(params, X)[-1] @ params["W"].T + params["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    decay = sum(jnp.sum(layer["A"] ** 2) for layer in params["layers"]) + jnp.sum(
        params["W"] ** 2)
    return ce + weight_decay / 2 * decay


@functools.partial(jax.jit, static_argnames=("optimizer", "batch", "weight_decay"))
def epoch(params, state, key, X, y, *, optimizer, batch, weight_decay):
    """One pass over a shuffled training set in minibatches, as one scan."""
    order = jax.random.permutation(key, X.shape[0]).reshape(-1, batch)

    def step(carry, idx):
        params, state = carry
        grads = jax.grad(loss)(params, X[idx], y[idx], weight_decay)
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.lax.scan(step, (params, state), order)
    return params, state


def measure(params, X, labels, K, batch):
    """Each layer's NC suite from the collector, fed the training set batch by batch twice."""
    collector = Collector(K, W=np.asarray(params["W"]), b=np.asarray(params["b"]))
    get = jax.jit(features)
    batches = [(X[i:i + batch], labels[i:i + batch]) for i in range(0, len(X), batch)]
    for replay in (False, True):
        if replay:
            collector.second_pass()
        for xb, yb in batches:
            collector.update({f"layer{l + 1}": f for l, f in enumerate(get(params, xb))}, yb)
    return collector.result()


def separation_law(D):
    """(log ρ, a, R²) of the least-squares fit log D_l = a + l·log ρ over layers l = 1 … L."""
    layers = np.arange(1, len(D) + 1)
    logD = np.log(D)
    slope, intercept = np.polyfit(layers, logD, 1)
    fit = intercept + slope * layers
    total = np.sum((logD - logD.mean()) ** 2)
    return slope, intercept, 1.0 - np.sum((logD - fit) ** 2) / total if total > 0 else 1.0


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    X, labels = gaussian_mixture(cfg["K"], cfg["p"], cfg["per_class"], cfg["noise"], cfg["seed"])
    dtype = jnp.result_type(float)
    Xj, yj = jnp.asarray(X, dtype), jnp.asarray(labels)
    key = jax.random.PRNGKey(cfg["seed"])
    params = init_mlp(key, cfg["p"], cfg["width"], cfg["hidden"], cfg["K"])
    params = jax.tree.map(lambda v: jnp.asarray(v, dtype), params)
    optimizer = optax.sgd(cfg["lr"], momentum=0.9)
    state = optimizer.init(params)
    recorded, nc1, fuzz, accuracy = [], [], [], []
    update, close = common.progress(cfg["epochs"], args.quiet, NAME)
    for e in range(cfg["epochs"] + 1):  # over epochs (each one compiled scan of its steps)
        if e % cfg["record_every"] == 0:
            report = measure(params, X, labels, cfg["K"], cfg["batch"])
            names = sorted(report["layers"], key=lambda s: int(s[5:]))
            recorded.append(e)
            nc1.append([report["layers"][n]["nc1"] for n in names])
            fuzz.append([report["layers"][n]["nc1_unnormalised"] for n in names])
            accuracy.append(report["layers"][names[-1]]["accuracy"])
        if e < cfg["epochs"]:
            key, sub = jax.random.split(key)
            params, state = epoch(params, state, sub, Xj, yj, optimizer=optimizer,
                                  batch=cfg["batch"], weight_decay=cfg["weight_decay"])
            if update:
                update(e + 1)
    close()
    fuzz = np.asarray(fuzz)
    law = np.array([separation_law(D) for D in fuzz])  # [epochs, (log ρ, a, R²)]
    arrays = dict(epoch=np.asarray(recorded), nc1=np.asarray(nc1), fuzziness=fuzz,
                  log_ratio=law[:, 0], intercept=law[:, 1], r2=law[:, 2],
                  accuracy=np.asarray(accuracy))
    return common.finish(args, NAME, arrays, cfg, plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    L = a["fuzziness"].shape[1]
    fig, axes = plt.subplots(1, 3, figsize=(21, 5.5))
    ax = axes[0]
    for l in range(L):
        ax.semilogy(a["epoch"], a["nc1"][:, l], "-", label=f"layer {l + 1}")
    ax.set(title="NC1 per layer over training (Collector, two passes per record)",
           xlabel="epoch", ylabel="NC1 = tr(Σ_W Σ_B⁺)/K (log)")
    ax = axes[1]
    layers = np.arange(1, L + 1)
    for i in sorted({0, len(a["epoch"]) // 3, len(a["epoch"]) - 1}):
        line, = ax.semilogy(layers, a["fuzziness"][i], "o", label=f"epoch {a['epoch'][i]}")
        ax.semilogy(layers, np.exp(a["intercept"][i] + a["log_ratio"][i] * layers), "--",
                    color=line.get_color(), lw=1,
                    label=f"fit: ρ = {np.exp(a['log_ratio'][i]):.3f}, R² = {a['r2'][i]:.3f}")
    ax.set(title="He & Su's law: D_l = Tr(Σ_W Σ_B⁺) against layer", xlabel="layer l",
           ylabel="D_l (log)")
    ax = axes[2]
    ax.plot(a["epoch"], np.exp(a["log_ratio"]), "-", label="fitted ratio ρ = D_(l+1)/D_l")
    ax.plot(a["epoch"], a["r2"], "-", label="R² of the log-linear fit")
    ax.plot(a["epoch"], a["accuracy"], ":", label="training accuracy (classifier)")
    ax.set(title="the law's ratio and fit over training", xlabel="epoch", ylim=(0, 1.05))
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"A ReLU MLP ({cfg['hidden']} hidden layers of {cfg['width']}, CE, weight decay "
                 f"{cfg['weight_decay']:g}, SGD {cfg['lr']:g} with momentum 0.9, batches of {cfg['batch']}) on a "
                 f"Gaussian mixture (K = {cfg['K']}, p = {cfg['p']}, {cfg['per_class']} per "
                 f"class), measured with ufm.measure.Collector  [our setting]", fontsize=11)
    common.tight_layout(fig, rect=(0, 0, 1, 0.93))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
