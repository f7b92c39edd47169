"""ufm: the unconstrained features model of neural collapse, simulated in JAX."""
from ufm import xla_cpu as _xla_cpu  # first: XLA's CPU runtime settings (see ufm/xla_cpu.py)
from ufm.geometry import (etf_distance, is_etf, is_orthogonal_frame, nonnegative_orthogonal_frame,
                          of_distance, orthogonal_frame, simplex_etf)
from ufm.metrics import (class_means, centred_means, nc1, nc2_etf_features, nc2_etf_weights,
                         nc2_of_features, nc2_of_weights, nc3_etf, nc3_of)
from ufm.models import (MODELS, Model, Session, Sizes, get_model, layered_model, plain_model,
                        register)
from ufm.optimise import OPTIMIZERS, Optimizer, Trajectory, compiled_simulation, simulate
from ufm.runner import Result, train, write_result

__version__ = "0.1.0"

__all__ = [
    "MODELS", "Model", "OPTIMIZERS", "Optimizer", "Result", "Session", "Sizes", "Trajectory",
    "class_means", "centred_means", "compiled_simulation", "etf_distance", "get_model", "is_etf",
    "is_orthogonal_frame", "layered_model", "nc1", "nc2_etf_features", "nc2_etf_weights",
    "nc2_of_features", "nc2_of_weights", "nc3_etf", "nc3_of", "nonnegative_orthogonal_frame",
    "of_distance", "orthogonal_frame", "plain_model", "register", "simplex_etf", "simulate",
    "train", "write_result",
]
