"""Everything the report states, computed once from finalize's runs and the search's study.

Summaries per configuration (hpo.report.results), the paired comparisons and the rank
agreement (hpo.report.compare), what each searched factor did and its importance
(hpo.report.factors). The document, the tables and the figures read this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import optuna

from hpo.report import compare, tables
from hpo.report.compare import Agreement, Comparison
from hpo.report.factors import Effect, Ranking, effects, importances
from hpo.report.results import OWN_PROTOCOL, FinalRun, Summary, protocols_of, summarize
from hpo.spec import FinalizeOptions, StudySpec


@dataclass(frozen=True)
class Analysis:
    """Everything the report states, computed once from the runs and the study."""

    summaries: list[Summary]
    comparisons: list[Comparison]  # every protocol's; verdicts under `primary` only
    agreement: Agreement
    effects: list[Effect]
    rankings: list[Ranking]
    primary: str = OWN_PROTOCOL  # the protocol the verdicts are drawn under: the first of [finalize] eval

    @property
    def protocols(self) -> list[str]:
        return tables.protocol_columns(self.summaries)

    def family(self, family: str) -> list[Comparison]:
        return [c for c in self.comparisons if c.family == family]


def analyse(spec: StudySpec, study: optuna.Study, runs: Sequence[FinalRun], options: FinalizeOptions) -> Analysis:
    primary = options.eval[0]
    summaries = summarize(runs, list(dict.fromkeys([*protocols_of(runs), *options.eval])))  # each planned column
    return Analysis(summaries, [c for p in tables.protocol_columns(summaries)
                                for c in compare.comparisons(summaries, p, primary=p == primary)],
                    compare.rank_agreement(summaries), effects(study, spec.space), importances(study), primary)
