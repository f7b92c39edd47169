"""Command-line interface: `ufm train|sweep|proof|measure|bench|figures …`.

Bad input gets one line on stderr naming the flag, the value and what is allowed, and exit code 2,
with nothing written; every check runs before any computation starts. A subcommand defines only
the flags it uses, so any other flag is an error too.
"""
import argparse
import math
import os
import re
import sys
import tempfile
import time

import numpy as np

from ufm.config import DEFAULTS, LAYER_LAMBDA, flag
from ufm.progress import progress_bar

# Subcommands that never import JAX (nor the simulator): their parser is built without the model
# registry, so `ufm measure` and `ufm plot` start in the time numpy takes to import.
LEAN = ("measure", "plot", "cache")

LAYER_FLAG = re.compile(r"--lam-W([1-9][0-9]*)(=.*)?$")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        self.exit(2, f"ufm: error: {message}\n")


class UsageError(ValueError):
    """Bad input found by the CLI itself (as opposed to the library's ValueErrors)."""


# --- flags ------------------------------------------------------------------------------------

def _add_size_flags(p, static=False):
    axis = " (a comma list: one compiled program per value)" if static else ""
    p.add_argument("--K", type=str if static else int, default=str(DEFAULTS["K"]) if static
                   else DEFAULTS["K"], help=f"number of classes (default 4){axis}")
    counts = ("samples per class (default 50): one count, or K per-class counts joined by '/'; "
              "a comma list is an axis (one program per value)" if static else
              "samples per class (default 50), or K per-class counts joined by ',' or '/'")
    p.add_argument("--n", type=str, default=str(DEFAULTS["n"]), help=counts)
    p.add_argument("--d", type=str if static else int, default=str(DEFAULTS["d"]) if static
                   else DEFAULTS["d"], help=f"feature dimension, every layer's width "
                                            f"(default 20){axis}")


def _add_lambda_flags(p, layers, grid):
    """A flag for every hyperparameter some model's record declares, and --lam-W<l> for each
    layer named on the command line (deep models of any depth)."""
    from ufm.models import get_model, hyper_specs, tied_specs

    number = str if grid else float  # a sweep parses grids itself (start:stop:num[:log], a,b,c)
    grid_help = " (a grid: start:stop:num, start:stop:num:log, or a,b,c)" if grid else ""
    specs, ties = hyper_specs(), tied_specs()
    for name, spec in specs.items():
        tied = (f"; for {', '.join(ties[name])} it sets every "
                f"{', '.join(get_model(ties[name][0]).tied_to(name))}, … not given"
                if name in ties else "")
        per_class = ("; per class: one value for every class or K joined by ','"
                     + ("; a grid of such vectors separated by ';'" if grid else "")
                     ) if spec.per_class else grid_help
        p.add_argument(spec.flag, dest=name, type=str if spec.per_class else number,
                       default=None,
                       help=f"{spec.help}{tied}; only for models that take it{per_class}")
    for name, owners in ties.items():  # an umbrella no model takes itself: a flag of its own
        if name not in specs:
            members = ", ".join(get_model(owners[0]).tied_to(name))
            p.add_argument(flag(name), dest=name, type=number, default=None,
                           help=f"for {', '.join(owners)}: sets every {members} not given"
                                f"{grid_help}")
    for layer in layers:  # --lam-W4 … as given on the command line (deep models)
        name = f"lam_W{layer}"
        if name not in specs:
            p.add_argument(flag(name), dest=name, type=number, default=None,
                           help=f"λ of W{layer} (deep models){grid_help}")


def _add_run_flags(p, grid=False):
    from ufm.optimise import OPTIMIZERS

    number = str if grid else float
    grid_help = " (a grid: start:stop:num, start:stop:num:log, or a,b,c)" if grid else ""
    p.add_argument("--lr", type=number, default=None,
                   help=f"step size of gd/momentum/adam (default 0.1; not for lbfgs){grid_help}")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"],
                   help="optimiser steps, or their cap with --tol (default 20000)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed, 0 … 2^32−1 (default 0)")
    p.add_argument("--init-scale", type=number, default=None,
                   help=f"std of the Gaussian init (default: 1 plain models, 0.1 "
                        f"extended/deep){grid_help}")
    p.add_argument("--restarts", type=int, default=None,
                   help="independent initialisations run together with vmap; best kept "
                        "(default 1)")
    p.add_argument("--optimizer", default="gd", choices=tuple(OPTIMIZERS),
                   help="plain gradient descent (default), heavy-ball momentum, Adam, L-BFGS "
                        "with a line search (unconstrained models; needs no --lr), or convex: "
                        "the global minimiser of a two-factor or constrained model by its convex "
                        "problem (stopped at a 1e-12 relative duality gap in float64)")
    p.add_argument("--tol", type=float, default=None,
                   help="stop once the gradient norm relative to the objective is <= TOL "
                        "(--steps is then the cap); default: run every step (lbfgs: stop at "
                        "round-off, 1e-10 in float64, 1e-6 in float32)")
    p.add_argument("--allow-small-d", action="store_true",
                   help="run with d below what the theorem needs (theory is then null)")
    p.add_argument("--x64", action="store_true", help="float64 (default float32)")


def _add_variant_flags(p, static=False):
    """The model, and a flag for every static option some model's record declares."""
    from ufm.models import REGISTRY, option_specs

    p.add_argument("model", help=f"one of: {', '.join(REGISTRY)}")
    for name, (option, owners) in option_specs().items():
        helps = {}  # a flag several models declare, each with its own meaning: every one shown
        for entry in REGISTRY.values():
            for o in entry.options:
                if o.name == name:
                    helps.setdefault(o.help, []).append(entry.name)
        if len(helps) > 1:
            where = "; ".join(f"{', '.join(who)}: {text}" for text, who in helps.items())
            option = option._replace(help="")
        else:
            where = f"{', '.join(owners)}: "
        if option.convert is not None:  # the library reads and checks the value (a file)
            p.add_argument(option.flag, dest=name, default=None, help=where + option.help)
        elif isinstance(option.default, bool):
            p.add_argument(option.flag, dest=name, action="store_true",
                           help=where + option.help)
        elif option.choices is not None:
            p.add_argument(option.flag, dest=name, choices=option.choices, default=None,
                           help=where + option.help)
        else:
            axis = " (a comma list: one program per value)" if static else ""
            p.add_argument(option.flag, dest=name, type=str if static else int, default=None,
                           help=where + option.help + axis)
    p.add_argument("--sessions", default=None,
                   help="fixed-etf/fixed-orthogonal: class-incremental sessions, T (K classes "
                        "split in order) or a comma list of class counts per session; --steps "
                        "per session")
    p.add_argument("--distill", type=float, default=None,
                   help="with --sessions: weight of the tie of each session's features to their "
                        "values when the session starts (seed 000, Extension 2; default 0)")


