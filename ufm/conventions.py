"""Numerical conventions shared by the simulator's JAX metrics (ufm.metrics) and the numpy
measurements of real features (ufm.measure); a module of its own so that `ufm measure` and
`ufm plot` need not import JAX (docs/theory.md §4)."""

RANK_TOL = 1e-4  # numerical rank: singular values above RANK_TOL × the largest one count
