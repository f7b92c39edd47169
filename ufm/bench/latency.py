"""Time to first result: whole CLI commands in fresh processes, three times against an empty
compilation cache (docs/performance.md)."""
import os
import sys
import time

import numpy as np


LATENCY_SWEEP = ("--lam-H", "1e-3:1e-1:4:log", "--lam-W", "1e-3:1e-1:4:log", "--steps", "2000")


def latency_commands(features):
    """(label, argv) of the commands timed; `features`: an .npz for `ufm measure`."""
    ufm = [sys.executable, "-m", "ufm.cli"]
    return [("python -c 'import jax'", [sys.executable, "-c", "import jax"]),
            ("ufm train bias-free", ufm + ["train", "bias-free"]),
            ("ufm train deep-linear", ufm + ["train", "deep-linear"]),
            ("ufm sweep bias-free (4×4 λ grid)", ufm + ["sweep", "bias-free", *LATENCY_SWEEP]),
            ("ufm proof 3.1", ufm + ["proof", "3.1"]),
            (f"ufm measure {os.path.basename(features)}", ufm + ["measure", features])]


def _measure_file(folder):
    """The committed depthwise-network features when this is a checkout, else a synthetic file of
    the same shape (1740 × 64, two layers, K = 10, W)."""
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "figures",
                        "data", "depthwise_network_features.npz")
    if os.path.isfile(here):
        return here
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 174)
    path = os.path.join(folder, "features.npz")
    np.savez(path, h1=rng.normal(size=(1740, 64)), h2=rng.normal(size=(1740, 64)),
             labels=labels, W=rng.normal(size=(10, 64)))
    return path


def latency_times(repeat=2):
    """Wall seconds of each command in a fresh process, `repeat` times in a row, with the CLI's
    compilation cache in a new empty folder (the first run fills it)."""
    import subprocess
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items()
               if k not in ("UFM_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                            "JAX_COMPILATION_CACHE_DIR")}
        env["UFM_CACHE_DIR"] = os.path.join(folder, "cache")
        for label, argv in latency_commands(_measure_file(folder)):
            out = os.path.join(folder, f"out{len(rows)}")
            argv = argv + (["--out", out] if argv[2:3] == ["ufm.cli"] else [])
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                proc = subprocess.run(argv, capture_output=True, text=True, env=env)
                times.append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
            rows.append({"command": label, "seconds": times})
    return {"rows": rows, "cpus": os.cpu_count()}


def latency_report(lat):
    lines = [f"\ntime to first result: wall seconds in a fresh process ({lat['cpus']} CPUs), "
             f"first run (empty compilation cache), then runs with the cache:"]
    for r in lat["rows"]:
        first, *rest = r["seconds"]
        lines.append(f"  {r['command']:38s} {first:7.2f} s   " +
                     "   ".join(f"{t:7.2f} s" for t in rest))
    return lines
