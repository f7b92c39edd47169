"""Neural-collapse statistics fed batch by batch, inside a training or evaluation loop
(docs/usage.md, "Inside a training loop"): `Collector(K)`, `update(features, labels)` per batch,
then `second_pass()` and the same batches again, then `result()` — the report `ufm measure`
gives for the concatenated rows.

Pass 1 is exact in one pass and mergeable: per class the count and the sum of x − o (o a fixed
offset per layer: the first batch's mean where it exceeds the rows' spread, as the file passes
do, so large offsets lose nothing to cancellation). What needs the class means — Σ_W in the span
of the centred means, each class's spread, the classifier's and the nearest centre's decisions —
is gathered in pass 2, over the same batches replayed by the caller (memory: K×d per layer for the
sums, r×r for Σ_W with r = min(K, d); no d×d and nothing per sample). Classes with no sample are
reported (`empty_classes`) and left out; a class with one sample has its mean and no spread.
"""
import math

import numpy as np

from ufm.files import write_npz
from ufm.measure.inputs import GLOBAL_MEANS, STDS, _as_numpy, _check_options
from ufm.measure.passes import (BUDGET_BYTES, _chunks, _class_sums, _moved, _no_decisions,
                                _offset, _per_worker, _second_pass, rows_for_sums,
                                rows_per_chunk, span_basis, statistics)
from ufm.measure.screens import Decisions

FORMAT = 1  # the save() file's layout


