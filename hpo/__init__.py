"""The hyperparameter study: Optuna around segtrain (spec, search space, search, finalize, report)."""
