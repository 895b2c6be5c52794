"""The hyperparameter study: Optuna around segtrain (spec, search space, search, finalize, report)."""

import warnings

from optuna.exceptions import ExperimentalWarning

# hpo relies on purpose on Optuna features still marked experimental (heartbeat
# retries, fail_stale_trials, TPE's group option, artifacts). Optuna attributes the
# warning to its own module, so it cannot be silenced for hpo's calls alone; hpo is
# an application, not a library, so importing it silences them all.
warnings.filterwarnings("ignore", category=ExperimentalWarning)
