"""`ufm measure` and the Collector beside rhubarbwu/neural-collapse's accumulators on the same
array, each in a fresh process: wall time and peak memory (docs/performance.md)."""
import os
import sys

import jax
import numpy as np


MEASURE_SHAPE = (200_000, 512, 100)  # N, d, K
PEER_BATCHES = (8192, 65536)

_MEASURE_CHILD = r"""
import json, sys, time
import numpy as np

def rss(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) * 1024

folder, who, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
X = np.load(folder + "/features.npy")
y = np.load(folder + "/labels.npy")
W, b = np.load(folder + "/W.npy"), np.load(folder + "/b.npy")
if who in ("ufm", "ufm-jax"):
    from ufm import measure
    engine = "jax" if who == "ufm-jax" else "numpy"
    if engine == "jax":
        import jax  # imported before the peak is reset, as the peer's torch is
    run = lambda: measure.measure_arrays(X, y, W, b, engine=engine)["layers"]["features"]
elif who == "ufm-collector":  # the same stream in batches, as a training loop feeds them
    from ufm import measure

    def run():
        collector = measure.Collector(W.shape[0], W, b)
        for _ in range(2):  # the means, then Σ_W and the decisions from the same batches
            for s in range(0, len(y), batch):
                collector.update(X[s:s + batch], y[s:s + batch])
            if collector.phase == 1:
                collector.second_pass()
        return collector.result()["layers"]["features"]
else:
    import torch as pt
    from neural_collapse.accumulate import (CovarAccumulator, DecAccumulator, MeanAccumulator,
                                            VarNormAccumulator)
    from neural_collapse.kernels import kernel_grid, log_kernel
    from neural_collapse.measure import (clf_ncc_agreement, covariance_ratio, mean_norms,
                                         self_duality_error, simplex_etf_error,
                                         variability_cdnv, interference_grid)
    from neural_collapse.util import symm_reduce

    def run():
        K, d = W.shape
        Wt = pt.from_numpy(W).float()
        batches = [(pt.from_numpy(X[s:s + batch]), pt.from_numpy(y[s:s + batch]))
                   for s in range(0, len(y), batch)]  # views: no copy
        means_acc = MeanAccumulator(K, d, "cpu")
        for Xb, yb in batches:
            means_acc.accumulate(Xb, yb)
        M, mG = means_acc.compute()
        var_acc, cov_acc = VarNormAccumulator(K, d, "cpu", M=M), CovarAccumulator(K, d, "cpu", M=M)
        dec_acc = DecAccumulator(K, d, "cpu", M=M, W=Wt)
        for Xb, yb in batches:
            var_acc.accumulate(Xb, yb, M)
            cov_acc.accumulate(Xb, yb, M)
            dec_acc.accumulate(Xb, yb, Wt, M)
        V_norms, _ = var_acc.compute()
        Sigma_W = cov_acc.compute()
        grid = interference_grid(M, mG)
        return {"nc1": covariance_ratio(Sigma_W, M, mG),
                "nc1_cdnv": variability_cdnv(V_norms, M, tile_size=K),
                "equinorm_H": float(mean_norms(M, mG).std() / mean_norms(M, mG).mean()),
                "interference": float(symm_reduce(grid, pt.var)),
                "nc2_etf_H": simplex_etf_error(M, mG),
                "nc3_etf": self_duality_error(Wt, M, mG),
                "hyperspherical_log": float(symm_reduce(kernel_grid(M, mG, log_kernel), pt.var)),
                "nc4_agreement": clf_ncc_agreement(dec_acc)}

base = rss("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak to now
except OSError:
    pass
t0 = time.perf_counter()
values = run()
seconds = time.perf_counter() - t0
peak = rss("VmHWM")
print(json.dumps({"seconds": seconds, "peak_bytes": peak - base, "features_bytes": X.nbytes,
                  "nc1": float(values["nc1"]), "nc2_etf_H": float(values["nc2_etf_H"])}))
"""


def _peer_installed():
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "neural_collapse"))


