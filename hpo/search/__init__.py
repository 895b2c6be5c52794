"""Run the search: an Optuna study whose trials are short DeepLabV3 trainings, resumable, with workers.

objective runs one trial, storage opens Optuna storages and locks the study, workers runs
several processes, tracking sends trials and final runs to TensorBoard or MLflow, loop runs
trials to the target; cli is `python -m hpo.search`. Imports
hpo.plan (to price and admit trials), hpo.spec, hpo.space, hpo.trials and segtrain; never
hpo.finalize or hpo.report.
"""
