"""Tests run in float64 (set once here, by the caller, never by the library).

They also compile with XLA's backend optimisation level 0: the suite is dominated by compiling
many small programs, and unoptimised code generation makes it about 40% faster end to end (the
programs are short, so slower machine code costs less than it saves). The flag reaches the
subprocesses the tests start (CLI, experiment scripts) through the environment, so runs compared
across processes are compiled alike. It changes code generation, not the mathematics: every
theorem test still compares float64 results with the closed forms at its stated tolerance.
"""
import os

OPT_FLAG = "--xla_backend_optimization_level"
if OPT_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {OPT_FLAG}=0".strip()

import jax  # noqa: E402  (after XLA_FLAGS)

jax.config.update("jax_enable_x64", True)
