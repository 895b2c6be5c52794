"""Turn plain results into report.md, results.csv/json and figures.html: statistics, comparisons, tables, figures.

stats and compare test, results and analysis summarise, factors, pareto and published add
context, tables, figures and document say it, outputs writes the files and attaches them to
the study (artifacts). Imports hpo.spec, hpo.space, hpo.trials, hpo.markdown, hpo.storage_urls
and segtrain, and reads the search's study through Optuna; never hpo.search, hpo.finalize or
hpo.plan: finalize hands it data.
"""
