"""The Collector at a language model's vocabulary: a generated Zipf stream, each pass timed, peak
memory, and merged shards against one collector (docs/performance.md)."""
import math
import sys


VOCABULARY = (50257, 1024, 1_000_000, 8192)  # K, d, N, batch: GPT-2's vocabulary, Zipf labels
ZIPF = 1.07  # the exponent of the labels' distribution (word frequencies)

_VOCABULARY_CHILD = r"""
import json, sys, time
import numpy as np
from ufm.measure import Collector

K, d, N, B, shards, decide = (int(v) for v in sys.argv[1:7])
zipf, folder = float(sys.argv[7]), sys.argv[8]
p = 1.0 / np.arange(1, K + 1) ** zipf
p /= p.sum()
means = np.random.default_rng(0).normal(size=(K, d)).astype(np.float32)

def batch(i):  # the same rows every time they are asked for: a stream replayed, never stored
    r = np.random.default_rng(1000 + i)
    n = min(B, N - i * B)
    y = r.choice(K, size=n, p=p)
    return means[y] + 2.0 * r.normal(size=(n, d)).astype(np.float32), y

def rss(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) * 1024

count = -(-N // B)
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


def vocabulary_times(quick=False, shape=VOCABULARY, merge_rows=100_000):
    """The Collector on a stream at vocabulary scale (docs/performance.md, "Vocabulary scale"):
    K classes with Zipf-distributed labels, features = class mean + noise in float32, batches
    generated on the fly and replayed for the second pass; each phase's seconds and the peak
    resident memory of a fresh process. Then 4 shards (save, merge, second passes, merge) on the
    first `merge_rows` rows against one collector on the same rows: the largest relative
    difference of every reported value."""
    import json
    import subprocess
    import tempfile

    K, d, N, B = (2000, 64, 20000, 1024) if quick else shape
    rows = min(N, 8192 if quick else merge_rows)

    def child(n, shards, folder, decide=1):
        out = subprocess.run([sys.executable, "-c", _VOCABULARY_CHILD, str(K), str(d), str(n),
                              str(B), str(shards), str(decide), str(ZIPF), folder],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory() as folder:
        full = child(N, 1, folder)
        lean = child(N, 1, folder, decide=0)  # Collector(decisions=False)
        one, four = child(rows, 1, folder), child(rows, 4, folder)
    worst = 0.0
    for key, v in one["values"].items():
        w = four["values"].get(key)
        if w is not None and math.isfinite(v) and math.isfinite(w):
            worst = max(worst, abs(w - v) / max(abs(v), 1e-300))
    return dict(K=K, d=d, N=N, batch=B, zipf=ZIPF, merge_rows=rows, merge_worst=worst,
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
            f"value within {v['merge_worst']:.1e} (relative) of one collector's"]
