import json
import subprocess
import sys

import numpy as np
import pytest


@pytest.mark.long
def test_bench_json_reports_every_measurement():
    proc = subprocess.run([sys.executable, "-m", "ufm.cli", "bench", "--json", "--quick",
                           "--sizes", "paper", "--batches", "1,8", "--only", "throughput"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    (row,) = res["sizes"]
    assert (row["K"], row["d"], row["n"]) == (4, 20, 50)
    for k in ("scan_steps_per_s", "jitted_loop_steps_per_s", "numpy_loop_steps_per_s"):
        assert row[k] > 0
    assert row["scan_over_jitted_loop"] == row["scan_steps_per_s"] / row["jitted_loop_steps_per_s"]
    assert [g["B"] for g in row["grid"]] == [1, 8]
    assert all(g["vmap_config_steps_per_s"] > 0 and g["sweep_config_steps_per_s"] > 0 for g in row["grid"])
    assert res["dtype"] == "float32" and "cpu" in res["device"].lower()


def test_bench_rejects_bad_batches(capsys):
    from ufm.cli import main

    try:
        rc = main(["bench", "--batches", "0,x"])
    except SystemExit as e:  # argparse's own errors exit 2
        rc = e.code
    assert rc == 2 and "--batches" in capsys.readouterr().err


def test_time_to_gap_and_its_bounds():
    """L-BFGS reaches a 1e-10 gap to the bias-free closed form in a few dozen iterations; GD
    capped at 200 steps does not, so GD's time is only a lower bound and the ratio says so."""
    from ufm import bench
    from ufm.models import get_model

    model = get_model("bias-free")
    hyper = {k: 1e-2 for k in model.hyper_names}
    lb = bench.time_to_gap(model, bench.SOLVER_SIZES, hyper, "lbfgs", 200, 1.0)
    gd = bench.time_to_gap(model, bench.SOLVER_SIZES, hyper, "gd", 200, 1.0)
    assert lb["reached"] and 0 < lb["steps"] < 200
    assert not gd["reached"] and gd["steps"] == 200 and gd["seconds"] > 0
    assert bench.ratio_bound(gd["reached"], lb["reached"]) == "lower"
    assert bench.ratio_bound(True, False) == "upper"
    assert bench.ratio_bound(False, False) == "unknown"
    row = {"model": "bias-free", "lam": 1e-2}
    for o in bench.SOLVERS:
        r = lb if o == "lbfgs" else gd
        row[o] = dict(r, gd_over=gd["seconds"] / r["seconds"],
                      gd_over_bound=bench.ratio_bound(gd["reached"], r["reached"]))
    cell = {"seconds": 1.0, "steps": 1, "within_gap": 1, "within_gap_away_from_threshold": 1,
            "away_from_threshold": 1, "max_gap_away_from_threshold": 0.0}
    text = "\n".join(bench.solver_report({
        "sizes": dict(bench.SOLVER_SIZES._asdict()), "gap": bench.GAP, "cap": 200, "rows": [row],
        "grid": {"points": 4, "lbfgs": cell, "gd": cell}}))
    assert "≥" in text and "?" in text and ">" in text


def test_bench_measure_section_times_ufm_in_a_fresh_process(monkeypatch):
    """The measure section on a small array: ufm's time, its peak memory beyond the loaded
    features (resident peak reset after loading), and its NC1; without the peer installed the
    report says so instead of a ratio."""
    from ufm import bench

    monkeypatch.setattr(bench.measure, "_peer_installed", lambda: False)
    res = bench.measure_times(shape=(3000, 16, 5), engines=("numpy",), repeat=2)  # jax: elsewhere
    row = res["rows"]["ufm"]
    assert row["seconds"] > 0 and row["peak_bytes"] >= 0 and row["nc1"] > 0
    assert len(row["runs_seconds"]) == 2 and row["seconds"] == np.median(row["runs_seconds"])
    assert row["features_bytes"] == 3000 * 16 * 4 and not res["peer_installed"]
    assert list(res["rows"]) == ["ufm", "ufm Collector (batch 8,192)",
                                 "ufm Collector (batch 65,536)"]
    collector = res["rows"]["ufm Collector (batch 8,192)"]
    assert collector["nc1"] == pytest.approx(row["nc1"], rel=1e-10)  # the same rows, streamed
    assert "not installed" in "\n".join(bench.measure_report(res))


def test_bench_measure_ratios_are_taken_round_by_round(monkeypatch):
    """With a peer: each round's ufm run is set against the faster peer configuration of that
    round (time) and the leaner one (memory); the rows give medians. A stand-in child reports
    fixed numbers per run."""
    from ufm import bench

    child = """
import json, os, sys
key = sys.argv[2] + (sys.argv[3] if sys.argv[3] != "0" else "")
times = {"ufm": [1.0, 3.0, 2.0], "neural_collapse8192": [2.0, 4.0, 8.0],
         "neural_collapse65536": [4.0, 5.0, 5.0], "ufm-collector8192": [1.0, 1.0, 2.0],
         "ufm-collector65536": [1.0, 2.0, 1.0]}[key]
mem = {"ufm": 50, "neural_collapse8192": 100, "neural_collapse65536": 400,
       "ufm-collector8192": 50, "ufm-collector65536": 100}[key]
path = sys.argv[1] + "/runs-" + key  # the round: how many runs came before
k = len(open(path).read()) if os.path.exists(path) else 0
open(path, "a").write("x")
print(json.dumps({"seconds": times[k], "peak_bytes": mem * (k + 1), "features_bytes": 8, "nc1": 1.0,
                  "nc2_etf_H": 1.0}))
"""
    monkeypatch.setattr(bench.measure, "_peer_installed", lambda: True)
    monkeypatch.setattr(bench.measure, "_MEASURE_CHILD", child)
    res = bench.measure_times(shape=(64, 4, 3), engines=("numpy",), repeat=3)
    assert res["time_ratios"] == [0.5, 0.75, 2.0 / 5.0]
    assert res["memory_ratios"] == [0.5, 0.5, 0.5]
    assert res["rows"]["ufm"]["seconds"] == 2.0
    assert res["rows"]["neural_collapse (batch 8,192)"]["seconds"] == 4.0
    # the Collector against the peer fed the same batches, round by round
    assert res["collector_ratios"][8192] == ([0.5, 0.25, 0.25], [0.5, 0.5, 0.5])
    assert res["collector_ratios"][65536] == ([0.25, 0.4, 0.2], [0.25, 0.25, 0.25])
    text = "\n".join(bench.measure_report(res))
    assert "0.50, 0.75, 0.40× the time" in text and "median of 3 rounds" in text
    assert "same batches of 65,536, round by round: 0.25, 0.40, 0.20× the time" in text


def test_bench_frontier_section_reports_certified_paths():
    from ufm import bench

    f = bench.frontier_times(quick=True)
    assert [p["mu_low"] for p in f["paths"]] == [1e-4, 1e-8]
    assert all(p["certified"] == f["points"] and p["seconds"] > 0 for p in f["paths"])
    assert f["svm"]["gap"] <= 1e-10 and f["svm"]["K"] == 10
    n = f["newton"]  # every point certified, by Newton or by the convex solver after it
    assert n["newton"] + n["fallback"] == f["points"] and n["worst_gap"] <= 1e-9
    text = "\n".join(bench.frontier_report(f))
    assert "8-point path" in text and "UFM-SVM (--limit), K = 10" in text
    assert "by Newton (ufm.path)" in text


def test_bench_vocabulary_section_streams_and_merges_shards():
    """Quick sizes: the Collector on a generated Zipf stream in a fresh process, every phase
    timed, and 4 merged shards equal to one collector (the full size is `ufm bench --only
    vocabulary`, docs/performance.md)."""
    from ufm import bench

    v = bench.vocabulary_times(quick=True)
    assert v["K"] == 2000 and v["present"] + v["empty"] == 2000 and v["empty"] > 0
    assert v["pass1"] > 0 and v["pass2"] > 0 and v["result"] > 0 and v["peak_bytes"] > 0
    assert v["merge_worst"] <= 1e-10 and v["without_decisions"]["pass2"] > 0
    text = "\n".join(bench.vocabulary_report(v))
    assert "vocabulary scale: K = 2,000" in text and "4 shards" in text
    assert "without the decisions" in text
    assert ("rhubarbwu/neural-collapse not installed" in text) == (v["peer"] is None)


def test_bench_largest_section_runs_the_lean_collector():
    """Quick sizes of the largest vocabulary's section (the Collector without decisions in a
    fresh process): every phase timed, the classes counted, the report names them."""
    from ufm import bench

    v = bench.largest_times(quick=True)
    assert v["K"] == 4000 and v["present"] + v["empty"] == 4000
    assert v["pass1"] > 0 and v["pass2"] > 0 and v["result"] > 0 and v["peak_bytes"] > 0
    assert "largest vocabulary, without the decisions: K = 4,000" in "\n".join(
        bench.largest_report(v))
