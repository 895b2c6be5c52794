"""Retrain the study's best configurations at full budget over seeds, and hand the runs to the report.

selection picks the configurations and their recipes, runs trains and scores each (configuration,
seed), workflow goes from the study to the report; cli is `python -m hpo.finalize`. The top of
hpo: may import every other package (plan to price, search to open the study, report to write).
"""
