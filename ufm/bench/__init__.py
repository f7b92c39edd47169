"""Speed, measured side by side in one process, in three sections.

throughput: gradient descent on the bias-free UFM. For each problem size: one configuration as a
compiled scan, a per-step jitted Python loop, a numpy loop with hand-written gradients (and a
PyTorch SGD loop when torch happens to be installed; it is not a dependency), then config-steps
per second for grids of B configurations: a plain vmap, and the formulation `ufm sweep` uses
(cache-sized vmapped groups under lax.map, sharded over devices).
deep: the same for the deep linear UFM at L = 4, K = 10, d = 32: one run, a grid of 256 seeds,
and a PyTorch loop when torch is installed.
solvers (float64): time to a 1e-10 relative gap to the closed form for GD, momentum, Adam and
L-BFGS, as ratios against GD, and a 32×32 λ grid solved by L-BFGS and by GD.
global (float64): time to a certified global optimum (convex solver, L-BFGS, GD, cvxpy).
latency: wall time of whole CLI commands in fresh processes, run three times against an empty
compilation cache (first: compiles and fills it; then: loads from it), beside
`python -c "import jax"` — the time to first result a researcher sees.
hessian: the second-order certificate (float64 whatever the dtype): a Hessian-vector product
against a gradient at K = n = d = 100 (10⁶ parameters), the dense restricted spectrum of a model
with 5,000 parameters, and the 20 extreme restricted eigenvalues (Lanczos) at 10⁶ parameters, each
at the bias-free closed-form optimum, wall time including compilation.
measure: `ufm measure`'s suite on 200,000 × 512 float32 features, K = 100, beside
rhubarbwu/neural-collapse's float32 accumulators and metrics on the same array (when that
library and torch happen to be installed; neither is a dependency): wall time and peak memory
beyond the loaded features, each in a fresh process.
vocabulary: the streaming Collector at K = 50,257, d = 1,024, N = 10⁶ (Zipf labels), shards
merged against one collector, and rhubarbwu/neural-collapse's accumulators on the same stream
(when installed).
largest: the Collector without the decisions at K = 128,256, d = 4,096, N = 10⁶ (about half an
hour and most of 24 GB: not in the default sections).

One module per section (ufm/bench/); this one runs the chosen sections and prints the report.
"""
import jax
import jax.numpy as jnp

from ufm.bench.rates import (BATCHES, LAM, LR, SIZES, deep_rates, grid_rates, jitted_loop_rate,
                             numpy_loop_rate, scan_rate, torch_loop_rate)
from ufm.bench.solvers import (GAP, SOLVERS, SOLVER_SIZES, global_report, global_times, ratio_bound,
                               solver_report, solver_times, time_to_gap)
from ufm.bench.latency import (latency_report, latency_times)
from ufm.bench.measure import (measure_report, measure_times)
from ufm.bench.hessian import (hessian_report, hessian_times)
from ufm.bench.frontier import (frontier_report, frontier_times)
from ufm.bench.vocabulary import (largest_report, largest_times, vocabulary_report,
                                  vocabulary_times)

# the sections reported after the throughput lines, in order: a section's name, its report
REPORTS = (("latency", latency_report), ("measure", measure_report), ("hessian", hessian_report),
           ("frontier", frontier_report), ("vocabulary", vocabulary_report),
           ("largest", largest_report))

SECTIONS = ("throughput", "deep", "solvers", "global", "latency", "measure", "hessian",
            "frontier", "vocabulary", "largest")


