"""Figure `incremental_sessions` — class-incremental learning with a fixed simplex-ETF classifier
over the whole label space (Yang et al., Neural Collapse Terminus; seed 000, docs/theory.md §3.9): the
cosine of every class mean with its prototype e_k after each session. Classes reach their
prototype in their own session and stay there (frozen); with the dot-regression loss they get
there only at the sublinear rate of projected GD; with distillation (Extension 2) each session's
features are pulled back toward where they started."""
import numpy as np

import ufm

from experiments import common

NAME = "incremental_sessions"
FULL = dict(K=8, d=10, n=(12, 12, 12, 12, 6, 6, 3, 3), sessions=[4, 2, 2], E_H=1.0, lr=10.0)
SMOKE = dict(FULL, K=4, d=4, n=(4, 4, 2, 2), sessions=[2, 1, 1])
RUNS = {"cross-entropy": dict(loss="ce", steps=3000),
        "dot-regression": dict(loss="dot-regression", steps=20000),
        "cross-entropy + distillation 0.5": dict(loss="ce", steps=3000, distill=0.5)}


def main(argv=None):
    args = common.parse_args(NAME, __doc__, argv)
    cfg = SMOKE if args.smoke else FULL
    arrays, meta = {}, {"runs": {}}
    update, close = common.progress(len(RUNS), args.quiet, NAME)
    for i, (label, run) in enumerate(RUNS.items()):
        steps = 100 if args.smoke else run["steps"]
        r = ufm.train("fixed-etf", K=cfg["K"], n=cfg["n"], d=cfg["d"], steps=steps,
                      log_every=steps // 10, lr=cfg["lr"], E_H=cfg["E_H"], loss=run["loss"],
                      sessions=cfg["sessions"], distill=run.get("distill", 0.0))
        arrays[f"{label}/cos"] = np.array([s["cos_prototype"] for s in r.sessions])
        arrays[f"{label}/step"] = r.steps
        arrays[f"{label}/cos_min"] = r.history["cos_prototype_min"]
        meta["runs"][label] = dict(run, steps=steps, classes=[s["classes"] for s in r.sessions])
        if update:
            update(i + 1)
    close()
    return common.finish(args, NAME, arrays, dict(cfg, **meta), plot)


def plot(out):
    plt = common.pyplot()
    a, cfg = common.load(out, NAME)
    runs = cfg["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4.6))
    for ax, (label, run) in zip(axes, runs.items()):
        cos = a[f"{label}/cos"]
        im = ax.imshow(cos, vmin=-1, vmax=1, cmap="RdBu_r", aspect="auto")
        for t in range(cos.shape[0]):
            for k in range(cos.shape[1]):
                ax.text(k, t, f"{cos[t, k]:.3f}" if abs(cos[t, k]) < 0.9995 else "1", ha="center",
                        va="center", fontsize=6.5,
                        fontweight="bold" if k in run["classes"][t] else "normal")
        ax.set_xticks(range(cos.shape[1]))
        ax.set_yticks(range(cos.shape[0]))
        ax.set_yticklabels([f"after session {t}\n(classes {', '.join(map(str, c))})"
                            if ax is axes[0] else f"session {t}"
                            for t, c in enumerate(run["classes"])], fontsize=7)
        ax.set_xlabel("class k (n_k = " + ", ".join(map(str, cfg["n"])) + ")", fontsize=8)
        ax.set_title(f"{label}, {run['steps']} steps per session", fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.8, label="cos(class mean h̄_k, prototype e_k)")
    fig.suptitle(f"Class-incremental sessions with a fixed simplex-ETF classifier over all K="
                 f"{cfg['K']} classes (d={cfg['d']}, E_H={cfg['E_H']:g}, projected GD step "
                 f"{cfg['lr']:g}; bold: the session's own classes) [our setting]", fontsize=10)
    return common.save_figure(fig, out, NAME)


if __name__ == "__main__":
    main()
