import json
import subprocess
import sys


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


def test_bench_rejects_bad_batches():
    proc = subprocess.run([sys.executable, "-m", "ufm.cli", "bench", "--batches", "0,x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--batches" in proc.stderr