def _add_host_devices(p):
    p.add_argument("--host-devices", type=int, default=1,
                   help=f"CPU only: split the host into this many JAX devices (1 … "
                        f"{os.cpu_count()}, the cores) so a grid is sharded over several cores "
                        f"(default 1; ignored if XLA_FLAGS sets it)")


def _use_host_devices(count):
    """Ask XLA for `count` CPU devices before any backend starts (count 1: leave XLA alone).

    The CLI is the caller here, as with --x64; the library never does this. A setting already in
    XLA_FLAGS wins. Accelerator platforms are unaffected.
    """
    cores = os.cpu_count() or 1
    if isinstance(count, bool) or not 1 <= count <= cores:
        raise UsageError(f"host-devices (--host-devices) must be between 1 and {cores} (this "
                         f"machine's cores), got {count}")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags or count == 1:
        return
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def _add_measure_parser(sub):
    m = sub.add_parser("measure", help="the neural-collapse suite of features from a network")
    m.add_argument("file", nargs="+",
                   help="FILE.npz (features [N, d] or one array per layer, labels [N], "
                        "optionally W [K, d] and b [K]) or features.npy; several files (e.g. "
                        "checkpoints) are measured one by one, or as one data set with --pool")
    m.add_argument("--reference", default=None, metavar="TRAIN.npz",
                   help="measure against a reference (training) file's class means, W and b: "
                        "nc1_reference, mean_shift, ncc_accuracy_reference, "
                        "nc4_mismatch_reference, accuracy_reference")
    m.add_argument("--pool", action="store_true",
                   help="measure the files as shards of one data set (their rows together)")
    m.add_argument("--merge", action="store_true",
                   help="the files are saved Collector states (ufm.measure.Collector.save) of "
                        "shards' second passes: merge them and report once")
    m.add_argument("--budget", type=float, default=None, metavar="MB",
                   help="working memory in MB (default 64): the chunks of rows in flight and a "
                        "tile of class pairs fit in it; peak memory is set by it, not by N or K")
    m.add_argument("--engine", choices=("numpy", "jax"), default="numpy",
                   help="numpy (default; no JAX is imported), or jax: the passes over rows on "
                        "JAX's default device (a GPU or TPU when present), float64 there too")
    m.add_argument("--labels", default=None, help="labels.npy, with a features .npy file")
    m.add_argument("--layer", action="append", default=None,
                   help="an array of FILE.npz to measure as a layer (repeatable; default: "
                        "'features', or every 2-D array but W)")
    m.add_argument("--classifier", default=None, help="W.npy (with .npy features)")
    m.add_argument("--bias", default=None, help="b.npy (with .npy features)")
    m.add_argument("--global-mean", choices=("classes", "samples"), default="classes",
                   help="h̄_G as the mean of the class means (default) or the mean of all "
                        "samples, ΣH/N (as tding1/Neural-Collapse's validate_NC.py)")
    m.add_argument("--std", choices=("population", "unbiased"), default="population",
                   help="the standard deviation of equinorm/equiangularity (default population)")
    m.add_argument("--pinv-rtol", type=float, default=None,
                   help="NC1's pseudo-inverse drops eigenvalues of Σ_B below this × the largest "
                        "(default d·eps(float64): torch/scipy pinv's rule in float64; numpy's "
                        "default is 1e-15)")
    m.add_argument("--stream", action="store_true",
                   help="read the features in chunks through memory maps (.npy, or uncompressed "
                        ".npz members) for N too large to hold; the same numbers as in memory")
    m.add_argument("--chunk-rows", type=int, default=None,
                   help="rows per chunk (default: as many as --budget allows)")
    m.add_argument("--ood", default=None, metavar="OOD.npz",
                   help="out-of-distribution detection at the classifier layer: OOD.npz holds "
                        "`ood` [M, d] (and optionally `id`, in-distribution test rows; default "
                        "the measured rows), or OOD.npy the OOD rows: nc5, and the AUROC and "
                        "FPR at 95%% TPR of neco, neco_std, nci, max_logit; per-sample scores "
                        "in ood_scores.npz")
    m.add_argument("--neco-dim", type=int, default=None,
                   help="NECO's principal directions (default K − 1)")
    m.add_argument("--nci-alpha", type=float, default=None,
                   help="NCI's weight of the feature L1 norm (default 1e-4)")
    m.add_argument("--diagnostics", action="store_true",
                   help="also the small-sample diagnostics (features held in memory): effective "
                        "ranks of the features, class means and every class, and linear CKA "
                        "between layers")
    m.add_argument("--out", default=None, help="output folder (default runs/measure)")
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    m.add_argument("--plot", action="store_true",
                   help="also write plot.png: every metric per layer (ufm plot)")


def _add_plot_parser(sub):
    p = sub.add_parser("plot", help="a PNG of a train, sweep, measure or proof output")
    p.add_argument("path", help="the output folder (or its result.json, sweep.npz/sweep.json, "
                                "measure.json or proof.json)")
    p.add_argument("--out", default=None, help="the PNG (default plot.png beside the data)")
    p.add_argument("--array", default=None,
                   help="sweeps: the array shown (default 'gap', the relative gap to the closed "
                        "form; else global_gap; any array of sweep.npz: nc1_H, converged, …)")
    p.add_argument("--x", default=None, help="sweeps: the axis across (default the first)")
    p.add_argument("--y", default=None,
                   help="sweeps: the axis up (default the next one; 'none' draws lines over --x)")
    p.add_argument("--at", action="append", default=None, metavar="AXIS=VALUE",
                   help="sweeps: slice another axis at its grid value nearest VALUE "
                        "(repeatable)")
    p.add_argument("--reduce", default="median", choices=("min", "max", "mean", "median"),
                   help="sweeps: how every other axis (e.g. seeds) is reduced (default median)")


def _add_cache_parser(sub):
    c = sub.add_parser("cache", help="where compiled programs are kept; --clear removes them")
    c.add_argument("--clear", action="store_true", help="remove the compilation cache")


