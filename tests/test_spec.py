"""The run specification (ufm.spec, issue 34): built and checked once, in one order, passed whole
to the runner and the sweeps; and the package's import graph has no cycles."""
import ast
import dataclasses
import pathlib

import numpy as np
import pytest

from ufm import runner, spec, sweep
from ufm.models import get_model


def test_build_fills_defaults_and_records_what_the_run_uses():
    s = spec.build("ce-bias", K=3, n="4,5,6", d=6, steps=50, optimizer="lbfgs", lam_b=0.02)
    assert s.model.name == "ce-bias" and s.sizes.counts == (4, 5, 6)
    assert s.hyper["lam_b"] == 0.02 and s.hyper["lam_W"] == get_model("ce-bias").defaults()[
        "lam_W"]
    assert s.stop is not None and s.certificate_tol == 1e-6  # L-BFGS stops; the x64 default
    assert s.prediction is None  # imbalanced counts: no closed form
    with pytest.raises(TypeError):
        s.hyper["lam_b"] = 1.0  # read-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.steps = 10


def test_checks_run_in_the_documented_order():
    # several things wrong at once: the first in the module docstring's order is named
    with pytest.raises(ValueError, match="unknown model|model"):
        spec.build("no-such-model", optimizer="nope", tol=5.0)
    with pytest.raises(ValueError, match="optimizer"):
        spec.build("bias-free", optimizer="nope", tol=5.0, K=1)
    with pytest.raises(ValueError, match="tol"):
        spec.build("bias-free", tol=5.0, K=1)
    with pytest.raises(ValueError, match="K"):
        spec.build("bias-free", K=1, lam_W=-1.0)
    with pytest.raises(ValueError, match="lam_W"):
        spec.build("bias-free", lam_W=-1.0, seed=-1)
    with pytest.raises(ValueError, match="seed"):
        spec.build("bias-free", seed=-1, sessions=2)
    with pytest.raises(ValueError, match="sessions"):
        spec.build("bias-free", sessions=2, hessian="nope")
    with pytest.raises(ValueError, match="hessian"):
        spec.build("bias-free", hessian="nope", init_from=3)
    with pytest.raises(ValueError, match="init_from"):
        spec.build("bias-free", init_from=3)


def test_replace_checks_again_and_with_hyper_checks_a_grid_value():
    s = spec.build("bias-free", K=3, n=2, d=4, steps=20)
    t = s.replace(lam_H=0.2, steps=30)
    assert t.hyper["lam_H"] == 0.2 and t.steps == 30 and s.hyper["lam_H"] != 0.2
    with pytest.raises(ValueError, match="lam_H"):
        s.replace(lam_H=-0.2)
    with pytest.raises(ValueError, match="d"):
        s.replace(d=2)  # below the theorem's d >= K
    assert s.with_hyper({"lam_W": 0.3}).hyper["lam_W"] == 0.3
    with pytest.raises(ValueError, match="lr"):
        s.with_hyper({"lr": 0.0})


def test_a_spec_runs_as_the_keywords_do():
    kw = dict(K=3, n=4, d=5, steps=40, log_every=10, lam_W=0.01)
    s = spec.build("bias-free", **kw)
    a, b = runner.train(s), runner.train("bias-free", **kw)
    np.testing.assert_array_equal(a.history["objective"], b.history["objective"])
    assert a.config == b.config == s.config()
    with pytest.raises(ValueError, match="RunSpec is complete"):
        runner.train(s, steps=3)


def test_a_built_model_keeps_its_options():
    model = get_model("deep-linear", depth=2)
    s = spec.build(model, K=3, n=2, d=4, steps=5)
    assert s.model is model and s.config()["depth"] == 2
    with pytest.raises(ValueError, match="carries its options"):
        spec.build(model, depth=3)


def test_a_sweep_refuses_what_a_single_run_refuses_with_the_same_message():
    for bad in (dict(tol=5.0), dict(lam_H=-1.0), dict(seed=-3), dict(optimizer="nope")):
        with pytest.raises(ValueError) as single:
            spec.build("bias-free", K=3, n=2, d=4, steps=5, **bad)
        lams = {k: v for k, v in bad.items() if k.startswith("lam")}
        kw = {k: v for k, v in bad.items() if not k.startswith("lam")}
        with pytest.raises(ValueError) as grid:
            sweep.run_grid("bias-free", {"K": [3], "d": [4], "n": [2]}, lams,
                           {"lam_W": [0.01, 0.02]}, order=["lam_W"], steps=5, **kw)
        assert str(grid.value) == str(single.value)


