"""The Collector at a language model's vocabulary: a generated Zipf stream, each pass timed, peak
memory, and merged shards against one collector (docs/performance.md)."""
import math
import sys


VOCABULARY = (50257, 1024, 1_000_000, 8192)  # K, d, N, batch: GPT-2's vocabulary, Zipf labels
LARGEST = (128256, 4096, 1_000_000, 8192)  # Llama 3's vocabulary and width
ZIPF = 1.07  # the exponent of the labels' distribution (word frequencies)

_STREAM = r"""
import json, os, sys, time
import numpy as np

K, d, N, B = (int(v) for v in sys.argv[1:5])
zipf = float(sys.argv[5])
p = 1.0 / np.arange(1, K + 1) ** zipf
p /= p.sum()
means = np.random.default_rng(0).normal(size=(K, d)).astype(np.float32)

def labels(i):
    r = np.random.default_rng(1000 + i)
    return r, r.choice(K, size=min(B, N - i * B), p=p)

def batch(i):  # the same rows every time they are asked for: a stream replayed, never stored
    r, y = labels(i)
    return means[y] + 2.0 * r.normal(size=(len(y), d)).astype(np.float32), y

def rss(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) * 1024

count = -(-N // B)
"""

_VOCABULARY_CHILD = _STREAM + r"""
from ufm.measure import Collector

shards, decide, folder = int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
if shards == 1:
    c, times = Collector(K, decisions=bool(decide)), {}
    t0 = time.perf_counter()
    for i in range(count):
        c.update(*batch(i))
    times["pass1"] = time.perf_counter() - t0
    c.second_pass()
    t0 = time.perf_counter()
    for i in range(count):
        c.update(*batch(i))
    times["pass2"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = c.result()
    times["result"] = time.perf_counter() - t0
    f = r["layers"]["features"]
    print(json.dumps(dict(times, peak_bytes=rss("VmHWM"), present=r["K"],
                          empty=len(r["empty_classes"]), nc1=f["nc1"],
                          ncc=f.get("ncc_accuracy"), values={k: v for k, v in f.items()
                                                             if isinstance(v, float)})))
else:  # shards: each its quarter of the batches, states saved and merged as across machines
    parts = np.array_split(np.arange(count), shards)

    def shard_pass(start, name):  # every shard's batches into its collector, saved, then merged
        for s, part in enumerate(parts):
            c = start()
            for i in part:
                c.update(*batch(i))
            c.save(f"{folder}/{name}_{s}.npz")
        merged = Collector.load(f"{folder}/{name}_0.npz")
        for s in range(1, shards):
            merged.merge(Collector.load(f"{folder}/{name}_{s}.npz"))
        return merged

    shard_pass(lambda: Collector(K), "first").save(f"{folder}/merged.npz")

    def second():
        c = Collector.load(f"{folder}/merged.npz")
        c.second_pass()
        return c

    f = shard_pass(second, "second").result()["layers"]["features"]
    print(json.dumps({"values": {k: v for k, v in f.items() if isinstance(v, float)}}))
"""


_PEER_CHILD = _STREAM + r"""
import resource
import torch as pt
from neural_collapse.accumulate import (CovarAccumulator, DecAccumulator, MeanAccumulator,
                                        VarNormAccumulator)
from neural_collapse.kernels import class_dist_norm_vars, log_kernel
from neural_collapse.measure import covariance_ratio, interference_grid, simplex_etf_error
from neural_collapse.util import symm_reduce

sample, cap, tile = int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))  # a refusal to allocate, not the OOM killer
out, seen = {}, np.zeros(K, dtype=bool)
for i in range(count):
    seen[labels(i)[1]] = True
out["present"] = int(seen.sum())

def timed(step, batches):  # seconds a batch of step(X, y), the stream's generation included
    t0 = time.perf_counter()
    for i in batches:
        X, y = batch(i)
        step(pt.from_numpy(X), pt.from_numpy(y))
    return (time.perf_counter() - t0) / len(batches)

first = MeanAccumulator(K, d, "cpu")
out["pass1_batch"] = timed(first.accumulate, range(sample))
M, mG = first.compute()
W = M.clone()  # the peer's decisions need a classifier: any W costs the same
var, cov = VarNormAccumulator(K, d, "cpu", M=M), CovarAccumulator(K, d, "cpu", M=M)
dec = DecAccumulator(K, d, "cpu", M=M, W=W)
out["generate_batch"] = timed(lambda X, y: None, range(sample))
out["var_batch"] = timed(lambda X, y: var.accumulate(X, y, M), range(sample)) - out["generate_batch"]
out["covar_batch"] = timed(lambda X, y: cov.accumulate(X, y, M), range(sample)) - out["generate_batch"]
out["dec_batch"] = timed(lambda X, y: dec.accumulate(X, y, W, M), range(sample)) - out["generate_batch"]
out["accumulate_peak"] = rss("VmHWM")
Ms = pt.from_numpy(means[seen])  # the seen classes' means: the metrics' cost is their count's
mS, Kp = Ms.mean(dim=0), len(Ms)
V = pt.ones(Kp)
metrics = {"nc1 (pinv of Σ_B)": lambda: covariance_ratio(cov.compute(), Ms, mS),
           "interference (K × K inner products)": lambda: float(symm_reduce(
               interference_grid(Ms, mS), pt.var)),
           "simplex ETF error (K × K)": lambda: simplex_etf_error(Ms, mS),
           "K × K grid of the tiled kernels (CDNV, log kernel)":
               lambda: float(pt.zeros(Kp, Kp).sum())}
out["metrics"] = {}
for name, metric in metrics.items():
    t0 = time.perf_counter()
    try:
        metric()
        out["metrics"][name] = time.perf_counter() - t0
    except (RuntimeError, MemoryError) as e:
        out["metrics"][name] = str(e).splitlines()[0][:120]
# the CDNV and log kernels' own tiling ([tile, tile, d] differences) on the first 8 tiles of
# classes: 64 of the (K_seen / tile)² tile pairs, timed
n = min(Kp, 8 * tile)
for name, kernel in (("cdnv", lambda: class_dist_norm_vars(V[:n], Ms[:n], 1.0, tile)),
                     ("log", lambda: log_kernel(Ms[:n] - mS, tile_size=tile))):
    t0 = time.perf_counter()
    kernel()
    out[f"{name}_sample"] = time.perf_counter() - t0
out["kernel_scale"] = (Kp / n) ** 2
out["peak"] = rss("VmHWM")
print(json.dumps(out))
"""


