"""Neural-collapse measurements of features from real networks (`ufm measure`), in float64 numpy.

Input: features X [N, d] (rows are samples, any order), integer labels [N] (any values, any
counts; the K distinct values, sorted, are the classes), and optionally the last layer's W [K, d]
and b [K]. Several layers of one network are measured side by side (`measure_layers`).

Everything is computed from accumulators filled in two passes over chunks of rows, in float64:
pass 1 gathers class counts and sums; pass 2 (given the class means) gathers Σ_W, each class's
mean squared distance to its mean, and the classifier and nearest-centre decisions. A memory-mapped
`.npy` (or an uncompressed `.npz` member) therefore streams in bounded memory and gives the same
numbers as an array held in memory, up to the order of float64 additions.

Definitions and conventions are in docs/theory.md §4. The conventions are arguments, recorded in
the output: `global_mean` ('classes': the mean of class means; 'samples': ΣX/N), `std`
('population' or 'unbiased') for the equinorm/equiangularity ratios, and `pinv_rtol` (eigenvalues
of Σ_B below pinv_rtol × the largest are dropped in NC1's pseudo-inverse; default d·eps(float64):
torch's and scipy's pinv rule, with float64's epsilon rather than the input's; numpy's default is
a fixed 1e-15 — docs/theory.md §4).
Undefined values (a ratio of vanishing quantities) are NaN and named under `undefined`.

The package, by idea (no module imports one that imports it back):
  inputs      arrays, labels and files in; the report out (JSON, text, CSV)
  passes      the two passes over chunks of rows, their planning, the worker threads
  screens     the float32 decision screens (classifier, nearest centre) and their float64 rule
  pairs       the class-pair measures from tiles of Gram rows
  suite       the suite from the passes' statistics, per layer, against a reference, from files
  jax_engine  the same two passes with JAX on its default device (`--engine jax`)
  collector   the same statistics fed batch by batch (a training loop), mergeable shards
  ood         out-of-distribution scores from collapse (NC5, NECO, NCI) with AUROC and FPR@95
  diagnostics effective ranks (features, class means, every class) and linear CKA, exact at N ≤ d
"""
from ufm.measure.collector import Collector
from ufm.measure.inputs import (GLOBAL_MEANS, RESERVED, STDS, csv_rows, encode_labels,
                                format_report, load_file, write, write_csv)
from ufm.measure.pairs import pair_measures, tile_rows  # noqa: F401
from ufm.measure.passes import (ENGINES, Shards, _class_sums, _no_decisions,  # noqa: F401
                                against, rows_per_chunk, span_basis, statistics)
from ufm.measure.screens import Decisions  # noqa: F401
from ufm.measure.suite import (accumulate, measure_arrays, measure_file,  # noqa: F401
                               measure_layers, measure_pooled, reference_statistics, suite)

__all__ = ["Collector", "measure_layers", "measure_arrays", "measure_file", "measure_pooled", "load_file",
           "accumulate", "against", "suite", "statistics", "span_basis", "pair_measures",
           "tile_rows", "reference_statistics", "encode_labels", "write", "write_csv",
           "csv_rows", "format_report", "rows_per_chunk", "Shards", "Decisions", "GLOBAL_MEANS",
           "STDS", "ENGINES", "RESERVED"]
