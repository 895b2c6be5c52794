"""The hyperparameter study: Optuna around segtrain (spec, search space, search, finalize, report)."""

import warnings

from optuna.exceptions import ExperimentalWarning

# hpo relies on purpose on Optuna features still marked experimental (heartbeat
# retries, fail_stale_trials, TPE's group option); silence those warnings where
# hpo's own code triggers them, and nowhere else.
warnings.filterwarnings("ignore", category=ExperimentalWarning, module=r"hpo(\.|$)")