def measure_times(quick=False, shape=MEASURE_SHAPE, engines=("numpy", "jax"), repeat=None):
    """Wall seconds and peak bytes (beyond the loaded features) of measuring one float32
    feature array: `ufm measure`'s whole suite (float64 accumulators, default budget) with the
    numpy engine and with the JAX engine (on JAX's default device), and
    rhubarbwu/neural-collapse's float32 accumulators and metrics at two batch sizes when it is
    installed. Each in a fresh process (peak resident memory reset after loading), `repeat`
    rounds (default 3; 1 with `quick`) with the runs of a round one after another, so that each
    round compares runs made under the same load: a row gives the median and every run."""
    import json
    import subprocess
    import tempfile

    N, d, K = shape
    if quick:
        N //= 10
    repeat = repeat or (1 if quick else 3)
    rng = np.random.default_rng(0)
    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        labels = rng.integers(0, K, N)
        centres = rng.normal(size=(K, d)).astype(np.float32)
        X = centres[labels]
        for start in range(0, N, 65536):  # noise a slice at a time: the parent stays small
            X[start:start + 65536] += rng.normal(size=(min(65536, N - start), d)).astype(np.float32)
        np.save(os.path.join(folder, "features.npy"), X)
        np.save(os.path.join(folder, "labels.npy"), labels)
        np.save(os.path.join(folder, "W.npy"), centres.astype(np.float64))
        np.save(os.path.join(folder, "b.npy"), np.zeros(K))
        del X
        who = [{"numpy": ("ufm", 0), "jax": ("ufm-jax", 0)}[e] for e in engines]
        who += [("ufm-collector", batch) for batch in PEER_BATCHES]
        if _peer_installed():
            who += [("neural_collapse", batch) for batch in PEER_BATCHES]
        for _ in range(repeat):
            for name, batch in who:
                proc = subprocess.run([sys.executable, "-c", _MEASURE_CHILD, folder, name,
                                       str(batch)], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"measuring with {name} failed:\n{proc.stderr[-2000:]}")
                label = {"ufm": "ufm", "ufm-jax": f"ufm --engine jax ({jax.default_backend()})",
                         "ufm-collector": f"ufm Collector (batch {batch:,})"
                         }.get(name, f"{name} (batch {batch:,})")
                runs.setdefault(label, []).append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rows = {label: dict(r[0], seconds=float(np.median([x["seconds"] for x in r])),
                        peak_bytes=int(np.median([x["peak_bytes"] for x in r])),
                        runs_seconds=[x["seconds"] for x in r],
                        runs_peak_bytes=[x["peak_bytes"] for x in r])
            for label, r in runs.items()}
    peers = [label for label in rows if not label.startswith("ufm")]
    out = {"N": N, "d": d, "K": K, "repeat": repeat, "rows": rows, "peer_installed": bool(peers)}
    if peers:  # per round: ufm against the faster peer configuration of that round
        fastest = np.min([rows[p]["runs_seconds"] for p in peers], axis=0)
        least = np.min([rows[p]["runs_peak_bytes"] for p in peers], axis=0)
        out["time_ratios"] = list(np.asarray(rows["ufm"]["runs_seconds"]) / fastest)
        out["memory_ratios"] = list(np.asarray(rows["ufm"]["runs_peak_bytes"]) / least)
        out["collector_ratios"] = {}  # the Collector against the peer fed the same batches
        for batch in PEER_BATCHES:
            mine, theirs = (rows[f"ufm Collector (batch {batch:,})"],
                            rows[f"neural_collapse (batch {batch:,})"])
            out["collector_ratios"][batch] = (
                list(np.asarray(mine["runs_seconds"]) / np.asarray(theirs["runs_seconds"])),
                list(np.asarray(mine["runs_peak_bytes"]) / np.asarray(theirs["runs_peak_bytes"])))
    return out


def measure_report(m):
    lines = [f"\nmeasuring {m['N']:,} × {m['d']} float32 features, K = {m['K']} (fresh process "
             f"each, median of {m['repeat']} round{'s' * (m['repeat'] > 1)}; peak memory beyond "
             f"the loaded {m['rows']['ufm']['features_bytes'] / 2 ** 20:,.0f} MB of features):"]
    ufm = m["rows"]["ufm"]
    for name, r in m["rows"].items():
        ratio = "" if name.startswith("ufm") else (
            f"   ufm: {ufm['seconds'] / r['seconds']:.2f}× the time, "
            f"{ufm['peak_bytes'] / r['peak_bytes']:.2f}× the memory")
        lines.append(f"  {name:34s} {r['seconds']:7.2f} s  {r['peak_bytes'] / 2 ** 20:8,.0f} MB  "
                     f"nc1 {r['nc1']:.6e}{ratio}")
    if not m["peer_installed"]:
        lines.append("  rhubarbwu/neural-collapse not installed (with torch): no side-by-side run")
    else:
        t, mem = m["time_ratios"], m["memory_ratios"]
        lines.append(f"  round by round, ufm against the faster peer run of the round: "
                     f"{', '.join(f'{x:.2f}' for x in t)}× the time, "
                     f"{', '.join(f'{x:.2f}' for x in mem)}× the memory of the leaner one")
        for batch, (t, mem) in m["collector_ratios"].items():
            lines.append(f"  the Collector against the peer's accumulators on the same batches of "
                         f"{batch:,}, round by round: {', '.join(f'{x:.2f}' for x in t)}× the "
                         f"time, {', '.join(f'{x:.2f}' for x in mem)}× the memory")
    return lines
