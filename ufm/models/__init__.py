"""The models: one file per family, each registering its models (docs/architecture.md, "A model").

    base.py           Sizes, Session, the Model record, the registry, shared pieces
    plain.py          bias-free, unregularized-bias, regularized-bias (MSE)
    cross_entropy.py  ce, ce-bias
    layered.py        linear-extended, relu-extended, deep-linear, deep-relu, deep-linear-ce
    constrained.py    fixed-etf, fixed-orthogonal, lpm
    scaled_target.py  scaled-target (MSE with targets γY)
    label_smoothing.py  ce-smoothing (cross-entropy against smoothed labels)
    (any other file)  squared_hinge.py, ce_adjusted.py, regression.py, ntp.py, … — registered
                      after the families, in alphabetical order

`get_model(name, **options)` builds one (options: depth, loss, alpha, mask_softmax, where the
model takes them); `MODELS` maps every name to its default variant.
"""
from ufm.models.base import (REGISTRY, Hyper, Model, Option, Session, Sizes, get_model,
                             hyper_specs, models, one_hot_targets, option_specs, register,
                             tied_specs)
import importlib  # noqa: E402
import pkgutil  # noqa: E402

# Every module of this package registers its models when imported: the families in this order
# (the order of `MODELS`, of the CLI's help and of error messages), then any other file placed
# here — adding a model is adding a file.
FAMILIES = ("plain", "layered", "cross_entropy", "constrained", "scaled_target", "label_smoothing")
for _name in FAMILIES + tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)
                                     if m.name not in FAMILIES + ("base",))):
    importlib.import_module(f"{__name__}.{_name}")
from ufm.models.layered import layered_features, layered_model
from ufm.models.plain import plain_model

MODELS = models()

__all__ = ["MODELS", "REGISTRY", "Hyper", "Model", "Option", "Session", "Sizes", "get_model",
           "hyper_specs", "layered_features", "layered_model", "one_hot_targets", "option_specs",
           "plain_model", "register", "tied_specs"]
