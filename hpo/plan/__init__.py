"""Plan a study before it runs: what each configuration costs on this machine, the bill, a plan within a budget.

probe measures the study's cost corners, cost fits a model to them, estimate prices the
search and each finalize row, budget cuts a plan to fit a number of device-hours; cli is
`python -m hpo.plan`. Imports hpo.spec, hpo.space, hpo.trials, hpo.markdown and segtrain;
never hpo.search, hpo.finalize or hpo.report.
"""