def peer_vocabulary_times(shape=VOCABULARY, sample=3, cap_bytes=20 * 2 ** 30, tile=256):
    """rhubarbwu/neural-collapse's accumulators on the vocabulary stream (when it and torch are
    installed): seconds a batch of each accumulator over `sample` batches (the stream's
    generation included, as in the Collector's times; the whole stream estimated from them),
    their peak memory, then its metrics at K_seen classes under an address-space cap of
    `cap_bytes` (what cannot allocate is recorded with the peer's error), and its tiled kernels
    (CDNV, log kernel: broadcast differences of tiles of `tile` classes) timed on the first 8
    tiles of classes and scaled to the K_seen × K_seen grid they fill."""
    import json
    import subprocess

    K, d, N, B = shape
    out = subprocess.run([sys.executable, "-c", _PEER_CHILD, str(K), str(d), str(N), str(B),
                          str(ZIPF), str(sample), str(cap_bytes), str(tile)],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    batches = -(-N // B)
    r["pass1"] = r["pass1_batch"] * batches
    r["pass2"] = (r["generate_batch"] + r["var_batch"] + r["covar_batch"]
                  + r["dec_batch"]) * batches
    r["pass2_without_decisions"] = r["pass2"] - r["dec_batch"] * batches
    r["kernels"] = (r["cdnv_sample"] + r["log_sample"]) * r["kernel_scale"]
    return r


def _collector_child(shape, shards, folder, decide):
    """The Collector on the stream of `shape` (K, d, N, batch) in a fresh process: its JSON."""
    import json
    import subprocess

    out = subprocess.run([sys.executable, "-c", _VOCABULARY_CHILD, *map(str, shape), str(ZIPF),
                          str(shards), str(decide), folder],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def largest_times(quick=False, shape=LARGEST):
    """The Collector without the decisions (`decisions=False`) at the largest vocabularies:
    K = 128,256 classes (Llama 3's), d = 4,096, N = 10⁶ Zipf-labelled rows streamed twice, in a
    fresh process: each phase's seconds and the peak resident memory (docs/performance.md)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        r = _collector_child((4000, 128, 20000, 1024) if quick else shape, 1, folder, 0)
    K, d, N, B = (4000, 128, 20000, 1024) if quick else shape
    return dict(K=K, d=d, N=N, batch=B, zipf=ZIPF,
                **{k: r[k] for k in ("pass1", "pass2", "result", "peak_bytes", "present",
                                     "empty")})


def largest_report(v):
    total = v["pass1"] + v["pass2"] + v["result"]
    return [f"\nlargest vocabulary, without the decisions: K = {v['K']:,} (Zipf {v['zipf']}: "
            f"{v['present']:,} seen), d = {v['d']:,}, N = {v['N']:,} rows in batches of "
            f"{v['batch']:,}, Collector(decisions=False) in a fresh process:",
            f"  pass 1 {v['pass1']:.1f} s, pass 2 {v['pass2']:.1f} s, result "
            f"{v['result']:.1f} s — {total / 60:.1f} min; peak memory "
            f"{v['peak_bytes'] / 2 ** 30:.2f} GiB"]


def vocabulary_times(quick=False, shape=VOCABULARY, merge_rows=100_000):
    """The Collector on a stream at vocabulary scale (docs/performance.md, "Vocabulary scale"):
    K classes with Zipf-distributed labels, features = class mean + noise in float32, batches
    generated on the fly and replayed for the second pass; each phase's seconds and the peak
    resident memory of a fresh process. Then 4 shards (save, merge, second passes, merge) on the
    first `merge_rows` rows against one collector on the same rows: the largest relative
    difference of every reported value."""
    import tempfile

    K, d, N, B = (2000, 64, 20000, 1024) if quick else shape
    rows = min(N, 8192 if quick else merge_rows)

    def child(n, shards, folder, decide=1):
        return _collector_child((K, d, n, B), shards, folder, decide)

    with tempfile.TemporaryDirectory() as folder:
        full = child(N, 1, folder)
        lean = child(N, 1, folder, decide=0)  # Collector(decisions=False)
        one, four = child(rows, 1, folder), child(rows, 4, folder)
    worst = 0.0
    for key, v in one["values"].items():
        w = four["values"].get(key)
        if w is not None and math.isfinite(v) and math.isfinite(w):
            worst = max(worst, abs(w - v) / max(abs(v), 1e-300))
    from ufm.bench.measure import _peer_installed

    peer = (peer_vocabulary_times((K, d, N, B), tile=64 if quick else 256)
            if _peer_installed() else None)
    return dict(K=K, d=d, N=N, batch=B, zipf=ZIPF, merge_rows=rows, merge_worst=worst, peer=peer,
                **{k: full[k] for k in ("pass1", "pass2", "result", "peak_bytes", "present",
                                        "empty", "nc1")},
                without_decisions={k: lean[k] for k in ("pass1", "pass2", "result",
                                                        "peak_bytes")})


def vocabulary_report(v):
    total = v["pass1"] + v["pass2"] + v["result"]
    return [f"\nvocabulary scale: K = {v['K']:,} classes (Zipf {v['zipf']} labels: "
            f"{v['present']:,} seen, {v['empty']:,} empty), d = {v['d']:,}, N = {v['N']:,} rows "
            f"in batches of "
            f"{v['batch']:,}, the Collector in a fresh process:",
            f"  pass 1 {v['pass1']:.1f} s, pass 2 (Σ_W, spreads, nearest-centre decisions) "
            f"{v['pass2']:.1f} s, result (every measure, class pairs included) {v['result']:.1f} s"
            f" — {total / 60:.1f} min; peak memory {v['peak_bytes'] / 2 ** 30:.2f} GiB",
            "  without the decisions (Collector(decisions=False)): {:.1f} + {:.1f} + {:.1f} s — "
            "{:.1f} min; peak memory {:.2f} GiB".format(
                *(v["without_decisions"][k] for k in ("pass1", "pass2", "result")),
                sum(v["without_decisions"][k] for k in ("pass1", "pass2", "result")) / 60,
                v["without_decisions"]["peak_bytes"] / 2 ** 30),
            f"  4 shards saved, merged, second passes merged, on {v['merge_rows']:,} rows: every "
            f"value within {v['merge_worst']:.1e} (relative) of one collector's"] + _peer_report(v)


def _peer_report(v):
    """The peer's lines of the vocabulary section: its passes estimated from the batches timed,
    its metrics (seconds, or the error that stopped them), and the Collector against it."""
    p = v.get("peer")
    if p is None:
        return ["  rhubarbwu/neural-collapse not installed (with torch): no side-by-side run"]
    ours, batches = v["pass1"] + v["pass2"] + v["result"], -(-v["N"] // v["batch"])
    lean = sum(v["without_decisions"][k] for k in ("pass1", "pass2", "result"))
    done = {k: t for k, t in p["metrics"].items() if isinstance(t, float)}
    lines = [f"  rhubarbwu/neural-collapse's accumulators on the same stream (seconds a batch over "
             f"a few batches, times {batches} batches): pass 1 "
             f"{p['pass1']:.0f} s, pass 2 {p['pass2']:.0f} s (its decisions, nearest centre and "
             f"a classifier, {p['dec_batch'] * batches:.0f} s of it); peak "
             f"memory {p['accumulate_peak'] / 2 ** 30:.2f} GiB while accumulating"]
    for name, t in p["metrics"].items():
        lines.append(f"    {name}: " + (f"{t:.1f} s" if isinstance(t, float) else f"failed: {t}"))
    lines.append(f"    CDNV and log-kernel tiles over the {p['present']:,}² grid: about "
                 f"{p['kernels'] / 60:.0f} min (scaled from 64 tile pairs)")
    theirs = p["pass1"] + p["pass2"] + sum(done.values()) + p["kernels"]
    lines.append(f"  the Collector against it: {ours / theirs:.2f}× the time with the decisions, "
                 f"{lean / (theirs - p['dec_batch'] * batches):.2f}× without "
                 f"(each against the peer's same work); {v['peak_bytes'] / p['peak']:.2f}× the "
                 f"peak memory" + ("" if len(done) == len(p["metrics"]) else
                                   " (the peer's metrics that failed are not in its time)"))
    return lines
