"""Command-line interface: `ufm train|sweep|bench|proof|figures …`.

Bad input gets one line on stderr and exit code 2, with nothing written.
"""
import argparse
import os
import sys
import time

import numpy as np

from ufm.models import FRAMES, MODELS
from ufm.progress import progress_bar
from ufm.runner import DEFAULTS, HYPER_FLAGS, flag, parse_counts


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        self.exit(2, f"ufm: error: {message}\n")


def _add_train_flags(p, grid=False, model=True):
    number = str if grid else float  # a sweep parses grids itself (start:stop:num[:log], a,b,c)
    grid_help = " (a grid: start:stop:num, start:stop:num:log, or a,b,c)" if grid else ""
    if model:
        p.add_argument("model", help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--K", type=int, default=DEFAULTS["K"], help="number of classes (default 4)")
    p.add_argument("--n", type=str, default=str(DEFAULTS["n"]),
                   help="samples per class (default 50), or a comma list of K per-class counts")
    p.add_argument("--d", type=int, default=DEFAULTS["d"], help="feature dimension (default 20)")
    for name in HYPER_FLAGS:
        p.add_argument(flag(name), dest=name, type=number, default=None,
                       help=f"{name} (default {'1' if name.startswith('E_') else '5e-3'}; only for "
                            f"models that have it){grid_help}")
    p.add_argument("--lr", type=number, default=DEFAULTS["lr"],
                   help=f"step size (default 0.1){grid_help}")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"],
                   help="gradient steps (default 20000; 100000 for proof)")
    p.add_argument("--log-every", type=int, default=DEFAULTS["log_every"],
                   help="record measurements every this many steps (default 500)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    p.add_argument("--init-scale", type=number, default=None,
                   help=f"std of the Gaussian init (default: 1 plain models, 0.1 extended){grid_help}")
    p.add_argument("--restarts", type=int, default=1,
                   help="independent initialisations run together with vmap; best kept")
    p.add_argument("--optimizer", default="gd", choices=("gd", "momentum", "adam", "lbfgs"),
                   help="plain gradient descent (default), heavy-ball momentum, Adam, or L-BFGS "
                        "with a line search (unconstrained models; needs no --lr)")
    p.add_argument("--tol", type=float, default=None,
                   help="stop once the gradient norm relative to the objective is <= TOL "
                        "(--steps is then the cap); default: run every step (lbfgs: stop at "
                        "round-off, 1e-10 in float64, 1e-6 in float32)")
    p.add_argument("--allow-small-d", action="store_true",
                   help="run with d below what the theorem needs (theory is then null)")
    p.add_argument("--x64", action="store_true", help="float64 (default float32)")
    if model:
        p.add_argument("--loss", choices=("ce", "dot-regression"), default=None,
                       help="fixed-etf: cross-entropy (default) or dot-regression")
        p.add_argument("--alpha", choices=("none", "inverse-count"), default=None,
                       help="constrained models: per-class weights of the loss, none (average "
                            "over samples, default) or inverse-count (α_k = 1/n_k)")
        p.add_argument("--mask-softmax", action="store_true",
                       help="fixed classifiers: softmax over the current session's classes only")


def _add_session_flags(p):
    p.add_argument("--sessions", default=None,
                   help="fixed-etf/fixed-orthogonal: class-incremental sessions, T (K classes "
                        "split in order) or a comma list of class counts per session; --steps "
                        "per session")
    p.add_argument("--distill", type=float, default=0.0,
                   help="with --sessions: weight of the tie of each session's features to their "
                        "values when the session starts (seed 000, Extension 2; default 0)")


def _add_host_devices(p):
    p.add_argument("--host-devices", type=int, default=1,
                   help="CPU only: split the host into this many JAX devices so a grid is sharded "
                        "over several cores (default 1; ignored if XLA_FLAGS sets it). Faster on "
                        "small problems, but jax 0.10.2's CPU runtime was seen to hang with 2 "
                        "devices on K=10, d=64, n=100: opt in with care")


