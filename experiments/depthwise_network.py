"""Figure `depthwise_network` — the paper's practical comparison in spirit (Tirer & Bruna §6): a
small ReLU MLP (two hidden layers with bias, bias-free last layer, weight decay, MSE) trained
full-batch on scikit-learn's bundled digits past zero training error, NC1 of its two deepest
feature levels against epoch, next to NC1 of H1 and H2 of the ReLU extended UFM.

Needs scikit-learn (the data ship inside it, nothing is downloaded): pip install -e ".[digits]".
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ufm import metrics

from experiments import common, theorem_figure

NAME = "depthwise_network"
FULL = dict(per_class=174, width=64, lr=0.05, momentum=0.9, weight_decay=5e-4, epochs=20000,
            log_every=200, ufm=dict(K=10, n=10, d=32, lam_W1=5e-3, lam_W2=5e-3, lam_H1=5e-3,
                                    lr=0.1, init_scale=0.1, steps=100000, log_every=1000,
                                    restarts=2))
SMOKE = dict(FULL, per_class=10, width=16, epochs=100, log_every=50,
             ufm=dict(FULL["ufm"], n=3, d=12, steps=200, log_every=100, restarts=1))


def load_digits_class_major(per_class):
    """X [64, K·per_class] scaled to [0, 1], class-major; K = 10."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("depthwise_network needs scikit-learn (its digits data ship with it): "
                 "pip install -e '.[digits]'")
    X, y = load_digits(return_X_y=True)
    cols = [X[y == k][:per_class] for k in range(10)]
    return np.concatenate(cols).T / 16.0


def train_mlp(X, cfg, key, progress):
    """Full-batch heavy-ball GD on 1/(2N)‖W σ(A2 σ(A1X + c1) + c2) − Y‖² + wd/2 Σ‖weights‖²."""
    K, (p, N) = 10, X.shape
    Y = jnp.kron(jnp.eye(K), jnp.ones((1, N // K)))
    w = cfg["width"]
    k1, k2, k3 = jax.random.split(key, 3)
    params = {"A1": jax.random.normal(k1, (w, p)) * jnp.sqrt(2.0 / p), "c1": jnp.zeros((w, 1)),
              "A2": jax.random.normal(k2, (w, w)) * jnp.sqrt(2.0 / w), "c2": jnp.zeros((w, 1)),
              "W": jax.random.normal(k3, (K, w)) * jnp.sqrt(1.0 / w)}

    def levels(q):
        h1 = jax.nn.relu(q["A1"] @ X + q["c1"])
        return h1, jax.nn.relu(q["A2"] @ h1 + q["c2"])

    def loss(q):
        _, h2 = levels(q)
        decay = sum(jnp.sum(q[k] ** 2) for k in ("A1", "A2", "W"))
        return jnp.sum((q["W"] @ h2 - Y) ** 2) / (2 * N) + cfg["weight_decay"] / 2 * decay

    opt = optax.sgd(cfg["lr"], momentum=cfg["momentum"])

    @jax.jit
    def chunk(q, s):
        def step(carry, _):
            q, s = carry
            upd, s = opt.update(jax.grad(loss)(q), s, q)
            return (optax.apply_updates(q, upd), s), None

        (q, s), _ = jax.lax.scan(step, (q, s), None, length=cfg["log_every"])
        h1, h2 = levels(q)
        err = jnp.mean(jnp.argmax(q["W"] @ h2, 0) != jnp.repeat(jnp.arange(K), N // K))
        return q, s, (loss(q), err, metrics.nc1(h1, K), metrics.nc1(h2, K))

    state = opt.init(params)
    rows = []
    for i in range(cfg["epochs"] // cfg["log_every"]):  # chunks of the compiled scan
        params, state, rec = chunk(params, state)
        rows.append([float(v) for v in rec])
        if progress:
            progress((i + 1) * cfg["log_every"])
    h1, h2 = levels(params)
    features = {"h1": np.asarray(h1.T), "h2": np.asarray(h2.T), "W": np.asarray(params["W"]),
                "labels": np.repeat(np.arange(K), N // K)}
    return np.arange(1, len(rows) + 1) * cfg["log_every"], np.array(rows), features


def measure_layers(out, features):
    """Save the trained MLP's features as a `ufm measure` input (data/NAME_features.npz: h1, h2
    [N, w], labels [N], W [K, w]) and measure every layer with it: what a user does with a real
    network's features (`ufm measure data/depthwise_network_features.npz --layer h1 --layer h2`).
    The suite goes to data/NAME_measure.json."""
    from ufm import measure
    from ufm.files import write_json, write_npz

    path = str(common.data_paths(out, NAME)[0]).replace(".npz", "_features.npz")
    write_npz(path, features)
    result = measure.measure_file(path, layers=["h1", "h2"])
    write_json(path.replace("_features.npz", "_measure.json"), result)
    return result


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    X = jnp.asarray(load_digits_class_major(cfg["per_class"]))
    update, close = common.progress(cfg["epochs"], args.quiet, f"{NAME} MLP")
    epochs, rows, features = train_mlp(X, cfg, jax.random.PRNGKey(0), update)
    close()
    measured = measure_layers(args.out, features)
    if not args.quiet:
        from ufm.measure import format_report

        print(format_report(measured))
    ufm_arrays, ufm_meta = theorem_figure.run("relu-extended", cfg["ufm"], args, f"{NAME} UFM")
    arrays = {"epoch": epochs, "loss": rows[:, 0], "train_error": rows[:, 1],
              "nc1_h1": rows[:, 2], "nc1_h2": rows[:, 3],
              **{f"ufm_{k}": v for k, v in ufm_arrays.items()}}
    return common.finish(args, NAME, arrays, {"mlp": {k: v for k, v in cfg.items() if k != "ufm"},
                                         "ufm": ufm_meta}, plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    mlp = cfg["mlp"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    common.log_curves(axes[0], a["epoch"], {"NC1 of h1 (first hidden layer)": a["nc1_h1"],
                                            "NC1 of h2 (penultimate layer)": a["nc1_h2"]},
                      f"ReLU MLP on digits (2×{mlp['width']} hidden, MSE, wd {mlp['weight_decay']:g})",
                      "NC1 (log scale)", "full-batch epoch")
    err = a["train_error"]
    zero = a["epoch"][np.argmax(err == 0)] if (err == 0).any() else None
    note = (f"training error 0 from epoch {zero} on (first record)" if zero is not None
            else f"final training error {err[-1]:.3f}")
    axes[0].text(0.5, 0.5, note, transform=axes[0].transAxes, ha="center", fontsize=9)
    common.log_curves(axes[1], a["ufm_step"], {"NC1 of H1": a["ufm_h_nc1_H1"],
                                               "NC1 of W1H1 (pre-ReLU)": a["ufm_h_nc1_Z2"],
                                               "NC1 of H2 = σ(W1H1)": a["ufm_h_nc1_H2"]},
                      "ReLU extended UFM (K=10): H2 plays the penultimate layer",
                      "NC1 (log scale)", "GD iteration")
    u = cfg["ufm"]["config"]
    fig.suptitle(f"Depthwise collapse: the deeper level collapses more, in the network and in the "
                 f"ReLU extended UFM\nMLP: {mlp['per_class']} digits per class, momentum GD step "
                 f"{mlp['lr']:g}; UFM: d={u['d']}, n={u['n']}, λ={u['lam_W1']:g}  [our setting]",
                 fontsize=11)
    common.tight_layout(fig, rect=(0, 0, 1, 0.9))
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
