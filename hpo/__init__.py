"""The hyperparameter study: Optuna around segtrain, one package per phase.

    spec/, space.py   the study file and its search space: plain data, at the bottom
    trials.py         what a finished trial says (outcome, compute, feasibility, ranking)
    storage_urls.py, markdown.py, cli.py   small pieces every phase shares
    plan/             probe, cost model, bill, budget cut         python -m hpo.plan
    search/           objective, storage, workers, search loop    python -m hpo.search
    report/           statistics, comparisons, tables, figures, report.md
    finalize/         selection, final runs, workflow             python -m hpo.finalize

Imports go down only: plan below search; report beside search, below finalize; finalize
at the top. hpo imports segtrain, never the reverse.
"""

import warnings

from optuna.exceptions import ExperimentalWarning

# hpo relies on purpose on Optuna features still marked experimental (heartbeat
# retries, fail_stale_trials, TPE's group option, artifacts). Optuna attributes the
# warning to its own module, so it cannot be silenced for hpo's calls alone; hpo is
# an application, not a library, so importing it silences them all.
warnings.filterwarnings("ignore", category=ExperimentalWarning)
