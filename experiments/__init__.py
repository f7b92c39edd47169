"""Experiment scripts: one per figure in `figures/`; `python -m experiments` rebuilds them all."""
SCRIPTS = ("bias_free", "unregularized_bias", "linear_extended", "relu_extended", "appendix_g",
           "regularized_bias", "perturbed_features", "thresholds", "phase_diagram",
           "han_decomposition", "mse_vs_ce", "proof_gaps", "relu_assumption",
           "minority_collapse", "incremental_sessions", "orthogonal_classifier",
           "depthwise_network", "deep_linear_thresholds", "deep_ce_low_rank",
           "deep_relu_below_dnc", "imbalanced_ce", "certified_phase_diagram",
           "hessian_spectra", "constructions", "landscape_basins", "bias_transition",
           "regression_collapse", "training_loop", "seli_path", "srg_construction",
           "logit_adjusted_geometry", "ntp_collapse")
