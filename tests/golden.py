"""A fixed set of runs and sweeps whose results are pinned in tests/data/golden.npz.

Made with the code before the models package (issue: "a model is one file"), and checked by
tests/test_golden.py after every change of architecture: a refactoring that keeps the mathematics
must reproduce these numbers to 1e-12 (float64). Only the public entry points are used
(`ufm.train`, `ufm.sweep.run_grid`), so the cases survive any reorganisation behind them.

Regenerate (only when a change of results is intended and explained in the commit):
    python tests/golden.py
Add new cases computed by an earlier commit's code (a worktree of it, with this file copied in):
    python tests/golden.py --add CASE …
Regenerated once since, with the same code, when the tests' XLA flags gained
`--xla_cpu_use_fusion_emitters=false` (tests/conftest.py). Only the two L-BFGS cases moved beyond
1e-12: their objectives by ≤ 4e-12 relative, their shape measurements (quantities near zero at
collapse) and final gradient norms by ≤ 3e-6 relative — L-BFGS's line search amplifies round-off
in its last steps. Every gd/momentum/adam/solver case stayed within 1e-12.
(The pinned file holds every case below and two more, relu-extended and deep-relu, made with the
first code and flags and carried over unchanged; tests/test_golden.py runs a subset that takes every family, optimiser and driver path
once, to keep the suite's time.)
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "data", "golden.npz")

TRAIN = {
    "bias-free": dict(model="bias-free", K=3, n=4, d=5, steps=300, log_every=100, lam_W=2e-2,
                      lam_H=1e-2),
    "unregularized-bias-momentum": dict(model="unregularized-bias", K=3, n=(2, 3, 5), d=4,
                                        steps=250, log_every=100, optimizer="momentum",
                                        lr=0.05),
    "regularized-bias-adam": dict(model="regularized-bias", K=4, n=3, d=6, steps=200,
                                  log_every=50, optimizer="adam", lr=0.01, lam_b=0.3),
    "bias-free-lbfgs": dict(model="bias-free", K=3, n=3, d=4, steps=60, log_every=20,
                            optimizer="lbfgs", lam_W=1e-3, lam_H=2e-3),
    "bias-free-tol-restarts": dict(model="bias-free", K=3, n=3, d=4, steps=2000, log_every=100,
                                   tol=1e-5, restarts=3),
    "linear-extended": dict(model="linear-extended", K=3, n=3, d=4, steps=300, log_every=100),
    "deep-linear-4": dict(model="deep-linear", depth=4, K=3, n=2, d=4, steps=200, log_every=50,
                          lam_W=1e-2, lam_H1=3e-3),
    "deep-linear-ce": dict(model="deep-linear-ce", K=3, n=2, d=4, steps=200, log_every=50),
    "ce": dict(model="ce", K=3, n=3, d=4, steps=200, log_every=50, lr=0.5),
    "ce-bias": dict(model="ce-bias", K=3, n=(1, 2, 4), d=4, steps=200, log_every=50, lr=0.5,
                    lam_b=1e-2),
    "fixed-etf": dict(model="fixed-etf", K=3, n=3, d=4, steps=200, log_every=50, E_H=2.0),
    "fixed-etf-dot": dict(model="fixed-etf", loss="dot-regression", alpha="inverse-count", K=3,
                          n=(1, 2, 3), d=4, steps=200, log_every=50),
    "fixed-orthogonal": dict(model="fixed-orthogonal", K=3, n=3, d=4, steps=200, log_every=50),
    "lpm": dict(model="lpm", K=3, n=(4, 2, 1), d=4, steps=200, log_every=50, E_W=0.5),
    "sessions": dict(model="fixed-etf", K=4, n=2, d=4, steps=100, log_every=40, sessions=2,
                     distill=0.5, mask_softmax=True),
    # added with the run specification (issue 34), computed by the code before it (5d27d4d):
    # the models the first set did not have, the convex solver, restarts with tol on a
    # cross-entropy model, sessions with L-BFGS
    "scaled-target": dict(model="scaled-target", K=3, n=(2, 3, 4), d=4, steps=200,
                          log_every=50, gamma=0.5),
    "ce-smoothing": dict(model="ce-smoothing", K=3, n=3, d=4, steps=200, log_every=50, lr=0.5,
                         smoothing=0.1),
    "squared-hinge": dict(model="squared-hinge", K=4, n=2, d=4, steps=200, log_every=50),
    "ce-convex": dict(model="ce", K=3, n=(1, 2, 4), d=4, steps=300, log_every=100,
                      optimizer="convex"),
    "bias-free-convex": dict(model="bias-free", K=4, n=(3, 2, 2, 1), d=3, steps=300,
                             log_every=100, optimizer="convex", lam_W=1e-2, lam_H=2e-2,
                             allow_small_d=True),
    "squared-hinge-convex": dict(model="squared-hinge", K=3, n=(2, 1, 3), d=4, steps=300,
                                 log_every=100, optimizer="convex"),
    "ce-bias-tol-restarts": dict(model="ce-bias", K=3, n=2, d=4, steps=400, log_every=100,
                                 lr=0.5, tol=1e-4, restarts=2),
    "deep-relu-lbfgs": dict(model="deep-relu", depth=3, K=3, n=2, d=4, steps=60, log_every=20,
                            optimizer="lbfgs"),
}

SWEEPS = {
    "sweep-traced": dict(model_name="unregularized-bias", static={"K": [3], "d": [5], "n": [4]},
                         lams={"lam_W": 2e-2}, axes={"lam_H": [1e-3, 1e-2], "lr": [0.05, 0.1]},
                         order=["lam_H", "lr"], steps=150, seeds=2),
    "sweep-static": dict(model_name="deep-linear", static={"depth": [2, 3], "K": [3], "d": [4],
                                                           "n": [2]},
                         lams={"lam_W": 1e-2}, axes={"lam_H1": [1e-3, 1e-2]},
                         order=["lam_H1", "depth"], steps=120),
    "sweep-lbfgs-tol": dict(model_name="bias-free", static={"K": [3], "d": [4], "n": [(1, 2, 3)]},
                            lams={}, axes={"lam_W": [1e-3, 1e-2]}, order=["lam_W"], steps=80,
                            optimizer="lbfgs"),
    "sweep-sessions": dict(model_name="fixed-etf", static={"K": [4], "d": [4], "n": [2]},
                           lams={}, axes={"E_H": [1.0, 2.0]}, order=["E_H"], steps=60,
                           sessions=2),
    # added with the run specification (issue 34), computed by the code before it (5d27d4d)
    "sweep-convex": dict(model_name="ce-bias", static={"K": [3], "d": [4], "n": [(1, 2, 3)]},
                         lams={}, axes={"lam_b": [1e-3, 1e-1]}, order=["lam_b"], steps=100,
                         optimizer="convex"),
    "sweep-restarts": dict(model_name="squared-hinge", static={"K": [3], "d": [4], "n": [2]},
                           lams={}, axes={"lam_H": [1e-3, 1e-2]}, order=["lam_H"], steps=100,
                           seeds=2),
}


def compute(cases=None):
    """{case/name: array} for the `cases` named (default all; float64, CPU)."""
    import ufm
    from ufm import sweep

    out = {}
    for case, kw in TRAIN.items():
        if cases is not None and case not in cases:
            continue
        kw = dict(kw)
        r = ufm.train(kw.pop("model"), **kw)
        out[f"{case}/steps"] = np.asarray(r.steps)
        for k, v in r.history.items():
            out[f"{case}/history/{k}"] = np.asarray(v)
        for k, v in r.params.items():
            out[f"{case}/params/{k}"] = np.asarray(v)
        out[f"{case}/restarts"] = np.asarray(r.restart_objectives)
        cert = r.certificate
        out[f"{case}/grad_norm"] = np.asarray(cert["grad_norm"])
        out[f"{case}/steps_taken"] = np.asarray(cert["steps_taken"])
        if r.theory is not None:
            out[f"{case}/theory"] = np.asarray(float(r.theory.objective))
    for case, kw in SWEEPS.items():
        if cases is not None and case not in cases:
            continue
        kw = dict(kw)
        axes = {k: np.asarray(v, np.float64) for k, v in kw.pop("axes").items()}
        arrays, _ = sweep.run_grid(kw.pop("model_name"), kw.pop("static"), kw.pop("lams"), axes,
                                   **kw)
        for k, v in arrays.items():
            if v.dtype.kind in "fiub":
                out[f"{case}/{k}"] = np.asarray(v)
    return out


def main(argv):
    """No arguments: every case, the file rewritten. `--add CASE …`: those cases computed and
    added to the file (the others kept as pinned)."""
    import conftest  # noqa: F401  (compiled as the tests compile: XLA flags, float64)

    if argv[:1] == ["--add"]:
        with np.load(PATH) as f:
            out = {k: f[k] for k in f.files}
        out.update(compute(argv[1:]))
    else:
        out = compute()
    os.makedirs(os.path.dirname(PATH), exist_ok=True)
    np.savez_compressed(PATH, **out)
    print(f"wrote {len(out)} arrays to {PATH} ({os.path.getsize(PATH) / 1024:.0f} KiB)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
