"""ufm: the unconstrained features model of neural collapse, simulated in JAX.

The public names below are loaded on first use (PEP 562), so `import ufm.measure` or
`import ufm.plot` (and `ufm measure`, `ufm plot`) never import JAX; `ufm.train` and the rest import
it when they are first touched. XLA's CPU settings (ufm/xla_cpu.py) are applied on import, before
any JAX backend can start.
"""
import importlib

from ufm import xla_cpu as _xla_cpu  # first: XLA's CPU runtime settings (see ufm/xla_cpu.py)

__version__ = "0.1.0"

_WHERE = {
    "ufm.geometry": ("etf_distance", "is_etf", "is_orthogonal_frame",
                     "nonnegative_orthogonal_frame", "of_distance", "orthogonal_frame",
                     "simplex_etf"),
    "ufm.metrics": ("class_means", "centred_means", "nc1", "nc2_etf_features", "nc2_etf_weights",
                    "nc2_of_features", "nc2_of_weights", "nc3_etf", "nc3_of"),
    "ufm.models": ("MODELS", "Model", "Session", "Sizes", "get_model", "layered_model",
                   "plain_model", "register"),
    "ufm.optimise": ("OPTIMIZERS", "Optimizer", "Trajectory", "compiled_simulation", "simulate"),
    "ufm.runner": ("Result", "train", "write_result"),
    "ufm.cache": ("enable_compilation_cache",),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'ufm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
