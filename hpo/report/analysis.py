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
from hpo.report.results import FinalRun, Summary, summarize
from hpo.spec import StudySpec


@dataclass(frozen=True)
class Analysis:
    """Everything the report states, computed once from the runs and the study."""

    summaries: list[Summary]
    comparisons: list[Comparison]
    agreement: Agreement
    effects: list[Effect]
    rankings: list[Ranking]

    @property
    def protocols(self) -> list[str]:
        return tables.protocol_columns(self.summaries)

    def family(self, family: str) -> list[Comparison]:
        return [c for c in self.comparisons if c.family == family]


def analyse(spec: StudySpec, study: optuna.Study, runs: Sequence[FinalRun]) -> Analysis:
    summaries = summarize(runs)
    return Analysis(summaries, [c for p in tables.protocol_columns(summaries)
                                for c in compare.comparisons(summaries, p)],
                    compare.rank_agreement(summaries), effects(study, spec.space), importances(study))