def run(quick=False, batches=BATCHES, sizes=SIZES, sections=SECTIONS):
    """All measurements of the chosen sections as a JSON-ready dict."""
    out = {"device": f"{jax.local_device_count()} × {jax.devices()[0].device_kind}",
           "backend": jax.default_backend(), "jax": jax.__version__,
           "dtype": str(jnp.result_type(float)), "sizes": []}
    if "deep" in sections:
        out["deep"] = deep_rates(quick)
    if "solvers" in sections:
        out["solvers"] = solver_times(quick) if out["dtype"] == "float64" else None
    if "global" in sections:
        out["global"] = global_times(quick) if out["dtype"] == "float64" else None
    if "latency" in sections:
        out["latency"] = latency_times(repeat=3)
    if "measure" in sections:
        out["measure"] = measure_times(quick)
    if "hessian" in sections:
        out["hessian"] = hessian_times(quick)
    if "frontier" in sections:
        out["frontier"] = frontier_times(quick) if out["dtype"] == "float64" else None
    if "vocabulary" in sections:
        out["vocabulary"] = vocabulary_times(quick)
    if "largest" in sections:
        out["largest"] = largest_times(quick)
    if "throughput" not in sections:
        return out
    for sz in sizes:
        flops = 6 * sz.K * sz.d * sz.N  # three K×d×N products per step
        budget = (2e10 if not quick else 2e8) / flops  # config-steps per measurement
        steps = int(min(20000, max(200, budget)))
        loop_steps = int(min(3000, max(100, budget / 20)))
        row = {"K": sz.K, "d": sz.d, "n": sz.n, "scan_steps_per_s": scan_rate(sz, steps),
               "jitted_loop_steps_per_s": jitted_loop_rate(sz, loop_steps),
               "numpy_loop_steps_per_s": numpy_loop_rate(sz, loop_steps),
               "torch_loop_steps_per_s": torch_loop_rate(sz, loop_steps)}
        for k in ("jitted_loop", "numpy_loop", "torch_loop"):
            other = row[f"{k}_steps_per_s"]
            row[f"scan_over_{k}"] = None if other is None else row["scan_steps_per_s"] / other
        row["grid"] = []
        for B in batches:  # enough steps that set-up and the final records are negligible
            g_steps = int(min(steps, max(100 if flops < 1e6 else 10, 20 * budget / B)))
            plain, fast = grid_rates(sz, B, g_steps)
            row["grid"].append({"B": B, "steps": g_steps, "vmap_config_steps_per_s": plain,
                                "sweep_config_steps_per_s": fast})
        out["sizes"].append(row)
    return out


def report(res):
    """The measurements as a plain-text table."""
    fmt = lambda v: "n/a" if v is None else f"{v:,.0f}"
    ratio = lambda v: "n/a" if v is None else f"{v:.1f}×"
    lines = [f"ufm bench — {res['dtype']}, {res['device']} (jax {res['jax']})"]
    deep = res.get("deep")
    if deep:
        lines += [f"\ndeep linear UFM, L={deep['depth']}, K={deep['K']}, d={deep['d']}, "
                  f"n={deep['n']}, GD step {LR}:",
                  f"  one run, compiled lax.scan       {fmt(deep['scan_steps_per_s']):>14} steps/s",
                  f"  PyTorch SGD loop (if installed)  {fmt(deep['torch_loop_steps_per_s']):>14} "
                  f"steps/s   scan is {ratio(deep['scan_over_torch_loop'])}",
                  f"  grid of {deep['grid_seeds']} seeds (ufm sweep) {fmt(deep['grid_config_steps_per_s']):>14} "
                  f"config-steps/s   {ratio(deep['grid_over_torch_loop'])} the PyTorch loop"]
    if "solvers" in res:
        lines += solver_report(res["solvers"])
    if "global" in res:
        lines += global_report(res["global"])
    for section, section_report in REPORTS:
        if res.get(section):
            lines += section_report(res[section])
    if not res["sizes"]:
        return "\n".join(lines)
    lines.append(f"\nbias-free UFM, GD step {LR}:")
    for r in res["sizes"]:
        lines += [f"K={r['K']}, d={r['d']}, n={r['n']}: gradient steps per second, one configuration",
                  f"  compiled lax.scan (ufm)        {fmt(r['scan_steps_per_s']):>14}",
                  f"  per-step jitted Python loop    {fmt(r['jitted_loop_steps_per_s']):>14}   "
                  f"scan is {ratio(r['scan_over_jitted_loop'])}",
                  f"  numpy loop, hand-written grads {fmt(r['numpy_loop_steps_per_s']):>14}   "
                  f"scan is {ratio(r['scan_over_numpy_loop'])}",
                  f"  PyTorch SGD loop (if installed){fmt(r['torch_loop_steps_per_s']):>14}   "
                  f"scan is {ratio(r['scan_over_torch_loop'])}",
                  "  grids: config-steps per second      plain vmap    ufm sweep formulation"]
        for g in r["grid"]:
            lines.append(f"    B = {g['B']:>5}                  {fmt(g['vmap_config_steps_per_s']):>14}"
                         f"   {fmt(g['sweep_config_steps_per_s']):>14}")
    return "\n".join(lines)


__all__ = ["SECTIONS", "run", "report", "BATCHES", "GAP", "LAM", "LR", "SIZES", "SOLVERS",
           "SOLVER_SIZES", "deep_rates", "frontier_report", "frontier_times", "global_report",
           "global_times", "grid_rates", "hessian_report", "hessian_times", "jitted_loop_rate",
           "latency_report", "latency_times", "measure_report", "measure_times", "numpy_loop_rate",
           "ratio_bound", "scan_rate", "solver_report", "solver_times", "time_to_gap",
           "torch_loop_rate", "vocabulary_report", "vocabulary_times", "largest_report",
           "largest_times"]