def _use_host_devices(count):
    """Ask XLA for `count` CPU devices before any backend starts (count 1: leave XLA alone).

    The CLI is the caller here, as with --x64; the library never does this. A setting already in
    XLA_FLAGS wins. Accelerator platforms are unaffected.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    if count <= 1:
        return
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def cmd_bench(args):
    from ufm import bench

    try:
        batches = tuple(int(b) for b in args.batches.split(","))
        if any(b < 1 for b in batches):
            raise ValueError
    except ValueError:
        print(f"ufm: error: --batches must be a comma list of positive integers, got "
              f"{args.batches!r}", file=sys.stderr)
        return 2
    sizes = {"paper": bench.SIZES[:1], "large": bench.SIZES[1:], "both": bench.SIZES}[args.sizes]
    res = bench.run(quick=args.quick, batches=batches, sizes=sizes)
    if args.json:
        import json

        print(json.dumps(res, indent=1))
    else:
        print(bench.report(res))
    return 0


def build_parser():
    parser = _Parser(prog="ufm", description="Unconstrained features model simulator (JAX).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("train", help="run gradient descent on one configuration")
    _add_train_flags(p)
    _add_session_flags(p)
    p.add_argument("--out", default=None, help="output folder (default runs/MODEL)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    w = sub.add_parser("sweep", help="run a hyperparameter grid as one compiled, vmapped program")
    _add_train_flags(w, grid=True)
    _add_session_flags(w)
    w.add_argument("--seeds", type=int, default=0, help="add a last axis of S seeds (seed, seed+1, …)")
    w.add_argument("--chunk", type=int, default=None, help="configurations per compiled chunk (auto)")
    w.add_argument("--out", default=None, help="output folder (default runs/sweep-MODEL); a rerun "
                                               "with the same --out resumes")
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_host_devices(w)
    w.add_argument("--distributed", action="store_true",
                   help="several hosts: call jax.distributed.initialize() first (SLURM and other "
                        "launchers are detected by JAX); run the same command on every host")
    b = sub.add_parser("bench", help="gradient steps per second: scan vs loops, and grids")
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.add_argument("--quick", action="store_true", help="10× shorter measurements")
    b.add_argument("--batches", default="1,64,1024,4096", help="grid sizes B (comma list)")
    b.add_argument("--sizes", choices=("paper", "large", "both"), default="both",
                   help="K=4,d=20,n=50 (paper), K=10,d=64,n=100 (large) or both")
    b.add_argument("--x64", action="store_true", help="float64 (default float32)")
    _add_host_devices(b)
    r = sub.add_parser("proof", help="check every step of a theorem's proof at random points and "
                                     "at the gradient-descent solution")
    r.add_argument("theorem", help="one of: 3.1, 3.2, C.1 (Lemma C.1), 4.1, 4.2, 5.1")
    _add_train_flags(r, model=False)
    r.set_defaults(steps=100000)  # tightness to 1e-8 needs within-class deviations gone
    r.add_argument("--random", type=int, default=200, help="random points per step (default 200)")
    r.add_argument("--sigma", type=float, default=0.1,
                   help="Theorem 5.1: noise std of the fixed features (default 0.1)")
    r.add_argument("--out", default=None, help="output folder (default runs/proof-THEOREM)")
    f = sub.add_parser("figures", help="rebuild the figures (python -m experiments)")
    f.add_argument("--only", default=None, help="comma list of figure names")
    f.add_argument("--smoke", action="store_true", help="tiny sizes")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.add_argument("--out", default=None, help="output folder (default figures/)")
    return parser


def _fmt(v):
    return "nan" if v is None else f"{v:.6g}"


def summary(result):
    """A short human summary: objective against the closed form, then the measurements."""
    cfg = result.config
    lines = [f"{result.model}  K={cfg['K']} n={cfg['n']} d={cfg['d']}  {cfg['dtype']}  "
             f"{cfg['steps']} steps of {cfg['optimizer']} (lr={cfg['lr']:g})"]
    obj = result.final["objective"]
    if result.theory is not None:
        th = result.theory
        gap = abs(obj - th.objective) / max(abs(th.objective), 1e-300)
        where = (f"; c = {th.c:.4g} (threshold 1)" if hasattr(th, "c")
                 else f"; K·a = {th.Ka:.4g} (threshold 2^(-4/3) = {th.threshold:.4g})"
                 if hasattr(th, "Ka") else f"; every feature √E_H·(its class vector), "
                                            f"√E_H = {th.feature_norm:.4g}")
        what = "closed form" if result.sessions is None else "closed form without sessions"
        lines.append(f"objective {obj:.10g}   {what} {th.objective:.10g}   "
                     f"{'relative' if th.objective else 'absolute'} gap {gap:.2e}")
        lines.append(f"predicted structure: {th.structure}{where}")
    else:
        lines.append(f"objective {obj:.10g}   (no theorem applies to this setting)")
    if len(result.restart_objectives) > 1:
        objs = result.restart_objectives
        lines.append(f"restarts: {len(objs)}, final objectives {min(objs):.6g} … {max(objs):.6g}")
    meas = [f"{k} {_fmt(v)}" for k, v in result.final.items() if k != "objective"]
    for i in range(0, len(meas), 4):
        lines.append("  " + "   ".join(meas[i:i + 4]))
    for s in result.sessions or []:
        cos = " ".join(f"{c:.4f}" for c in s["cos_prototype"])
        lines.append(f"session {s['session']} (classes {s['classes']}, to step {s['end_step']}): "
                     f"cos(class mean, class vector) = {cos}")
    cert = result.certificate
    if cert is not None:
        decrease = "n/a" if cert["rel_decrease"] is None else f"{cert['rel_decrease']:.2e}"
        stop = (f"; stopped at step {cert['converged_at']}" if cert["converged_at"] is not None
                else "")
        lines.append(f"certificate: {'converged' if cert['converged'] else 'NOT converged'} "
                     f"(relative gradient norm {cert['grad_norm']:.2e}, tol {cert['tol']:.0e}; "
                     f"last interval's relative decrease {decrease}; {cert['steps_taken']} steps"
                     f"{stop})")
    if result.diverged_at is not None:
        lines.append(f"DIVERGED: the objective became non-finite at step {result.diverged_at}")
    return "\n".join(lines)


def convergence_warning(result):
    """One line saying that a run did not converge and what to try, or None."""
    cert = result.certificate
    if cert is None or cert["converged"] or result.diverged_at is not None:
        return None
    cfg = result.config
    gap = cert["closed_form_gap"]
    far = f", and it ends {gap:.1e} (relative) from the closed form" if gap is not None else ""
    tries = [f"more --steps (ran {cert['steps_taken']})"]
    if cfg["optimizer"] != "lbfgs" and cfg["model"] not in FRAMES:
        tries.insert(0, "--optimizer lbfgs")
    if cfg["optimizer"] == "gd":
        tries.append("--optimizer momentum")
    return (f"ufm: warning: the run did not converge: relative gradient norm "
            f"{cert['grad_norm']:.1e} > tol {cert['tol']:.0e}{far}; try {' or '.join(tries)}")


def _model_flags(model, args):
    """The λ flags as given; a flag the model does not take is a ValueError naming it."""
    lams = {k: getattr(args, k) for k in HYPER_FLAGS}
    for name, value in lams.items():
        if value is not None and name not in model.hyper_names:
            raise ValueError(f"{flag(name)} does not apply to model {model.name!r} "
                             f"(it takes: {', '.join(flag(k) for k in model.hyper_names)})")
    return lams


def cmd_train(args):
    from ufm.models import get_model
    from ufm.runner import train, write_result

    try:
        lams = _model_flags(get_model(args.model, args.loss, args.alpha, args.mask_softmax), args)
        total = args.steps
        if args.sessions is not None:
            from ufm.runner import session_groups

            total *= len(session_groups(args.sessions, args.K))
        update, close = progress_bar(total, args.quiet)
        t0 = time.perf_counter()
        result = train(args.model, K=args.K, n=args.n, d=args.d, steps=args.steps,
                       log_every=args.log_every, seed=args.seed, lr=args.lr,
                       init_scale=args.init_scale, restarts=args.restarts,
                       optimizer=args.optimizer, allow_small_d=args.allow_small_d,
                       progress=update, loss=args.loss, alpha=args.alpha,
                       mask_softmax=args.mask_softmax, sessions=args.sessions,
                       distill=args.distill, tol=args.tol, **lams)
        elapsed = time.perf_counter() - t0
    except ValueError as err:
        print(f"ufm: error: {err}", file=sys.stderr)
        return 2
    close()
    out = args.out or os.path.join("runs", args.model)
    write_result(result, out)
    print(summary(result))
    print(f"{elapsed:.2f} s including compilation; wrote {out}/result.json and {out}/params.npz")
    warning = convergence_warning(result)
    if warning:
        print(warning, file=sys.stderr)
    return 1 if result.diverged_at is not None else 0


def cmd_proof(args):
    import json

    from ufm import proofs
    from ufm.runner import atomic_write

    try:
        proof = proofs.get_proof(args.theorem)
        lams = _model_flags(MODELS[proof.model], args)
        doc = proofs.run_proof(args.theorem, K=args.K, n=args.n, d=args.d, random=args.random,
                               seed=args.seed, steps=args.steps, lr=args.lr,
                               restarts=args.restarts, optimizer=args.optimizer,
                               init_scale=args.init_scale, sigma=args.sigma, tol=args.tol,
                               **{k: v for k, v in lams.items() if v is not None})
    except ValueError as err:
        print(f"ufm: error: {err}", file=sys.stderr)
        return 2
    out = args.out or os.path.join("runs", f"proof-{proof.theorem}")
    text = json.dumps(doc, indent=1).encode()
    atomic_write(os.path.join(out, "proof.json"), lambda fh: fh.write(text))
    print(proofs.format_table(doc))
    cfg = doc["config"]
    if cfg.get("closed_form") is not None:
        print(f"{cfg['optimizer']}: objective {cfg['objective']:.12g}, closed form "
              f"{cfg['closed_form']:.12g}")
    cert = cfg["certificate"]
    print(f"certificate: {'converged' if cert['converged'] else 'NOT converged'} (relative "
          f"gradient norm {cert['grad_norm']:.2e}, tol {cert['tol']:.0e}, "
          f"{cert['steps_taken']} steps)")
    failed = sorted({s["name"] + " (" + s["at"] + ")" for s in doc["summary"]
                     if s["hold"] < s["points"]})
    print(f"wrote {out}/proof.json; " + (f"FAILED: {', '.join(failed)}" if failed
                                         else "every step holds, and is tight at the optimum"))
    return 1 if failed else 0


def _axis_order(argv):
    """Names of the grid flags in the order they appear on the command line."""
    order = []
    for tok in argv:
        name = tok.split("=")[0].lstrip("-").replace("-", "_")
        if tok.startswith("--") and name not in order:
            order.append(name)
    return order


def cmd_sweep(args, argv):
    from ufm import sweep
    from ufm.models import Sizes, get_model

    try:
        model = get_model(args.model, args.loss, args.alpha, args.mask_softmax)
        lams = _model_flags(model, args)
        if args.seeds < 0:
            raise ValueError(f"seeds (--seeds) must be >= 0, got {args.seeds}")
        if args.chunk is not None and args.chunk < 1:
            raise ValueError(f"chunk (--chunk) must be >= 1, got {args.chunk}")
        raw = dict(lams, lr=args.lr, init_scale=args.init_scale)
        axes, fixed = {}, {}
        for name in _axis_order(argv or sys.argv[1:]):
            text = raw.get(name)
            if text is not None and any(ch in str(text) for ch in ":,"):
                axes[name] = sweep.parse_axis(name, text)
        for name, text in raw.items():
            if name not in axes and text is not None:
                fixed[name] = float(sweep.parse_axis(name, text)[0])
        base = sweep.base_hyper(model, {k: fixed.get(k) for k in HYPER_FLAGS},
                                fixed.get("lr", DEFAULTS["lr"]), fixed.get("init_scale"))
        out = args.out or os.path.join("runs", f"sweep-{args.model}")
        update, close = progress_bar(None, args.quiet, unit="chunk")
        t0 = time.perf_counter()
        arrays, config = sweep.run_sweep(
            model, Sizes(args.K, parse_counts(args.n), args.d), base, axes, steps=args.steps, seed=args.seed,
            seeds=args.seeds, optimizer=args.optimizer, restarts=args.restarts, chunk=args.chunk,
            out=out, progress=update, allow_small_d=args.allow_small_d, sessions=args.sessions,
            distill=args.distill, tol=args.tol)
        elapsed = time.perf_counter() - t0
    except ValueError as err:
        print(f"ufm: error: {err}", file=sys.stderr)
        return 2
    close()
    sweep.write_sweep(arrays, config, out)
    n = int(np.prod(config["shape"])) if config["shape"] else 1
    th = arrays["theory_objective"]
    gap = np.abs(arrays["objective"] - th) / np.where(th > 0, th, 1.0)  # absolute where f* = 0
    print(f"{args.model}: {n} configurations × {args.steps} steps in {elapsed:.1f} s "
          f"({n * args.steps / elapsed:,.0f} config-steps/s, compilation included) on "
          f"{jax_devices_summary()}")
    print(f"axes: {', '.join(f'{k}[{len(v)}]' for k, v in axes.items()) or 'none'}"
          f"{f', seed[{args.seeds}]' if args.seeds else ''}; diverged: {int(arrays['diverged'].sum())}; "
          f"not converged (relative gradient norm > {config['certificate_tol']:.0e}): "
          f"{int((~arrays['converged']).sum())}; "
          f"median relative gap to the closed form: {np.nanmedian(gap) if np.isfinite(gap).any() else float('nan'):.2e}")
    print(f"wrote {out}/sweep.npz and {out}/sweep.json")
    return 0


def jax_devices_summary():
    import jax

    devs = jax.devices()
    hosts = f" on {jax.process_count()} hosts" if jax.process_count() > 1 else ""
    return f"{len(devs)} × {devs[0].device_kind}{hosts}"


def cmd_figures(args):
    from experiments.__main__ import main as figures_main

    argv = (["--only", args.only] if args.only else []) + ["--smoke"] * args.smoke
    argv += ["--quiet"] * args.quiet + (["--out", args.out] if args.out else [])
    return figures_main(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.command in ("sweep", "bench"):
        _use_host_devices(args.host_devices)
    if getattr(args, "distributed", False):
        import jax

        jax.distributed.initialize()
    if getattr(args, "x64", False):
        import jax  # the CLI is the caller: it may choose float64 for the whole process

        jax.config.update("jax_enable_x64", True)
    if args.command == "sweep":
        return cmd_sweep(args, argv)
    return {"train": cmd_train, "figures": cmd_figures, "bench": cmd_bench,
            "proof": cmd_proof}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