def build_parser(layers=(), lean=False):
    """The parser; `layers`: the l of every --lam-W<l> on the command line (deep models). lean:
    only the subcommands of LEAN (no model registry, so JAX is not imported)."""
    parser = _Parser(prog="ufm", description="Unconstrained features model simulator (JAX).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    if lean:
        _add_measure_parser(sub)
        _add_plot_parser(sub)
        _add_cache_parser(sub)
        return parser
    p = sub.add_parser("train", help="optimise one configuration")
    _add_variant_flags(p)
    _add_size_flags(p)
    _add_lambda_flags(p, layers, grid=False)
    _add_run_flags(p)
    p.add_argument("--log-every", type=int, default=None,
                   help=f"record measurements every this many steps (default "
                        f"{DEFAULTS['log_every']}; {LBFGS_LOG_EVERY} for L-BFGS, which stops "
                        f"early, so its history is still a curve)")
    p.add_argument("--out", default=None, help="output folder (default runs/MODEL)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--plot", action="store_true", help="also write plot.png beside the data "
                                                      "(ufm plot)")
    p.add_argument("--hessian", nargs="?", const="auto", default=None,
                   choices=("auto", "dense", "lanczos"),
                   help="classify the final point modulo symmetry (strict local minimum, saddle, "
                        "degenerate): the Hessian's restricted spectrum, dense (every eigenvalue, "
                        "up to 6000 parameters with auto) or by Lanczos")
    p.add_argument("--init-from", default=None, metavar="FILE.npz|NAME",
                   help="start from these parameters instead of a random draw: a params .npz "
                        "(e.g. another run's) or a construction of the model (deep-linear-ce: "
                        "dnc, low-rank, triangular)")
    p.add_argument("--limit", action="store_true",
                   help="ce, ce-adjusted, ntp: solve the λ → 0 limit instead (the UFM-SVM, "
                        "min ‖Z‖_* with margins Δ_k·z_kk − Δ_j·z_jk ≥ 1, Δ = 1 for ce and CDT's "
                        "scales for ce-adjusted; for ntp every in-support logit equal and ≥ 1 "
                        "above the rest; certified by its duality gap); params.npz holds its "
                        "margin-1 direction")
    p.add_argument("--escape", action="store_true",
                   help="while the run ends at a saddle, step along its negative-curvature "
                        "direction and run again (implies --hessian)")
    h = sub.add_parser("hessian", help="classify a saved run's point modulo symmetry (second-order "
                                       "certificate); adds second_order to its result.json")
    h.add_argument("run", help="a ufm train output folder (result.json and params.npz)")
    h.add_argument("--method", default="auto", choices=("auto", "dense", "lanczos"),
                   help="dense: every restricted eigenvalue; lanczos: the k extreme ones "
                        "(default auto: dense up to 6000 parameters)")
    h.add_argument("--k", type=int, default=6, help="lanczos: eigenvalues at each end (default 6)")
    w = sub.add_parser("sweep", help="run a grid as compiled, vmapped programs")
    _add_variant_flags(w, static=True)
    _add_size_flags(w, static=True)
    _add_lambda_flags(w, layers, grid=True)
    _add_run_flags(w, grid=True)
    w.add_argument("--seeds", type=int, default=None,
                   help="add a last axis of S ≥ 1 seeds (seed, seed+1, …); default: no seed axis")
    w.add_argument("--chunk", type=int, default=None, help="configurations per compiled chunk (auto)")
    w.add_argument("--out", default=None, help="output folder (default runs/sweep-MODEL); a rerun "
                                               "with the same --out resumes")
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    w.add_argument("--plot", action="store_true", help="also write plot.png beside the data "
                                                      "(ufm plot)")
    _add_host_devices(w)
    w.add_argument("--hessian", nargs="?", type=int, const=100, default=None, metavar="STEPS",
                   help="the second-order certificate at every point (Lanczos, STEPS steps, "
                        "default 100, in the sweep's dtype): second_order_kind, min_eigenvalue, "
                        "second_order_tol, symmetry_dim in sweep.npz")
    w.add_argument("--distributed", action="store_true",
                   help="several hosts: call jax.distributed.initialize() first (SLURM and other "
                        "launchers are detected by JAX); run the same command on every host")
    w.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="with --distributed where no launcher is detected: process 0's address")
    w.add_argument("--num-processes", type=int, default=None,
                   help="with --distributed and --coordinator: how many processes take part")
    w.add_argument("--process-id", type=int, default=None,
                   help="with --distributed and --coordinator: this process's index, 0 … N−1")
    r = sub.add_parser("proof", help="check every step of a theorem's proof at random points and "
                                     "at the optimiser's solution")
    r.add_argument("theorem", help="one of: 3.1, 3.2, C.1 (Lemma C.1), 4.1, 4.2, 5.1")
    _add_size_flags(r)
    _add_lambda_flags(r, layers, grid=False)
    _add_run_flags(r)
    r.set_defaults(steps=100000)  # tightness to 1e-8 needs within-class deviations gone
    r.add_argument("--random", type=int, default=200, help="random points per step (default 200)")
    r.add_argument("--sigma", type=float, default=None,
                   help="Theorem 5.1 only: noise std of the fixed features (default 0.1)")
    r.add_argument("--out", default=None, help="output folder (default runs/proof-THEOREM)")
    r.add_argument("--plot", action="store_true", help="also write plot.png beside the data "
                                                      "(ufm plot)")
    b = sub.add_parser("bench", help="speed: gradient steps per second, and time to the optimum")
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.add_argument("--quick", action="store_true", help="short measurements")
    b.add_argument("--only", default="throughput,deep,solvers,global,latency",
                   help="comma list of sections: throughput (GD steps/s, grids), deep (deep "
                        "model line), solvers (time to a 1e-10 gap per optimiser), global (time "
                        "to a 1e-10 certified global gap: convex solver, L-BFGS, GD; float64), "
                        "latency (first and second wall time of whole CLI commands), measure "
                        "(ufm measure's suite on 200,000 × 512 features beside "
                        "rhubarbwu/neural-collapse), hessian (Hessian-vector product against a "
                        "gradient, dense and Lanczos restricted spectra), frontier (the CE "
                        "regularisation path and the UFM-SVM; float64), vocabulary (the "
                        "Collector at K = 50,257, d = 1,024, N = 10⁶, beside the peer's "
                        "accumulators: about 17 minutes, 25 with the peer), largest (the "
                        "Collector without decisions at K = 128,256, d = 4,096) (default "
                        "throughput,deep,solvers,global,latency)")
    b.add_argument("--batches", default="1,64,1024,4096", help="grid sizes B (comma list)")
    b.add_argument("--sizes", choices=("paper", "large", "both"), default="both",
                   help="K=4,d=20,n=50 (paper), K=10,d=64,n=100 (large) or both")
    b.add_argument("--x64", action="store_true", help="float64 (default float32)")
    _add_host_devices(b)
    _add_measure_parser(sub)
    _add_plot_parser(sub)
    _add_cache_parser(sub)
    f = sub.add_parser("figures", help="rebuild the figures (python -m experiments)")
    f.add_argument("--only", default=None, help="comma list of figure names")
    f.add_argument("--smoke", action="store_true", help="tiny sizes")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.add_argument("--out", default=None, help="output folder (default figures/)")
    return parser


def _value_options(parser):
    """Option strings of every subcommand that take a value."""
    out = set()
    for action in parser._subparsers._group_actions[0].choices.values():
        for a in action._actions:
            if a.option_strings and a.nargs is None and not isinstance(
                    a, (argparse._StoreTrueAction, argparse._HelpAction)):
                out.update(a.option_strings)
    return out