def _module_imports(path, name, modules):
    """The ufm modules `path` imports at its top level (what runs at import time)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def test_no_import_cycles_in_the_package():
    root = pathlib.Path(__file__).resolve().parent.parent / "ufm"
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {m: _module_imports(p, m, modules) for m, p in modules.items()}
    assert graph["ufm.runner"] >= {"ufm.spec", "ufm.optimise"}  # the parser sees imports

    def cycle_from(start):
        path, seen = [start], set()

        def visit(m):
            for nxt in sorted(graph[m]):
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    path.append(nxt)
                    found = visit(nxt)
                    if found:
                        return found
                    path.pop()
            return None

        return visit(start)

    cycles = [c for c in map(cycle_from, sorted(graph)) if c]
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_the_hessian_module_takes_a_spec_whole():
    from ufm import hessian

    s = spec.build("bias-free", K=3, n=2, d=4, steps=300, optimizer="lbfgs", hessian="dense")
    r = runner.run(s)
    so = hessian.classify_run(s, r.params)
    assert so.kind == r.second_order["kind"] == "strict local minimum"
    assert so.min_eigenvalue == pytest.approx(r.second_order["min_eigenvalue"], rel=1e-12)


def test_the_convex_solver_at_zero_lambda_points_to_the_limit():
    with pytest.raises(ValueError, match=r"must be > 0 for --optimizer convex.*--limit"):
        spec.build("ce", K=3, n=2, d=4, optimizer="convex", lam_W=0.0)
    with pytest.raises(ValueError) as err:
        spec.build("bias-free", K=3, n=2, d=4, optimizer="convex", lam_W=0.0)
    assert "--limit" not in str(err.value)  # the MSE model has no limit mode


WALK = r"""
import json, sys
from ufm.cli import main

argv, name = json.loads(sys.argv[1]), sys.argv[2]
reached = {}


def carries(value):
    if isinstance(value, str):
        return value == name
    return isinstance(value, (list, tuple)) and name in [v for v in value if isinstance(v, str)]


def profile(frame, event, arg):
    code = frame.f_code
    if event != "call" or "/ufm/" not in code.co_filename.replace("\\", "/"):
        return
    names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
    if any(carries(frame.f_locals.get(k)) for k in names):
        module = code.co_filename.replace("\\", "/").split("/ufm/")[-1]
        reached.setdefault(module, []).append(code.co_name)


sys.setprofile(profile)
main(argv)
sys.setprofile(None)
print(json.dumps({k: sorted(set(v)) for k, v in reached.items()}))
"""


def _modules_the_name_reaches(argv, name, tmp_path):
    """The modules of ufm/ whose functions are called with the model's name as an argument (or
    inside a list/tuple argument) while `ufm …` runs: the walk a reader follows from the
    command line to the objective. In a process of its own: a profiler reading every frame's
    locals has no business in a test worker that goes on compiling."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", WALK,
                          json.dumps(argv + ["--out", str(tmp_path / "run"), "--quiet"]), name],
                         capture_output=True, text=True, check=True).stdout
    return {k: set(v) for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def test_a_model_name_walks_through_at_most_eight_modules(tmp_path):
    """Issue 34: from `ufm train NAME` to the objective a model's name reaches at most eight
    modules (it reached twelve, with nineteen returns, before the run specification); the list is
    the one docs/architecture.md gives."""
    reached = _modules_the_name_reaches(["train", "bias-free", "--K", "3", "--d", "4", "--n", "2",
                                         "--steps", "5"], "bias-free", tmp_path)
    assert len(reached) <= 8, reached
    assert set(reached) == {"cli.py", "spec.py", "models/base.py", "models/plain.py",
                            "runner.py", "cache.py", "certificate.py", "files.py"}, reached
    assert sum(len(f) for f in reached.values()) <= 19, reached