class Collector:
    """Per-class statistics of one or several layers, fed batches of features [B, d] (or a dict
    {layer: [B, d]}) with labels [B] in 0 … K − 1; numpy, JAX or anything with __array__ or
    DLPack (a PyTorch tensor, CPU or GPU), converted to float64 as it arrives.

    W [K, d] and b [K]: the classifier read with the last layer's features (its decisions and
    NC3/NC4). Conventions as `ufm measure`'s (global_mean, std, pinv_rtol). decisions=False
    skips the nearest-centre and classifier decisions (N·K·d multiply-adds: at a vocabulary's K
    most of the second pass); their measures are then reported undefined."""

    def __init__(self, K, W=None, b=None, *, global_mean="classes", std="population",
                 pinv_rtol=None, decisions=True):
        if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 2:
            raise ValueError(f"K must be an integer >= 2, got {K!r}")
        _check_options(global_mean, std, pinv_rtol, None)
        self.K = int(K)
        self.W = None if W is None else np.asarray(_as_numpy(W, "W"), np.float64)
        self.b = None if b is None else np.asarray(_as_numpy(b, "b"), np.float64)
        if self.W is not None and (self.W.ndim != 2 or self.W.shape[0] != self.K):
            raise ValueError(f"W must have shape [K, d] = [{self.K}, d], got {self.W.shape}")
        if self.b is not None and (self.W is None or self.b.shape != (self.K,)):
            raise ValueError(f"b must have shape [K] = [{self.K}] and come with W, got "
                             f"{self.b.shape}")
        if not isinstance(decisions, bool):
            raise ValueError(f"decisions must be True or False, got {decisions!r}")
        self.conventions = dict(global_mean=global_mean, std=std, pinv_rtol=pinv_rtol,
                                decisions=decisions)
        self.reset()

    def reset(self):
        """Forget every batch (a new measurement with the same K, W and conventions)."""
        self.counts = np.zeros(self.K, np.int64)
        self.layers = {}  # name -> {"offset": [d], "sums": [K, d]}
        self.phase = 1  # 1: gathering sums; 2: replaying for Σ_W and decisions; 3: reported
        self.replay = None

    # --- pass 1 ---------------------------------------------------------------------------

    def update(self, features, labels):
        """Add a batch: features [B, d] or {layer: [B, d]}, labels [B] in 0 … K − 1. In the
        second pass (after `second_pass()`), the batches of the first pass again, in any order."""
        if self.phase == 3:
            raise ValueError("update() after result(): call reset() first (a collector reports "
                             "the rows it was given, once)")
        layers = features if isinstance(features, dict) else {"features": features}
        y = self._labels(labels)
        rows = {name: self._rows(name, X, len(y)) for name, X in layers.items()}
        if self.layers and set(rows) != set(self.layers):
            raise ValueError(f"layers must be the same in every batch: {sorted(self.layers)}, "
                             f"got {sorted(rows)}")
        if self.phase == 1:
            self._first(rows, y)
        else:
            self._second(rows, y)

    def _labels(self, labels):
        y = np.asarray(_as_numpy(labels, "labels"))
        if y.ndim != 1:
            raise ValueError(f"labels must be one-dimensional [B], got shape {y.shape}")
        if y.size and not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels must be integers in 0 … {self.K - 1}, got dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= self.K):
            bad = int(y[(y < 0) | (y >= self.K)][0])
            raise ValueError(f"labels must be in 0 … {self.K - 1} (K = {self.K}), got {bad}")
        return y.astype(np.int64)

    def _rows(self, name, X, B):
        X = np.asarray(_as_numpy(X, f"features {name!r}"))
        if X.ndim != 2 or X.shape[0] != B:
            raise ValueError(f"features {name!r} must have shape [B, d] with B = {B} labels, "
                             f"got {X.shape}")
        if name in self.layers and X.shape[1] != self.layers[name]["sums"].shape[1]:
            raise ValueError(f"features {name!r} must keep d = "
                             f"{self.layers[name]['sums'].shape[1]}, got d = {X.shape[1]}")
        if not np.all(np.isfinite(X)):
            row = int(np.flatnonzero(~np.all(np.isfinite(X), axis=1))[0])
            raise ValueError(f"features {name!r} are not finite (row {row} of this batch): "
                             f"nothing of this batch was added")
        return X

    def _first(self, rows, y):
        for name, X in rows.items():
            if name not in self.layers:
                # from the first batch's first chunk of rows, as `ufm measure` takes it
                first = min(len(X), rows_per_chunk(X.shape[1], self.K))
                offset = _offset(X, 0, first, name) if len(X) else np.zeros(X.shape[1])
                self.layers[name] = {"offset": offset, "sums": np.zeros((self.K, X.shape[1]))}
            layer = self.layers[name]
            piece = rows_for_sums(X.shape[1], X.dtype.itemsize)[1]  # converted a piece at a time
            layer["sums"] += _class_sums(X, y, self.K, _moved(layer["offset"]), piece)
        self.counts += np.bincount(y, minlength=self.K)

    # --- pass 2 ---------------------------------------------------------------------------

    def second_pass(self):
        """Freeze the class means and start the pass that gathers Σ_W, the classes' spreads and
        the decisions: replay the same batches through `update`, then call `result()`."""
        if self.phase != 1 or not self.layers:
            raise ValueError("second_pass() follows the first pass's batches (and comes once)")
        present = np.flatnonzero(self.counts > 0)
        if len(present) < 2:
            raise ValueError(f"the batches name {len(present)} class(es) of K = {self.K}: at "
                             f"least 2 are needed")
        self.present = present
        remap = np.full(self.K, -1, np.int64)
        remap[present] = np.arange(len(present))
        last = list(self.layers)[-1]
        self.replay = {"remap": remap, "counts": np.zeros(len(present), np.int64), "layers": {}}
        for name, layer in self.layers.items():
            means = layer["sums"][present] / self.counts[present][:, None]
            basis = span_basis(means)
            uses_W = self.W is not None and name == last
            W = self.W[present] if uses_W else None
            b = self.b[present] if uses_W and self.b is not None else None
            if uses_W and W.shape[1] != means.shape[1]:
                raise ValueError(f"W must have shape [K, d] = [{self.K}, {means.shape[1]}] to "
                                 f"read layer {name!r}, got {self.W.shape}")
            decide = (Decisions(means, basis, W, b, layer["offset"])
                      if self.conventions["decisions"] else _skip_decisions)
            self.replay["layers"][name] = dict(
                means=means, basis=basis, decide=decide,
                scatter=0.0, within=np.zeros(len(present)), decisions=_no_decisions(), W=W, b=b)
        self.phase = 2

    def _second(self, rows, y):
        codes = self.replay["remap"][y]
        if np.any(codes < 0):
            raise ValueError("the second pass has a label the first pass never saw: replay the "
                             "same batches")
        K = len(self.present)
        for name, X in rows.items():
            r = self.replay["layers"][name]
            chunks = _chunks(len(X), rows_per_chunk(X.shape[1], K, _per_worker(None)))
            scatter, within, decisions, _ = _second_pass(  # chunks within the budget, one a core
                X, codes, K, chunks, name, self.layers[name]["offset"], r["means"], r["basis"],
                r["decide"], 0)
            r["scatter"] = r["scatter"] + scatter
            r["within"] += within
            for key, value in decisions.items():
                r["decisions"][key] += value
        self.replay["counts"] += np.bincount(codes, minlength=K)

    # --- the report -------------------------------------------------------------------------

    def result(self):
        """The report `ufm measure` gives for the concatenated rows (`measure_layers`' dict),
        after the second pass; `empty_classes` lists the classes no batch named."""
        from ufm.measure.suite import suite

        if self.phase != 2:
            raise ValueError("result() needs the second pass: call second_pass(), replay the "
                             "same batches through update(), then result()")
        present = self.present
        if not np.array_equal(self.replay["counts"], self.counts[present]):
            raise ValueError(f"the second pass saw {int(self.replay['counts'].sum())} rows, the "
                             f"first {int(self.counts.sum())}: replay exactly the same batches")
        out = {}
        for name, layer in self.layers.items():
            r = self.replay["layers"][name]
            decisions = (r["decisions"] if self.conventions["decisions"]
                         else dict(r["decisions"], off=True))
            # the means are the second pass's; of the sums only their total is read (the sample
            # mean), which the empty classes' zero rows leave bit for bit: no K × d copy
            stats = statistics(self.counts[present], layer["offset"], layer["sums"], r["basis"],
                               r["scatter"], r["within"], decisions, means=r["means"])
            out[name] = dict(d=stats["d"], **suite(stats, r["W"], r["b"],
                                                   self.conventions["global_mean"],
                                                   self.conventions["std"],
                                                   self.conventions["pinv_rtol"]))
        self.phase = 3
        rtol = self.conventions["pinv_rtol"]
        return {"conventions": {"global_mean": self.conventions["global_mean"],
                                "std": self.conventions["std"],
                                "pinv_rtol": rtol if rtol is not None else "d*eps(float64)",
                                "decisions": self.conventions["decisions"],
                                "dtype": "float64", "engine": "collector",
                                "budget_bytes": BUDGET_BYTES},
                "N": int(self.counts.sum()), "K": len(present), "classes": present.tolist(),
                "counts": self.counts[present].tolist(),
                "empty_classes": np.flatnonzero(self.counts == 0).tolist(),
                "classifier_layer": list(self.layers)[-1] if self.W is not None else None,
                "has_bias": self.b is not None, "layers": out}

    # --- shards: merge, save, load ---------------------------------------------------------

    def merge(self, other):
        """Add another collector's shard (another process's or machine's). In pass 1 counts and
        sums add, the sums moved to this collector's offsets; in pass 2 (both started from the
        same merged first pass) Σ_W, the spreads and the decisions add. Both must have the same
        K, layers, d, classifier and conventions."""
        if not isinstance(other, Collector):
            raise ValueError(f"merge() takes a Collector, got {type(other).__name__}")
        if self.phase == 2 and other.phase == 2:
            return self._merge_second(other)
        if self.phase != 1 or other.phase != 1:
            raise ValueError("merge() combines first passes (before second_pass()) or second "
                             "passes over one merged first pass, not one of each")
        if other.K != self.K or other.conventions != self.conventions:
            raise ValueError(f"collectors of different K or conventions cannot merge: K "
                             f"{self.K} {self.conventions} against {other.K} {other.conventions}")
        same_W = (self.W is None) == (other.W is None) and (
            self.W is None or (np.array_equal(self.W, other.W)
                               and (self.b is None) == (other.b is None)
                               and (self.b is None or np.array_equal(self.b, other.b))))
        if not same_W:
            raise ValueError("collectors with different classifiers (W, b) cannot merge")
        if self.layers and other.layers and (
                set(self.layers) != set(other.layers) or any(
                    self.layers[n]["sums"].shape != other.layers[n]["sums"].shape
                    for n in self.layers)):
            raise ValueError("collectors of different layers or d cannot merge")
        for name, theirs in other.layers.items():
            if name not in self.layers:
                self.layers[name] = {"offset": theirs["offset"].copy(),
                                     "sums": theirs["sums"].copy()}
                continue
            mine = self.layers[name]
            shift = theirs["offset"] - mine["offset"]  # Σ(x − o) = Σ(x − o') + n·(o' − o)
            mine["sums"] += theirs["sums"] + other.counts[:, None] * shift[None, :]
        self.counts += other.counts
        return self

    def _merge_second(self, other):
        same = (other.K == self.K and np.array_equal(other.counts, self.counts)
                and set(other.layers) == set(self.layers)
                and all(np.array_equal(other.layers[n]["sums"], self.layers[n]["sums"])
                        and np.array_equal(other.layers[n]["offset"], self.layers[n]["offset"])
                        for n in self.layers))
        if not same:
            raise ValueError("second passes merge only over the same first pass: load the "
                             "merged first-pass state on every shard before second_pass()")
        for name, r in self.replay["layers"].items():
            theirs = other.replay["layers"][name]
            r["scatter"] = r["scatter"] + theirs["scatter"]
            r["within"] += theirs["within"]
            for key, value in theirs["decisions"].items():
                r["decisions"][key] += value
        self.replay["counts"] += other.replay["counts"]
        return self

    def save(self, path):
        """The state as an .npz (atomically), in pass 1 or pass 2: shards merge with `load` +
        `merge`, and `ufm measure --merge state_*.npz` reports second-pass shards."""
        if self.phase == 3:
            raise ValueError("save() after result(): nothing left to merge")
        arrays = {"format": np.array(FORMAT), "K": np.array(self.K), "counts": self.counts,
                  "phase": np.array(self.phase),
                  "layers": np.array(list(self.layers)),
                  "global_mean": np.array(self.conventions["global_mean"]),
                  "std": np.array(self.conventions["std"]),
                  "pinv_rtol": np.array(np.nan if self.conventions["pinv_rtol"] is None
                                        else self.conventions["pinv_rtol"]),
                  "decisions": np.array(self.conventions["decisions"])}
        if self.W is not None:
            arrays["W"] = self.W
        if self.b is not None:
            arrays["b"] = self.b
        for i, (name, layer) in enumerate(self.layers.items()):
            arrays[f"offset_{i}"], arrays[f"sums_{i}"] = layer["offset"], layer["sums"]
            if self.phase == 2:
                r = self.replay["layers"][name]
                arrays[f"scatter_{i}"] = np.asarray(r["scatter"], np.float64)
                arrays[f"within_{i}"] = r["within"]
                for key, value in r["decisions"].items():
                    arrays[f"decision_{i}_{key}"] = np.array(value)
        if self.phase == 2:
            arrays["replayed"] = self.replay["counts"]
        write_npz(path, arrays)

    @classmethod
    def load(cls, path):
        """A collector from `save`'s file, in the pass it was saved in."""
        try:
            with np.load(path, allow_pickle=False) as f:
                a = {k: f[k] for k in f.files}
        except (OSError, ValueError) as err:
            raise ValueError(f"collector state {path!r} cannot be read: {err}") from None
        if int(a.get("format", -1)) != FORMAT:
            raise ValueError(f"{path!r} is not a saved Collector (format {FORMAT})")
        rtol = float(a["pinv_rtol"])
        new = cls(int(a["K"]), a.get("W"), a.get("b"), global_mean=str(a["global_mean"]),
                  std=str(a["std"]), pinv_rtol=None if math.isnan(rtol) else rtol,
                  decisions=bool(a.get("decisions", True)))
        new.counts = a["counts"].astype(np.int64)
        names = [str(name) for name in a["layers"].tolist()]
        for i, name in enumerate(names):
            new.layers[name] = {"offset": a[f"offset_{i}"], "sums": a[f"sums_{i}"]}
        if int(a.get("phase", 1)) == 2:  # a shard's second pass: rebuild, then add its sums
            new.second_pass()
            for i, name in enumerate(names):
                r = new.replay["layers"][name]
                scatter = a[f"scatter_{i}"]
                r["scatter"] = scatter if scatter.ndim else float(scatter)
                r["within"] = a[f"within_{i}"]
                for key in r["decisions"]:
                    if f"decision_{i}_{key}" in a:
                        r["decisions"][key] = a[f"decision_{i}_{key}"].item()
            new.replay["counts"] = a["replayed"].astype(np.int64)
        return new


def _skip_decisions(counts, rows, y, spread, projected=None):
    """`decisions=False`: no nearest-centre or classifier decision is taken (their measures
    are reported undefined) — at a vocabulary's K they are most of the second pass."""


__all__ = ["Collector", "GLOBAL_MEANS", "STDS"]