def _attach_negative_values(argv, options):
    """`--n -1,2` as `--n=-1,2`: argparse would read a value starting with '-' that is not a plain
    number as another flag ("expected one argument") instead of giving the real message."""
    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if tok in options and nxt is not None and re.match(r"-[0-9.]", nxt):
            out.append(f"{tok}={nxt}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def parse(argv):
    layers = sorted({int(m.group(1)) for tok in argv for m in [LAYER_FLAG.match(tok)] if m})
    parser = build_parser(layers, lean=bool(argv) and argv[0] in LEAN)
    return parser.parse_args(_attach_negative_values(argv, _value_options(parser)))


# --- checks shared by the subcommands -------------------------------------------------------------

def check_out(path, default):
    """The output folder: `default` when not given. It must be a usable folder path: not empty,
    not an existing file, not under a file, and writable (probed with a temporary file in its
    nearest existing folder, removed at once). Nothing is created."""
    if path is None:
        path = default
    if path.strip() == "":
        raise UsageError("out (--out) must be a folder path, got ''")
    probe = os.path.abspath(path)
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise UsageError(f"out (--out) {path} exists and is not a folder")
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise UsageError(f"out (--out) {path} is under {probe}, which is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise UsageError(f"out (--out) {path} is not writable ({probe}: "
                         f"{err.strerror or err})") from None
    return path


NAMED_OPTIONS = ("loss", "alpha", "mask_softmax", "depth")  # passed by name (depth: a sweep axis)


def _other_options(args):
    """Every other static option a model declares, as given on the command line: {name: value}
    (files as their paths, which the model's `convert` reads; a sweep's integers parsed here) —
    so an option a new model file declares reaches it with no edit here."""
    from ufm.models import option_specs

    out = {}
    for name, (option, _) in option_specs().items():
        value = getattr(args, name, None)
        if name in NAMED_OPTIONS or value is None or value is False:
            continue
        if isinstance(value, str) and option.convert is None and option.choices is None:
            try:  # a sweep parses integer flags as text (depth may be an axis; these may not)
                value = int(value)
            except ValueError:
                raise UsageError(f"{name} ({option.flag}) must be an integer >= 1, got "
                                 f"{value!r}") from None
        out[name] = value
    return out


def _lambda_flags(args):
    """The hyperparameter flags as given (None where not given); the library checks that the
    model takes them (config.check_names)."""
    from ufm.models import hyper_specs, tied_specs

    names = (list(hyper_specs()) + list(tied_specs())
             + [k for k in vars(args) if LAYER_LAMBDA.match(k)])
    return {k: getattr(args, k, None) for k in dict.fromkeys(names)}


def _lr_for(args):
    """--lr as given, or the default; L-BFGS takes no step size."""
    from ufm.optimise import OPTIMIZERS

    if not OPTIMIZERS[args.optimizer].step_size and args.lr is not None:
        raise UsageError(f"lr (--lr) does not apply to --optimizer {args.optimizer} (it chooses "
                         f"its own steps), got {args.lr}")
    return DEFAULTS["lr"] if args.lr is None else args.lr


def _session_args(args):
    if args.sessions is None and args.distill is not None:
        raise UsageError("distill (--distill) ties a session's features to the previous "
                         "session's: it needs --sessions")
    return args.sessions, 0.0 if args.distill is None else args.distill


def _error(err):
    print(f"ufm: error: {err}", file=sys.stderr)
    return 2


# --- train ------------------------------------------------------------------------------------

def _fmt(v):
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"


def describe_theory(th):
    """The line naming a prediction's regime, its control parameter and threshold."""
    from ufm import theory

    if hasattr(th, "describe"):  # a model file's own prediction says it itself
        return th.describe()
    if isinstance(th, theory.PlainPrediction):
        return f"c = {th.c:.4g} (threshold 1)"
    if isinstance(th, theory.CrossEntropyPrediction):
        return f"c = {th.c:.4g} (threshold 1)"
    if isinstance(th, theory.LayeredPrediction):
        M = th.depth + 1
        beta = (f"β = {th.Ka:.4g}" if th.Ka is not None else
                f"β_k = {', '.join(f'{b:.3g}' for b in th.beta)}")
        name = {1: "c", 2: "K·a"}.get(th.depth)
        named = f" ({name})" if name and th.Ka is not None else ""
        kind = "" if th.exact else "; the DNC value, not the optimum, for ReLU at this depth"
        return (f"depth {th.depth}: {beta}{named}, jump to zero at β_c({M}) = {th.threshold:.4g}, "
                f"local minimum until β_max = {th.local_limit:.4g}{kind}")
    if isinstance(th, theory.DeepCrossEntropyPrediction):
        lr = "n/a (K odd)" if th.low_rank is None else f"{th.low_rank:.8g}"
        tri = "" if th.triangular is None else f", f_TRI {th.triangular:.8g}"
        return (f"depth {th.depth}: f_DNC {th.dnc:.8g}, f_LR {lr}{tri}, log K {th.zero:.6g}; "
                f"lowest: {th.structure}")
    return f"every feature √E_H·(its class vector), √E_H = {th.feature_norm:.4g}"


def summary(result, model=None):
    """A short human summary: what was run (with the model's `describe()` when given), the
    objective against the closed form, then the measurements."""
    from ufm import theory as theory_mod
    from ufm.optimise import OPTIMIZERS

    cfg = result.config
    depth = f" depth={cfg['depth']}" if "depth" in cfg else ""
    lr = f" (lr={cfg['lr']:g})" if OPTIMIZERS[cfg["optimizer"]].step_size else ""
    lines = [f"{result.model}{depth}  K={cfg['K']} n={cfg['n']} d={cfg['d']}  {cfg['dtype']}  "
             f"{cfg['steps']} steps of {cfg['optimizer']}{lr}"]
    if model is not None:
        lines.append(f"  {model.describe()}")
    obj = result.final["objective"]
    th = result.theory
    best = theory_mod.optimum(th)
    if best is not None:
        gap = abs(obj - best) / abs(best) if best else abs(obj - best)
        what = "closed form" if result.sessions is None else "closed form without sessions"
        lines.append(f"objective {obj:.10g}   {what} {best:.10g}   "
                     f"{'relative' if best else 'absolute'} gap {gap:.2e}")
    elif th is not None:
        lines.append(f"objective {obj:.10g}   (reference values below; none is proven optimal)")
    else:
        lines.append(f"objective {obj:.10g}   (no theorem applies to this setting)")
    if th is not None:
        lines.append(f"predicted structure: {th.structure}; {describe_theory(th)}")
    ref = result.reference
    if ref and "reached" in ref:
        lines.append(f"reached: {ref['reached']} (objective − lowest reference = "
                     f"{ref['excess']:.3e})")
    elif ref and "below_dnc" in ref:
        lines.append(f"{'below' if ref['below_dnc'] else 'not below'} the DNC value "
                     f"{ref['dnc']:.8g}: relative gap {ref['dnc_gap']:+.3e}")
    if len(result.restart_objectives) > 1:
        objs = result.restart_objectives
        lines.append(f"restarts: {len(objs)}, final objectives {min(objs):.6g} … {max(objs):.6g}")
    meas = [f"{k} {_fmt(v)}" for k, v in result.final.items() if k != "objective"]
    for i in range(0, len(meas), 4):
        lines.append("  " + "   ".join(meas[i:i + 4]))
    if result.undefined:
        lines.append("undefined (NaN): " + "; ".join(f"{', '.join(ks)}: {why}" for why, ks in
                                                      _by_reason(result.undefined).items()))
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
        lines.append(global_line(cert, result.final["objective"]))
    if result.diverged_at is not None:
        lines.append(f"DIVERGED at step {result.diverged_at}: the objective became non-finite, "
                     f"or blew up (rose above its start, or far above the best it reached)")
    return "\n".join(lines)


def global_line(cert, objective):
    """The certificate's global part in one line (docs/theory.md §5)."""
    if cert.get("lower_bound") is None:
        return f"global: no bound ({cert.get('global_note') or 'not computed'})"
    gap = cert["global_gap"]
    rel = gap / max(abs(objective), 1e-6)
    verdict = ("GLOBAL minimum" if cert["global"] else "not certified global")
    note = f"; {cert['global_note']}" if cert.get("global_note") else ""
    return (f"global: {verdict}: objective − dual lower bound {cert['lower_bound']:.10g} = "
            f"{gap:.2e} (relative {rel:.1e}, tol {cert['global_tol']:.0e}){note}")


def _by_reason(undefined):
    out = {}
    for k, why in undefined.items():
        out.setdefault(why, []).append(k)
    return out


LBFGS_LOG_EVERY = 10  # L-BFGS stops after tens of iterations: record often enough to draw them
SHORT_RUN = 1e10  # steps × multiply-adds per step under which a run takes about a second


def _short_run(spec):
    """Whether a run is short enough to go without a progress bar: one compiled program then,
    instead of chunks with reports in between (each chunk, start and end is a program of its own
    to trace and load: about a second more than the run itself). Multiply-adds per step: the
    products of K×d by d×N and d×d by d×N of every layer, forward and backward."""
    K, d = spec.sizes.K, spec.sizes.d
    layers = 1 + (spec.model.depth or 0)
    work = 3 * spec.sizes.N * d * (K + (layers - 1) * d)
    return spec.steps * work * spec.restarts < SHORT_RUN


def cmd_train(args):
    from ufm.certificate import convergence_warning
    from ufm.runner import run, write_result
    from ufm.spec import build

    try:
        out = check_out(args.out, os.path.join("runs", args.model))
        sessions, distill = _session_args(args)
        log_every = args.log_every
        if log_every is None:
            log_every = LBFGS_LOG_EVERY if args.optimizer == "lbfgs" else DEFAULTS["log_every"]
        spec = build(args.model, K=args.K, n=args.n, d=args.d, steps=args.steps,
                     log_every=log_every, seed=args.seed, lr=_lr_for(args),
                     init_scale=args.init_scale,
                     restarts=1 if args.restarts is None else args.restarts,
                     optimizer=args.optimizer, allow_small_d=args.allow_small_d, loss=args.loss,
                     alpha=args.alpha, mask_softmax=args.mask_softmax, sessions=sessions,
                     distill=distill, tol=args.tol, depth=args.depth,
                     options=_other_options(args), hessian=args.hessian, escape=args.escape,
                     init_from=args.init_from, limit=args.limit, **_lambda_flags(args))
        model = spec.model
        total = spec.steps * (len(spec.sessions) if spec.sessions else 1)
        update, close = progress_bar(total, args.quiet or spec.limit or _short_run(spec))
        t0 = time.perf_counter()
        result = run(spec, progress=update)
        elapsed = time.perf_counter() - t0
    except ValueError as err:
        return _error(err)
    close()
    write_result(result, out)
    if result.config.get("limit"):
        print(limit_summary(result))
        print(f"{elapsed:.2f} s including compilation; wrote {out}/result.json and "
              f"{out}/params.npz")
        return 0
    print(summary(result, model))
    if result.second_order is not None:
        print(second_order_line(result.second_order))
    print(f"{elapsed:.2f} s including compilation; wrote {out}/result.json and {out}/params.npz")
    _write_plot(out, args)
    warning = convergence_warning(result, model)
    if warning:
        print(warning, file=sys.stderr)
    return 1 if result.diverged_at is not None else 0


def limit_summary(result):
    """What `ufm train … --limit` prints."""
    c, cfg = result.certificate, result.config
    state = "certified" if c["converged"] else "NOT certified"
    head = (f"{result.model} λ → 0 limit (UFM-SVM)  K={cfg['K']} n={cfg['n']} d={cfg['d']}\n")
    gap = (f"dual bound {c['lower_bound']:.12g}   relative gap {c['gap']:.1e} ({state}, tol "
           f"{c['tol']:.0e}, {c['iterations']} iterations)")
    if "support_spread" in c:  # next-token prediction: the support pattern's problem
        return (head + f"min ‖Z‖_* with every in-support logit equal and ≥ 1 above the rest: "
                f"{c['value']:.12g}   {gap}\nsmallest margin {c['min_margin']}; centred support "
                f"matrix: value {c['centred_support_value']:.12g}, distance "
                f"{c['centred_support_error']:.1e}, Z outside its span "
                f"{c['outside_support_span']:.1e}; contexts with one support differ by "
                f"{c['same_support_spread']:.1e}")
    delta = np.asarray(c["margin_scales"])
    scales = ("" if np.all(delta == 1.0) else
              f" (margin scales Δ = {delta.min():.4g} … {delta.max():.4g})")
    proof = ("proven optimal" if c["closed_form_multiplier"] <= 1e-9 else
             "not proven: a multiplier is positive")
    return (head + f"min ‖Z‖_* with margins ≥ 1{scales}: {c['value']:.12g}   {gap}\nsmallest margin "
            f"{c['min_margin']:.12g}; closed form (scaled SELI, {proof}): value "
            f"{c['closed_form_value']:.12g}, ‖M − M̂‖ = {c['closed_form_error']:.1e}; SELI: "
            f"centred logits − (I − 11ᵀ/K) = {c['seli_error']:.1e}")


def second_order_line(so):
    """The second-order certificate in one line (docs/theory.md §6)."""
    if so["min_eigenvalue"] is None:
        return f"second order: {so['kind']} ({so['reason']})"
    dims = f"{so['symmetry_dim']} symmetry direction{'s' * (so['symmetry_dim'] != 1)} removed"
    return (f"second order: {so['kind']} — restricted λ_min {so['min_eigenvalue']:+.6g} against "
            f"tol {so['tol']:.2g} ({dims}; {so['method']}, {so['parameters']} parameters)"
            + ("" if so["kind"] != "not stationary" else f"; {so['reason']}"))


def cmd_hessian(args):
    from ufm import hessian
    from ufm.files import write_json
    from ufm.runner import read_result

    try:
        if isinstance(args.k, bool) or args.k < 1:
            raise ValueError(f"k (--k) must be an integer >= 1, got {args.k}")
        model, sizes, hyper, params, doc = read_result(args.run)
        hessian.check_smooth(model)
        tol = (doc.get("certificate") or {}).get("tol")
        t0 = time.perf_counter()
        so = hessian.classify(model, sizes, hyper, params, method=args.method, k=args.k,
                              stationary_tol=tol)
        elapsed = time.perf_counter() - t0
    except ValueError as err:
        return _error(err)
    doc["second_order"] = so.as_dict()
    folder = args.run[:-len("result.json")] if args.run.endswith("result.json") else args.run
    path = os.path.join(folder or ".", "result.json")
    write_json(path, doc)
    print(second_order_line(doc["second_order"]))
    print(f"{elapsed:.2f} s; added second_order to {path}")
    return 0


# --- proof ------------------------------------------------------------------------------------

def cmd_proof(args):
    from ufm import proofs
    from ufm.files import write_json

    try:
        proof = proofs.get_proof(args.theorem)
        out = check_out(args.out, os.path.join("runs", f"proof-{proof.theorem}"))
        lams = _lambda_flags(args)
        if proof.theorem != "5.1" and args.sigma is not None:
            raise UsageError(f"sigma (--sigma) is the noise of Theorem 5.1's fixed features; "
                             f"Theorem {proof.theorem} has none (got {args.sigma})")
        if proof.theorem == "5.1":
            given = [f for f, v in (("--optimizer", args.optimizer != "gd"),
                                    ("--restarts", args.restarts is not None),
                                    ("--init-scale", args.init_scale is not None),
                                    ("--tol", args.tol is not None)) if v]
            if given:
                raise UsageError(f"{', '.join(given)} do(es) not apply to Theorem 5.1: its W is "
                                 f"found by gradient descent on fixed features (--lr, --steps)")
        doc = proofs.run_proof(args.theorem, K=args.K, n=args.n, d=args.d, random=args.random,
                               seed=args.seed, steps=args.steps, lr=_lr_for(args),
                               restarts=1 if args.restarts is None else args.restarts,
                               optimizer=args.optimizer, init_scale=args.init_scale,
                               sigma=0.1 if args.sigma is None else args.sigma, tol=args.tol,
                               allow_small_d=args.allow_small_d,
                               **{k: v for k, v in lams.items() if v is not None})
    except ValueError as err:
        return _error(err)
    write_json(os.path.join(out, "proof.json"), doc)
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
    _write_plot(out, args)
    return 1 if failed else 0


# --- sweep ------------------------------------------------------------------------------------

def _axis_order(argv):
    """Names of the flags in the order they appear on the command line."""
    order = []
    for tok in argv:
        name = tok.split("=")[0].lstrip("-").replace("-", "_")
        if tok.startswith("--") and name not in order:
            order.append(name)
    return order


def cmd_sweep(args, argv):
    from ufm import sweep
    from ufm.models import hyper_specs

    try:
        out = check_out(args.out, os.path.join("runs", f"sweep-{args.model}"))
        if args.seeds is not None and args.seeds < 1:
            raise UsageError(f"seeds (--seeds) must be >= 1 (leave it out for no seed axis), got "
                             f"{args.seeds}")
        if args.chunk is not None and args.chunk < 1:
            raise UsageError(f"chunk (--chunk) must be >= 1, got {args.chunk}")
        static = {}
        if args.depth is not None:
            static["depth"] = sweep.parse_static("depth", args.depth)
        for name in ("K", "d", "n"):
            static[name] = sweep.parse_static(name, getattr(args, name))
        lams = _lambda_flags(args)
        if args.lr is not None:
            _lr_for(args)
        raw = dict(lams, lr=args.lr, init_scale=args.init_scale)
        axes, fixed = {}, {}
        order = _axis_order(argv)
        specs = hyper_specs()
        per_class = {k for k, h in specs.items() if h.per_class}
        for name in order:
            text = raw.get(name)
            marks = ";" if name in per_class else ":,"  # a per-class vector is joined by ','
            if text is not None and any(ch in str(text) for ch in marks):
                axes[name] = sweep.parse_axis(name, text)
        for name, text in raw.items():
            if name not in axes and text is not None:
                fixed[name] = (sweep.parse_axis(name, text)[0] if name in per_class
                               else float(sweep.parse_axis(name, text)[0]))
        sessions, distill = _session_args(args)
        update, close = progress_bar(None, args.quiet, unit="combination" if len(
            [v for v in static.values() if len(v) > 1]) else "chunk")
        t0 = time.perf_counter()
        arrays, config = sweep.run_grid(
            args.model, static, {k: fixed.get(k) for k in lams}, axes, order=order,
            steps=args.steps, lr=fixed.get("lr", DEFAULTS["lr"]),
            init_scale=fixed.get("init_scale"), loss=args.loss, alpha=args.alpha,
            options=_other_options(args),
            mask_softmax=args.mask_softmax, out=out,
            progress=None if update is None else (lambda d, t: update(d, t)),
            seed=args.seed, seeds=args.seeds or 0, optimizer=args.optimizer,
            restarts=1 if args.restarts is None else args.restarts, chunk=args.chunk,
            allow_small_d=args.allow_small_d, sessions=sessions, distill=distill, tol=args.tol,
            hessian=args.hessian)
        elapsed = time.perf_counter() - t0
    except ValueError as err:
        return _error(err)
    close()
    print(sweep_summary(args.model, arrays, config, elapsed, out))
    if os.path.isfile(os.path.join(out, "sweep.json")):  # process 0 of several writes it
        _write_plot(out, args)
    return 0


def sweep_summary(model, arrays, config, elapsed, out):
    """The lines `ufm sweep` prints: work done and its rate (computed points only), the axes,
    divergence and convergence counts, the gap to the closed form, and where runs landed."""
    n = int(np.prod(config["shape"])) if config["shape"] else 1
    work = config["work"]
    lines = []
    if work["computed_points"] == 0:
        lines.append(f"{model}: nothing to compute: all {n} configurations were already in {out}")
    else:
        rate = work["computed_config_steps"] / elapsed
        resumed = (f" ({work['loaded_points']} resumed from {out})" if work["loaded_points"]
                   else "")
        lines.append(f"{model}: {work['computed_points']} of {n} configurations computed"
                     f"{resumed}, {work['computed_config_steps']:,} config-steps in "
                     f"{elapsed:.1f} s ({rate:,.0f} config-steps/s, compilation included) on "
                     f"{jax_devices_summary()}")
    axes = ", ".join(f"{k}[{len(arrays[k])}]" for k in config["axes_order"])
    lines.append(f"axes: {axes or 'none'}; diverged: {int(arrays['diverged'].sum())}; "
                 f"not converged (relative gradient norm > {config['certificate_tol']:.0e}): "
                 f"{int((~arrays['converged']).sum())}")
    if np.isfinite(arrays["lower_bound"]).any():
        lines.append(f"global minimum certified (gap to the dual bound ≤ "
                     f"{config['global_tol']:.0e} relative): {int(arrays['global'].sum())} of "
                     f"{arrays['global'].size}; largest gap {np.nanmax(arrays['global_gap']):.2e}")
    th = arrays["theory_objective"]
    if "below_dnc" in arrays:
        below = arrays["below_dnc"]
        best = np.nanmin(arrays["dnc_gap"]) if np.isfinite(arrays["dnc_gap"]).any() else np.nan
        lines.append(f"below the DNC value: {int(below.sum())} of {below.size} runs (lowest "
                     f"relative gap {best:+.3e})")
    elif np.isfinite(th).any() and "reached" not in arrays:  # deep CE: references, below
        gap = np.abs(arrays["objective"] - th) / np.where(th > 0, th, 1.0)
        lines.append(f"median relative gap to the closed form: {np.nanmedian(gap):.2e}")
    if "reached" in arrays:
        kinds, counts = np.unique(arrays["reached"], return_counts=True)
        lines.append("reached: " + ", ".join(f"{k or 'n/a'} {c}" for k, c in zip(kinds, counts)))
    if "second_order_kind" in arrays:
        kinds, counts = np.unique(arrays["second_order_kind"], return_counts=True)
        lines.append("second order: " + ", ".join(f"{k or 'n/a'} {c}"
                                                  for k, c in zip(kinds, counts)))
    lines.append(f"wrote {out}/sweep.npz and {out}/sweep.json")
    return "\n".join(lines)


def jax_devices_summary():
    import jax

    devs = jax.devices()
    hosts = f" on {jax.process_count()} hosts" if jax.process_count() > 1 else ""
    return f"{len(devs)} × {devs[0].device_kind}{hosts}"


# --- plots and the compilation cache ---------------------------------------------------------

def _write_plot(out, args):
    """With --plot: out/plot.png of what the command just wrote (a plot that cannot be made is a
    warning: the results are written already)."""
    if not getattr(args, "plot", False):
        return
    from ufm import plot

    try:
        made = plot.plot(out)
    except ValueError as err:
        print(f"ufm: warning: no plot: {err}", file=sys.stderr)
        return
    print(f"wrote {made.path}")


def cmd_plot(args):
    from ufm import plot

    try:
        if args.out is not None:  # the PNG's folder must be one we can write in
            if os.path.isdir(args.out):
                raise UsageError(f"out (--out) {args.out} is a folder: give the PNG's file name")
            check_out(os.path.dirname(os.path.abspath(args.out)), None)
        made = plot.plot(args.path, args.out, array=args.array, x=args.x, y=args.y, at=args.at,
                         reduce=args.reduce)
    except ValueError as err:
        return _error(err)
    print(f"{made.title}\nwrote {made.path}")
    return 0


def cmd_cache(args):
    from ufm import cache

    folder = cache.cache_dir()
    if os.path.exists(folder) and not os.path.isdir(folder):
        print(f"compilation cache: {folder} is a file, not a folder: nothing is cached there"
              f"{' and nothing was removed' if args.clear else ''} (set {cache.DIR_ENV} to a "
              f"folder)")
        return 0
    if args.clear:
        files, size = cache.clear(folder)
        print(f"removed ufm's {files} files ({size / 1e6:.1f} MB) from {folder}; anything else "
              f"there is left")
        return 0
    files, size = cache.size(folder)
    state = "on" if cache.wanted(True) else f"off ({cache.ENV}={os.environ.get(cache.ENV)})"
    print(f"compilation cache: {folder} ({files} files, {size / 1e6:.1f} MB, exported programs "
          f"under programs/); for the CLI: {state}\n{cache.ENV}=0 turns it off "
          f"({cache.PROGRAMS_ENV}=0 only the exported programs), {cache.DIR_ENV}=PATH moves it, "
          f"`ufm cache --clear` removes it")
    return 0


# --- measure, bench, figures ------------------------------------------------------------------

def _measure_merged(measure, args):
    """`ufm measure --merge state_*.npz`: the shards' second-pass Collector states, merged, and
    the report of all their rows."""
    try:
        out = check_out(args.out, os.path.join("runs", "measure"))
        states = [measure.Collector.load(f) for f in args.file]
        if any(c.phase != 2 for c in states):
            raise UsageError("merge (--merge) takes second-pass states: after second_pass() and "
                             "the shard's batches replayed, save() each shard's collector")
        merged = states[0]
        for other in states[1:]:
            merged.merge(other)
        doc = merged.result()
    except ValueError as err:
        return _error(err)
    measure.write(doc, out)
    print(measure.format_report(doc))
    print(f"merged {len(states)} states; wrote {out}/measure.json")
    return 0


def cmd_measure(args):
    from ufm import measure

    files = args.file
    if args.merge:
        return _measure_merged(measure, args)
    try:
        out = check_out(args.out, os.path.join("runs", "measure"))
        if len(files) > 1 and any(f.endswith(".npy") for f in files):
            raise UsageError("several files must be .npz files (each with its labels), got "
                             f"{', '.join(f for f in files if f.endswith('.npy'))}")
        if args.pool and len(files) < 2:
            raise UsageError("pool (--pool) needs two files or more")
        options = dict(global_mean=args.global_mean, std=args.std, pinv_rtol=args.pinv_rtol,
                       chunk_rows=args.chunk_rows, quiet=args.quiet, engine=args.engine,
                       budget_bytes=None if args.budget is None else args.budget * 2 ** 20)
        if args.reference is not None:
            options["reference"] = measure.reference_statistics(
                args.reference, layers=args.layer, stream=args.stream,
                chunk_rows=args.chunk_rows, budget_bytes=options["budget_bytes"])
        ood = None
        if args.ood is None and (args.neco_dim is not None or args.nci_alpha is not None):
            raise UsageError("--neco-dim and --nci-alpha set the scores of --ood: give --ood")
        if args.ood is not None:
            from ufm.measure import ood as ood_mod

            if args.pool or len(files) > 1:
                raise UsageError("ood (--ood) scores one measured file's classifier layer: not "
                                 "with several files or --pool")
            ood = ood_mod.ood_file(files[0], args.ood, layers=args.layer, labels=args.labels,
                                   W=args.classifier, b=args.bias, neco_dim=args.neco_dim,
                                   alpha=ood_mod.NCI_ALPHA if args.nci_alpha is None
                                   else args.nci_alpha)
        if args.pool:
            docs = [measure.measure_pooled(files, layers=args.layer, stream=args.stream,
                                           **options)]
        else:
            docs = [measure.measure_file(f, layers=args.layer, labels=args.labels,
                                         W=args.classifier, b=args.bias, stream=args.stream,
                                         **options) for f in files]
        if args.diagnostics:
            from ufm.measure.diagnostics import add_diagnostics

            if args.pool:
                raise UsageError("diagnostics (--diagnostics) measure one file's rows in "
                                 "memory: not with --pool")
            for f, doc in zip(files, docs):
                add_diagnostics(doc, f, layers=args.layer, labels=args.labels)
    except ValueError as err:
        return _error(err)
    if ood is not None:
        from ufm.files import write_npz

        docs[0]["ood"] = ood[0]
        write_npz(os.path.join(out, "ood_scores.npz"), ood[1])
    measure.write(docs[0] if len(docs) == 1 else {"files": docs}, out)
    measure.write_csv(docs, out)
    for doc in docs:
        if len(docs) > 1:
            print(f"\n{doc['source']['file']}")
        print(measure.format_report(doc))
    if ood is not None:
        print(ood_mod.format_ood(ood[0]))
        print(f"wrote {out}/ood_scores.npz (per-sample scores, higher: in-distribution)")
    print(f"wrote {out}/measure.json and {out}/measure.csv")
    _write_plot(out, args)
    return 0


def cmd_bench(args):
    from ufm import bench

    try:
        batches = tuple(int(b) for b in args.batches.split(","))
        if any(b < 1 for b in batches):
            raise ValueError
    except ValueError:
        return _error(f"batches (--batches) must be a comma list of positive integers, got "
                      f"{args.batches!r}")
    sections = [s.strip() for s in args.only.split(",")]
    unknown = [s for s in sections if s not in bench.SECTIONS]
    if unknown or not sections:
        return _error(f"only (--only) must be a comma list of {', '.join(bench.SECTIONS)}, got "
                      f"{args.only!r}")
    sizes = {"paper": bench.SIZES[:1], "large": bench.SIZES[1:], "both": bench.SIZES}[args.sizes]
    res = bench.run(quick=args.quick, batches=batches, sizes=sizes, sections=sections)
    if args.json:
        import json

        print(json.dumps(res, indent=1))
    else:
        print(bench.report(res))
    return 0


def experiments_folder():
    """The experiments/ folder of the source checkout this ufm runs from (it is not installed as a
    package: `ufm figures` needs the repository, as the figures' data and scripts live there)."""
    import ufm

    root = os.path.dirname(os.path.dirname(os.path.abspath(ufm.__file__)))
    folder = os.path.join(root, "experiments")
    if not os.path.isfile(os.path.join(folder, "__main__.py")):
        raise UsageError(f"ufm figures runs the scripts of a source checkout (experiments/ beside "
                         f"ufm/); none at {folder}: clone the repository and pip install -e it")
    return folder


def cmd_figures(args):
    """`python -m experiments …` in the checkout's root, in its own process (each script chooses
    its own precision)."""
    import subprocess

    import runpy

    try:
        folder = experiments_folder()
        scripts = runpy.run_path(os.path.join(folder, "__init__.py"))["SCRIPTS"]
        if args.only is not None:
            names = [n.strip() for n in args.only.split(",")]
            bad = [n for n in names if n not in scripts]
            if bad or not names:
                raise UsageError(f"only (--only) must be a comma list of figure names "
                                 f"({', '.join(scripts)}), got {args.only!r}")
        if args.out is not None:
            check_out(args.out, None)
    except ValueError as err:
        return _error(err)
    argv = (["--only", args.only] if args.only is not None else []) + ["--smoke"] * args.smoke
    argv += ["--quiet"] * args.quiet + (["--out", os.path.abspath(args.out)] if args.out else [])
    return subprocess.call([sys.executable, "-m", "experiments", *argv],
                           cwd=os.path.dirname(folder))


DISTRIBUTED_WAIT = 300  # seconds the coordinator waits for every process to join


def check_coordinator(address):
    """(host, port) of a --coordinator HOST:PORT whose host resolves; ValueError naming the flag
    otherwise (JAX's service would wait minutes on an unresolvable host, or crash on a bad
    port)."""
    import socket

    host, sep, port = (address or "").rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator (--coordinator) must be HOST:PORT with a port in 1 … "
                         f"65535, got {address!r}")
    try:
        socket.getaddrinfo(host, int(port))
    except (socket.gaierror, UnicodeError) as err:
        raise ValueError(f"coordinator (--coordinator) {address!r}: the host {host!r} does not "
                         f"resolve ({err})") from None
    return host, int(port)


def start_distributed(coordinator, num_processes, process_id):
    """jax.distributed.initialize with the flags given (or JAX's cluster detection when none
    are), saying what it waits for; its errors become one ValueError line."""
    import jax

    if coordinator is not None:
        check_coordinator(coordinator)
        print(f"waiting for {num_processes} processes at {coordinator} (up to "
              f"{DISTRIBUTED_WAIT} s)", file=sys.stderr)
    given = dict(coordinator_address=coordinator, num_processes=num_processes,
                 process_id=process_id)
    try:
        jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None},
                                   initialization_timeout=DISTRIBUTED_WAIT)
    except Exception as err:  # noqa: BLE001 - JAX's service raises several kinds
        said = str(err).splitlines()[0] if str(err) else type(err).__name__
        if coordinator is None:  # JAX's cluster detection (SLURM, Open MPI, TPU, …) found none
            raise ValueError(f"distributed (--distributed) found no cluster to join ({said}): "
                             f"give --coordinator HOST:PORT, --num-processes and --process-id"
                             ) from None
        raise ValueError(f"distributed (--distributed): could not join the {num_processes} "
                         f"processes at {coordinator} ({said})") from None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    try:
        if args.command in ("sweep", "bench"):
            _use_host_devices(args.host_devices)
    except ValueError as err:
        return _error(err)
    manual = [getattr(args, k, None) for k in ("coordinator", "num_processes", "process_id")]
    if any(v is not None for v in manual):
        if not args.distributed or None in manual:
            return _error("coordinator (--coordinator), num-processes (--num-processes) and "
                          "process-id (--process-id) go together, with --distributed")
        if args.num_processes < 1:
            return _error(f"num-processes (--num-processes) must be >= 1, got "
                          f"{args.num_processes}")
        if not 0 <= args.process_id < args.num_processes:
            return _error(f"process-id (--process-id) must be in 0 … {args.num_processes - 1}, "
                          f"got {args.process_id}")
    if getattr(args, "distributed", False):
        try:
            start_distributed(*manual)
        except ValueError as err:
            return _error(err)
    if getattr(args, "x64", False):
        import jax  # the CLI is the caller: it may choose float64 for the whole process

        jax.config.update("jax_enable_x64", True)
    if args.command not in LEAN:
        from ufm import cache

        if cache.wanted(True):  # the CLI's default; UFM_COMPILATION_CACHE=0 turns it off
            cache.enable_compilation_cache()
            cache.enable_programs()  # exported programs beside it (UFM_PROGRAM_CACHE=0: off)
    if args.command == "sweep":
        return cmd_sweep(args, argv)
    return {"train": cmd_train, "hessian": cmd_hessian, "figures": cmd_figures, "bench": cmd_bench,
            "proof": cmd_proof, "measure": cmd_measure, "plot": cmd_plot,
            "cache": cmd_cache}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
